"""The seq2seq task: batch layouts, remedies at strength 0, and sequence log-probs vs decoding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import seq2seq as seq2seq_config
from research.data.seq2seq import seq2seq_example
from research.models import Bert, EncoderDecoder, ModelConfig
from research.tasks import seq2seq
from research.tasks.seq2seq import teacher_forcing
from research.train.config import parse

PAD, BOS, EOS, V = 0, 1, 2, 14
SRC, TGT = 6, 7


def _batch(layout, seed=0, b=4):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(b):
        n, m = rng.integers(2, SRC + 1), rng.integers(2, TGT)
        ids = dict(pad=PAD, bos=BOS, eos=EOS)
        src, tgt = rng.integers(4, V, n), rng.integers(4, V, m)
        rows.append(seq2seq_example(src, tgt, layout=layout, src_len=SRC, tgt_len=TGT, **ids))
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def _model(layout):
    cfg = ModelConfig(
        vocab_size=V,
        d_model=32,
        num_heads=2,
        num_layers=2,
        d_ff=64,
        max_length=SRC + TGT + 1,
        positions="rotary",
        num_segments=2 if layout == "unilm" else 0,
    )
    cls = EncoderDecoder if layout == "encdec" else Bert
    return cls(cfg, rngs=nnx.Rngs(0))


def _config(layout, **seq):
    c = seq2seq_config.get_config("smoke")
    c.seq2seq.update(layout=layout, src_len=SRC, tgt_len=TGT, **seq)
    return c


def test_example_layouts():
    e = seq2seq_example(
        [5, 6, 7], [8, 9], layout="encdec", src_len=4, tgt_len=4, pad=PAD, bos=BOS, eos=EOS
    )
    np.testing.assert_array_equal(e["src"], [5, 6, 7, 0])
    np.testing.assert_array_equal(e["inputs"], [BOS, 8, 9, 0])
    np.testing.assert_array_equal(e["targets"], [8, 9, EOS, 0])
    np.testing.assert_array_equal(e["weights"], [1, 1, 1, 0])
    np.testing.assert_array_equal(e["replace_mask"], [0, 1, 1, 0])
    u = seq2seq_example(
        [5, 6, 7], [8, 9], layout="unilm", src_len=4, tgt_len=4, pad=PAD, bos=BOS, eos=EOS
    )
    np.testing.assert_array_equal(u["inputs"], [5, 6, 7, BOS, 8, 9, 0, 0])
    np.testing.assert_array_equal(u["targets"], [6, 7, BOS, 8, 9, EOS, 0, 0])
    np.testing.assert_array_equal(u["weights"], [0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(u["segment_ids"], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(u["replace_mask"], [0, 0, 0, 0, 1, 1, 0, 0])
    assert u["prompt_length"] == 4


ZERO_STRENGTH = [
    dict(remedy="random_replacement", replace_sample_prob=0.0),
    dict(remedy="random_replacement", replace_token_prob=0.0),
    dict(remedy="gradient_penalty", penalty_epsilon=0.0),
    dict(remedy="fgm", fgm_epsilon=0.0),
    dict(remedy="scheduled_sampling", ss_schedule="constant", ss_k=1.0),
    dict(remedy="scst", seq_weight=0.0),
    dict(remedy="mrt", seq_weight=0.0),
]


@functools.cache
def _value_and_grad(layout, kw: tuple):
    batch, model = _batch(layout), _model(layout)
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    fn = seq2seq.make_loss(parse(_config(layout, **dict(kw))).task_config, V, BOS, EOS, PAD, 32)

    def loss(p):
        s, w, _ = fn(nnx.merge(graph, p, rest), batch, key=jax.random.PRNGKey(3), step=jnp.int32(5))
        return s / w

    return jax.jit(jax.value_and_grad(loss))(params)


def test_synthetic_rows_the_model_lengths_would_cut_are_refused():
    """An addition source is 2 n + 1 tokens and its sum up to n + 1 digits: the smoke lengths
    (made for sort) cut them without a word. The lengths named are the builder's longest."""
    from research.config import ConfigError
    from research.data import builders

    rng = np.random.default_rng(0)
    pairs = [builders.seq2seq_example(rng, "addition", 6, 6) for _ in range(200)]
    src, tgt = (max(len(p[i]) for p in pairs) for i in (0, 1))
    c = seq2seq_config.get_config("smoke")
    c.data.seq2seq_task = "addition"
    with pytest.raises(ConfigError, match=rf"^seq2seq.src_len=6 would cut .* is {src} tokens"):
        parse(c)
    c.seq2seq.src_len = src
    with pytest.raises(ConfigError, match=rf"^seq2seq.tgt_len=7 would cut .* is {tgt + 1} tok"):
        parse(c)
    c.seq2seq.tgt_len = tgt + 1
    parse(c)


@pytest.mark.parametrize("layout", ["encdec", "unilm"])
@pytest.mark.parametrize("kw", ZERO_STRENGTH, ids=lambda kw: "-".join(map(str, kw.values())))
def test_every_remedy_at_strength_zero_is_teacher_forcing(layout, kw):
    ref_loss, ref_grad = _value_and_grad(layout, (("remedy", "none"),))
    loss, grad = _value_and_grad(layout, tuple(kw.items()))
    np.testing.assert_array_equal(loss, ref_loss)
    # The same arithmetic in another program, which XLA may fuse and round differently: the
    # gradients agree to 1e-7 or a few float32 ulps (a remedy left on moves them by far more).
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    jax.tree.map(close, grad, ref_grad)


@pytest.mark.parametrize("layout", ["encdec", "unilm"])
def test_gradient_penalty_per_position_and_table(layout):
    """The per-position form differentiates w.r.t. each input occurrence's embedding: summing
    its rows over the occurrences of each token gives the table form's gradient (an independent
    path through the model), and on this batch of repeated tokens the two penalties differ."""
    batch, model = _batch(layout), _model(layout)
    inputs = (batch["src"], batch["inputs"]) if layout == "encdec" else (batch["inputs"],)
    assert len(np.unique(np.concatenate([np.ravel(x) for x in inputs]))) < sum(
        x.size for x in inputs
    )
    ctx = seq2seq.remedies.Context(parse(_config(layout)).task_config, V, BOS, EOS, PAD, 32)

    def mean_ce(delta):
        s, w, _ = teacher_forcing.cross_entropy(model, batch, batch["inputs"], delta, layout)
        return s / w

    shape = ctx.delta_shape("position")(batch)
    zeros = tuple(jnp.zeros(x) for x in shape) if layout == "encdec" else jnp.zeros(shape)
    grad = jax.jit(jax.grad(mean_ce))  # one program per form, not op-by-op dispatch
    g_position = jax.tree.leaves(grad(zeros))
    g_table = np.asarray(grad(jnp.zeros((V, 32))))
    summed = np.zeros((V, 32))
    for tokens, g in zip(inputs, g_position, strict=True):
        np.add.at(summed, np.asarray(tokens), np.asarray(g))
    np.testing.assert_allclose(summed, g_table, rtol=1e-4, atol=1e-7)
    penalty = {}
    for form, g in (("position", g_position), ("table", [g_table])):
        cfg = parse(_config(layout, remedy="gradient_penalty", penalty_form=form)).task_config
        fn = jax.jit(functools.partial(seq2seq.make_loss(cfg, V, BOS, EOS, PAD, 32), model))
        _, w, metrics = fn(batch, key=jax.random.PRNGKey(0), step=jnp.int32(0))
        penalty[form] = float(metrics["mean/penalty"] / w)
        expected = 0.5 * sum(float(np.sum(np.square(x))) for x in g)
        np.testing.assert_allclose(penalty[form], expected, rtol=1e-4)
    # Different beyond the 1e-4 agreement above (by 2.5% for unilm at this initialisation).
    assert abs(penalty["table"] - penalty["position"]) > 1e-2 * penalty["position"]


@pytest.mark.parametrize("layout", ["encdec", "unilm"])
def test_sequence_log_prob_equals_the_incremental_decode(layout):
    """log p(y) from the teacher-forced re-scoring (used by SCST/MRT) equals the sum of the
    per-step log-probs of the same tokens under prefill + decode_step."""
    batch, model = _batch(layout, seed=1), _model(layout)
    tokens = seq2seq.generate(
        model,
        batch,
        layout=layout,
        method="sample",
        max_new=TGT,
        src_len=SRC,
        bos=BOS,
        eos=EOS,
        pad=PAD,
        key=jax.random.PRNGKey(0),
    )
    got = teacher_forcing.sequence_log_prob(model, batch, tokens, layout, BOS, EOS, PAD)

    if layout == "encdec":
        logits, cache = model.prefill(
            batch["src"], src_mask=batch["src_mask"], bos_id=BOS, max_length=TGT + 1
        )
        step = model.decode_step
    else:
        prompt = batch["inputs"][:, : SRC + 1]
        logits, cache = model.prefill(
            prompt, lengths=batch["prompt_length"], max_length=SRC + 1 + TGT
        )
        step = functools.partial(model.decode_step, segment=1)
    expected = np.zeros(tokens.shape[0])
    done = np.zeros(tokens.shape[0], bool)
    for t in range(TGT):
        lp = np.asarray(jax.nn.log_softmax(logits, -1))
        tok = np.asarray(tokens[:, t])
        expected += np.where(done, 0.0, lp[np.arange(len(tok)), tok])
        done |= tok == EOS
        logits, cache = step(tokens[:, t], cache)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(got) < 0)


def test_local_jsonl_pairs_train_with_a_sentencepiece_vocabulary(tmp_path):
    """The same config on text pairs by name (as a user would point it at CSL): tokenizer
    trained on the file, decode metrics on detokenized text."""
    import json
    import pathlib
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta"]
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for _ in range(400):
            src = list(rng.choice(words, rng.integers(3, 8)))
            f.write(json.dumps({"source": " ".join(src), "target": " ".join(src[:2][::-1])}) + "\n")
    root = pathlib.Path(__file__).resolve().parents[2]
    from tests.cpu import cpu_env

    env = cpu_env(1)
    cmd = [
        sys.executable,
        "-m",
        "research.main",
        "--config=configs/seq2seq.py:smoke",
        f"--workdir={tmp_path / 'wd'}",
        f"--config.data.data_dir={tmp_path / 'data'}",
        f"--config.data.source=jsonl:{tmp_path / 'pairs.jsonl'}",
        "--config.data.vocab_size=320",
        "--config.seq2seq.src_len=24",
        "--config.seq2seq.tgt_len=12",
        "--config.eval_every_steps=6",
        "--config.seq2seq.eval_beams=1,2",
    ]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path / "data" / "tokenizers").glob("jsonl_*-320.model"))
    last = json.loads((tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["split"] == "eval" and 0 <= last["beam1_rougeL"] <= 100 and "beam2_bleu" in last


def test_a_sequence_level_remedy_trains_a_model_with_dropout(tmp_path):
    """SCST (and MRT, through the same Context.generate) decode inside the training step; with
    dropout on, a dropout step inside the decoding loop stopped the run (TraceContextError).
    They decode with dropout off now."""
    from research.train import loop

    c = seq2seq_config.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.seq2seq.update(remedy="scst", eval_beams=(1,))
    c.model.dropout = 0.3
    c.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, eval_steps=1)
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert summary.last_step == 2 and np.isfinite(summary.final_train_loss)


@pytest.mark.parametrize("remedy", ["scst", "mrt"])
def test_sequence_level_remedies_at_full_strength_give_their_formulas(remedy, monkeypatch):
    """seq_weight=1, with a reward that tells sample from baseline (the mean token id, so the
    advantage is never 0): SCST's loss is mean(-(r(sample) - r(greedy)) log p(sample)), MRT's
    mean(sum_s Q_s (1 - r_s)), Q = softmax(alpha log p); each decode recorded as the remedy drew
    it. (Swapping SCST's sample and baseline rewards passed every test before.)"""
    from research.tasks.seq2seq import remedies

    scored = []

    def mean_id(hyp, ref, pad_id=0):
        scored.append(hyp)
        real = hyp != pad_id
        return jnp.sum(hyp * real, -1) / jnp.maximum(jnp.sum(real, -1), 1) / V

    def as_scored(out):  # EOS scored as padding, as the references are (it counted a token)
        return jnp.where(out == EOS, PAD, out)

    monkeypatch.setitem(remedies.rewards.REWARDS, "bleu", mean_id)
    drawn = []
    real_generate = remedies.generate

    def spy(*args, method, **kw):
        out = real_generate(*args, method=method, **kw)
        drawn.append((method, out))
        return out

    monkeypatch.setattr(remedies, "generate", spy)
    layout, kw = "encdec", dict(remedy=remedy, seq_weight=1.0, reward="bleu")
    if remedy == "mrt":
        kw.update(mrt_samples=3, mrt_alpha=0.5)
    cfg = parse(_config(layout, **kw)).task_config
    batch, model = _batch(layout), _model(layout)
    fn = seq2seq.make_loss(cfg, V, BOS, EOS, PAD, 32)
    s, w, _ = fn(model, batch, key=jax.random.PRNGKey(3), step=jnp.int32(5))
    ctx = remedies.Context(cfg, V, BOS, EOS, PAD, 32)
    logp = {id(out): ctx.log_prob(model, batch, out) for _, out in drawn}
    samples = [out for method, out in drawn if method == "sample"]
    assert any(np.any(np.asarray(out) == EOS) for _, out in drawn)  # some decode stopped
    assert not any(np.any(np.asarray(h) == EOS) for h in scored)  # no reward saw the EOS
    r = [mean_id(as_scored(x), None, PAD) for x in samples]
    if remedy == "scst":
        (greedy,) = [out for method, out in drawn if method == "greedy"]
        advantage = r[0] - mean_id(as_scored(greedy), None, PAD)
        assert np.all(np.abs(np.asarray(advantage)) > 0)
        want = jnp.mean(-advantage * logp[id(samples[0])])
    else:
        assert len(samples) == 3
        lp = jnp.stack([logp[id(x)] for x in samples], 1)
        q = jax.nn.softmax(0.5 * lp, axis=1)
        want = jnp.mean(jnp.sum(q * (1 - jnp.stack(r, 1)), axis=1))
    assert float(s / w) == pytest.approx(float(want), rel=1e-5, abs=1e-6)


def test_evaluation_is_plain_cross_entropy_whatever_the_label_smoothing():
    """Training smooths the labels; evaluation (key None) is plain teacher-forced CE, so eval
    loss and perplexity compare across label_smoothing values (it smoothed them too)."""
    batch, model = _batch("encdec"), _model("encdec")
    sums = {}
    for eps in (0.0, 0.1):
        cfg = parse(_config("encdec", label_smoothing=eps)).task_config
        fn = seq2seq.make_loss(cfg, V, BOS, EOS, PAD, 32)
        sums[eps, "eval"] = fn(model, batch)[0]
        sums[eps, "train"] = fn(model, batch, key=jax.random.PRNGKey(0), step=jnp.int32(0))[0]
    assert float(sums[0.0, "eval"]) == float(sums[0.1, "eval"])
    assert float(sums[0.1, "train"]) != float(sums[0.0, "train"])


@pytest.mark.parametrize("layout", ["encdec", "unilm"])
def test_generate_lays_a_source_out_as_training_does(layout):
    """research.generate's encdec source was neither cut to src_len nor given the prefix: a
    long prompt ran the encoder on positions it never trained on."""
    from research.data import sources

    class Chars:  # a text tokenizer: one id per character
        def encode(self, text):
            return [4 + ord(c) % (V - 4) for c in text]

    vocab = sources.Seq2seqVocab(V, PAD, BOS, EOS, Chars(), ("source", "target"), prefix=(3,))
    run = parse(_config(layout))
    text = "a source longer than src_len"
    got = seq2seq.Seq2seqTask().text_prompt(run, vocab, text)
    trained = seq2seq_example(
        *vocab.encode_record({"source": text, "target": "t"}),
        layout=layout, src_len=SRC, tgt_len=TGT, pad=PAD, bos=BOS, eos=EOS,
    )  # fmt: skip
    want = trained["src"] if layout == "encdec" else trained["inputs"][: SRC + 1]
    assert list(got.ids) == [int(t) for t in want if t != PAD]


@pytest.mark.parametrize("remedy", ["gradient_penalty", "fgm"])
def test_an_embedding_gradient_remedy_with_microbatches_is_refused(remedy):
    """The penalty and FGM act on one loss call's mean: over two accumulated halves of a batch
    the penalty was twice the full batch's (epsilon 0.5: 0.0040 against 0.0020)."""
    from research.config import ConfigError

    c = _config("encdec", remedy=remedy)
    c.update(batch_size=32, accum_steps=2)  # 16 rows a microbatch over the 8 test devices
    with pytest.raises(ConfigError, match=rf"^seq2seq.remedy='{remedy}' with accum_steps=2: "):
        parse(c)
    c.accum_steps = 1
    parse(c)


SS_09 = dict(remedy="scheduled_sampling", ss_schedule="constant", ss_k=0.9)


@pytest.mark.parametrize(
    "kw, key, low, high",
    [
        (SS_09, "teacher_forcing_prob", 0.9, 0.9),
        (dict(remedy="scst"), "reward", 0.0, 1.0),
        (dict(remedy="scst"), "baseline_reward", 0.0, 1.0),
        (dict(remedy="mrt", mrt_samples=2), "reward", 0.0, 1.0),
        (dict(remedy="fgm", fgm_epsilon=0.5), "adversarial_loss", 0.1, 20.0),
    ],
)  # fmt: skip
def test_remedy_metrics_are_logged_as_token_weighted_means(kw, key, low, high):
    """Each remedy's own metric is a value x batch weight under "mean/NAME", which the row turns
    into the mean: a constant teacher-forcing probability reads 0.9, not 0.9 x the tokens."""
    from research.train import metrics

    batch, model = _batch("encdec"), _model("encdec")
    fn = seq2seq.make_loss(parse(_config("encdec", **kw)).task_config, V, BOS, EOS, PAD, 32)
    s, w, sums = fn(model, batch, key=jax.random.PRNGKey(3), step=jnp.int32(5))
    assert f"mean/{key}" in sums and key not in sums
    row = metrics.summarize({"loss_sum": s, "weight_sum": w, **sums})
    assert low - 1e-6 <= row[key] <= high + 1e-6, row
