import json
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import chat as chat_config
from research import tasks
from research.data import dialogue
from research.models import DecoderLM, ModelConfig
from research.sampling import ChatSession, generate
from research.tasks.chat import distinct_n, unknown_turn_warning, vocabulary_origin
from research.train import load_trained, loop
from research.train.config import parse


class _Ids:  # token ids only; the session needs [CLS]/[SEP]
    cls_id, sep_id, pad_id = 2, 3, 0


def _tiny_lm(**overrides) -> DecoderLM:
    """A 1-layer, 16-wide chat DecoderLM with two segments (fields overridable)."""
    fields = dict(
        vocab_size=50,
        d_model=16,
        num_heads=2,
        num_layers=1,
        d_ff=32,
        max_length=64,
        positions="rotary",
        num_segments=2,
    )
    return DecoderLM(ModelConfig(**{**fields, **overrides}), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "attention",
    [
        {"attention": "softmax"},
        {"attention": "linear", "feature_map": "elu"},
        {"attention": "gla", "short_conv": 3},  # kept: the state and the key conv's window
        {"attention": "gated_deltanet", "positions": "none"},  # the state and q/k/v windows
    ],
)
def test_cache_kept_between_turns_equals_reencoding_the_history(attention):
    model = _tiny_lm(d_model=32, num_layers=2, d_ff=64, max_length=128, **attention)
    session = ChatSession(model, _Ids(), max_context=128, max_tokens=6, seed=1)
    rng = np.random.default_rng(0)
    for turn in range(4):
        logits = session.user_turn(rng.integers(5, 50, 3 + turn).tolist())
        tokens, segments = session.context()
        full = model(jnp.asarray(tokens[None]), segment_ids=jnp.asarray(segments[None]))
        np.testing.assert_allclose(logits[0], full[0, -1], atol=2e-5)
        assert segments[-1] == 0  # the user (turns 0, 2, ...) is speaker 0
        reply = session.bot_turn()
        assert len(reply) <= 6 and _Ids.sep_id not in reply
    assert session.prefills == 1  # one prefill; every later turn went into the cache


def test_a_reply_never_draws_a_special_token():
    """[PAD]/[UNK]/[CLS]/[MASK] were sampled like any token (and dropped unseen from the text).
    A model whose output bias favours them by far still replies with ordinary tokens."""

    class Vocab(_Ids):
        unk_id, mask_id = 1, 4

    model = _tiny_lm()
    session = ChatSession(model, Vocab(), max_context=64, max_tokens=8, top_k=0, seed=0)
    favoured = jnp.zeros(50).at[jnp.asarray([0, 1, 2, 4])].set(50.0)  # specials, [SEP] not
    session._choose = jax.jit(  # the session's own ban applies before any filter: wrap it
        lambda logits, key, f=session._choose: f(logits + favoured, key)
    )
    session.user_turn([7, 8, 9])
    reply = session.bot_turn()
    assert reply and not set(reply) & {0, 1, 2, 4}, reply


def test_history_beyond_max_context_is_cut_from_the_left():
    model = _tiny_lm()
    session = ChatSession(model, _Ids(), max_context=40, max_tokens=5)
    every = []  # the whole conversation, turn by turn
    for i in range(6):
        every.append([10 + i] * 6)
        session.user_turn(every[-1])
        assert session.length <= 40
        every.append(session.bot_turn(forced=[20 + i] * 5))
        assert session.length <= 40
    tokens, segments = session.context()
    assert session.dropped > 0 and session.prefills > 1
    # the cache holds [CLS] + exactly the newest whole turns, with the whole conversation's
    # segments (turn k has segment k % 2)
    whole, whole_seg = dialogue.layout(every, cls_id=2, sep_id=3)
    n = len(tokens) - 1
    assert tokens[1:].tolist() == whole[-n:].tolist()
    assert segments[1:].tolist() == whole_seg[-n:].tolist()
    assert whole[-n - 1] == 3  # the cut falls just after a [SEP]: no turn is split
    full = model(jnp.asarray(tokens[None]), segment_ids=jnp.asarray(segments[None]))
    np.testing.assert_allclose(session.logits[0], full[0, -1], atol=2e-5)


def test_a_newest_turn_longer_than_the_context_keeps_its_end():
    session = ChatSession(_tiny_lm(), _Ids(), max_context=24, max_tokens=4)
    session.user_turn(list(range(10, 40)))  # 30 tokens; the layout gets 24 - 4 - 1 = 19
    tokens, _ = session.context()
    assert tokens.tolist() == [2, *range(23, 40), 3] and session.length == 19


def test_learned_positions_bound_max_context():
    model = _tiny_lm(max_length=32, positions="learned")
    with pytest.raises(ValueError, match="max_context=64 exceeds the model's 32 learned"):
        ChatSession(model, _Ids(), max_context=64)


def test_distinct_n():
    assert distinct_n([[1, 2, 1, 2], [1, 2]], 1) == 2 / 6
    assert distinct_n([[1, 2, 1, 2], [1, 2]], 2) == 2 / 4
    assert distinct_n([[1]], 2) == 0.0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("chat")
    c = chat_config.get_config("smoke")
    c.data.data_dir = str(wd / "data")
    summary = loop.train_and_evaluate(parse(c), str(wd / "run"))
    return wd / "run", summary


def test_smoke_training_reports_perplexity_and_reply_metrics(smoke_run):
    workdir, summary = smoke_run
    # The smoke preset is the README's chat model, small: English chitchat, its first 200 train
    # conversations (named in the vocabulary's file, so a full run does not reuse it).
    data_dir = workdir.parent / "data"
    assert (data_dir / "tokenizers" / "chat-chitchat-n200-wp600.json").is_file()
    ev = summary.eval
    assert ev["perplexity"] == pytest.approx(np.exp(ev["loss"]), rel=1e-5)
    assert 0 <= ev["distinct_1"] <= 1 and 0 <= ev["distinct_2"] <= 1
    assert 0 <= ev["reply_length"] <= 8
    trained = load_trained(workdir)
    assert isinstance(trained.model, DecoderLM) and trained.model.cfg.num_segments == 2
    assert trained.model.cfg.tie_embeddings
    assert trained.config.data.source == "chitchat"


def test_evaluation_reads_no_file_the_held_out_conversations_come_with_the_data(
    smoke_run, monkeypatch
):
    trained = load_trained(smoke_run[0])
    run = trained.config
    task = tasks.get(run.task)
    data = task.build_data(run)  # the smoke run's data_dir: its vocabulary is reused
    assert (
        data.eval_examples
        == dialogue.conversations(run.data.source, run.data.data_dir)["validation"]
    )

    def no_reading(*args):
        raise AssertionError("evaluate read the conversations from disk")

    monkeypatch.setattr(dialogue, "conversations", no_reading)
    state = types.SimpleNamespace(params=None, consts=None)
    out = task.evaluate(run, data, lambda params, consts: trained.model, state, [])
    assert set(out) == {"distinct_1", "distinct_2", "reply_length"}
    # The metrics are those of the replies drawn: the same contexts and key through
    # research.sampling.generate, each reply cut at its first [SEP], n-grams counted here.
    s, vocab = run.task_config, data.vocab
    prompts, lengths, segments, reply_seg = dialogue.eval_contexts(
        vocab,
        data.eval_examples,
        n=s.eval_contexts,
        seq_len=run.data.seq_len,
        reply_tokens=s.max_reply_tokens,
    )
    banned = [vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.mask_id]
    tokens = generate(
        trained.model,
        jnp.asarray(prompts),
        lengths=jnp.asarray(lengths),
        max_new_tokens=s.max_reply_tokens,
        method="sample",
        key=jax.random.key(run.train.seed),
        segment=jnp.asarray(reply_seg),
        segment_ids=jnp.asarray(segments),
        top_k=s.top_k,
        stop_tokens=(vocab.sep_id,),
        pad_id=vocab.pad_id,
        logit_bias=jnp.zeros(trained.model.cfg.vocab_size).at[jnp.asarray(banned)].set(-jnp.inf),
    )
    replies = []
    for row in np.asarray(tokens).tolist():
        replies.append(row[: row.index(vocab.sep_id)] if vocab.sep_id in row else row)
    assert len(replies) == len(prompts) and any(replies)
    for n in (1, 2):
        grams = [tuple(r[i : i + n]) for r in replies for i in range(len(r) - n + 1)]
        assert out[f"distinct_{n}"] == pytest.approx(len(set(grams)) / len(grams))
    assert out["reply_length"] == pytest.approx(np.mean([len(r) for r in replies]))


def test_a_turn_mostly_unknown_to_the_vocabulary_is_warned_about(smoke_run):
    trained = load_trained(smoke_run[0])
    vocab, origin = trained.vocab, vocabulary_origin(trained.config)
    assert origin == "was trained on English conversations (data.source=chitchat)"
    assert unknown_turn_warning(vocab, vocab.encode("hello, how are you?"), origin) is None
    ids = vocab.encode("你好吗朋友")
    assert ids == [vocab.unk_id] * 5
    assert unknown_turn_warning(vocab, ids, origin) == (
        "most of this turn (5 of 5 tokens) is unknown to the model's vocabulary, which was "
        "trained on English conversations (data.source=chitchat)"
    )
    known = vocab.encode("hello")[0]
    assert unknown_turn_warning(vocab, [vocab.unk_id, known], origin) is None  # half: not most
    assert unknown_turn_warning(vocab, [vocab.unk_id] * 2 + [known], origin).startswith(
        "most of this turn (2 of 3 tokens)"
    )
    assert unknown_turn_warning(vocab, [], origin) is None


def _chat(workdir, text, *flags):
    return subprocess.run(
        [sys.executable, "-m", "research.chat", f"--workdir={workdir}", *flags],
        input=text,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_chat_cli_on_piped_stdin(smoke_run):
    workdir, _ = smoke_run
    r = _chat(
        workdir, "hello\n\n   \nhow are you\n/reset\n你好吗\n/quit\nnot read\n", "--max_tokens=4"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["bot", "bot", "(history cleared)", "bot"]
    # The Chinese turn, and only it, is mostly unknown to the English vocabulary: one line.
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning: ")]
    assert warnings == [
        "warning: most of this turn (3 of 3 tokens) is unknown to the model's vocabulary, which "
        "was trained on English conversations (data.source=chitchat)"
    ], r.stderr


def test_chat_cli_takes_what_a_terminal_sends(smoke_run):
    """A line that is not UTF-8 is refused on one stderr line and skipped (it was a traceback);
    special tokens typed as text ([SEP], [CLS]) are dropped, so a line of only those is ignored
    like an empty one; the rest is answered."""
    workdir, _ = smoke_run
    text = b"hello\nhi \xff there\n[SEP] [CLS] [PAD]\nhow [SEP] are you\n"
    r = subprocess.run(
        [sys.executable, "-m", "research.chat", f"--workdir={workdir}", "--max_tokens=3"],
        input=text,
        capture_output=True,
        timeout=300,
    )
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    assert [ln.split(":")[0] for ln in out.splitlines()] == ["bot", "bot"]
    assert "error: that line is not UTF-8 text (byte 3); ignored" in err


def test_chat_cli_leaves_quietly_on_ctrl_c_and_a_closed_stdout(smoke_run):
    import signal
    import time

    workdir, _ = smoke_run
    cmd = [sys.executable, "-m", "research.chat", f"--workdir={workdir}", "--max_tokens=3"]
    p = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started in the background (nohup, &) passes SIGINT on ignored, and Python then
        # installs no KeyboardInterrupt: the chat starts with it at its default, as in a shell
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    p.stdin.write("hello\n")
    p.stdin.flush()
    assert p.stdout.readline().startswith("bot: ")  # waiting for the next turn now
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    # stdout closed by its reader (| head -c 1): no BrokenPipeError traceback.
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(b"hello\n" * 40)
    p.stdin.close()
    p.stdout.read(1)
    p.stdout.close()
    p.wait(timeout=300)
    err = p.stderr.read().decode()
    assert p.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_chat_cli_errors(tmp_path, smoke_run):
    r = _chat(tmp_path, "hi\n")
    assert r.returncode == 2 and "no model.json" in r.stderr and "Traceback" not in r.stderr
    workdir, _ = smoke_run
    untrained = tmp_path / "untrained"  # a run that never saved a checkpoint
    (untrained / "checkpoints").mkdir(parents=True)
    (untrained / "model.json").write_text((workdir / "model.json").read_text())
    r = _chat(untrained, "hi\n")
    assert r.returncode == 2 and "no checkpoints" in r.stderr and "Traceback" not in r.stderr
    r = _chat(workdir, "hi\n", "--top_p=0")  # the session's own check, before any turn
    assert r.returncode == 2 and "top_p" in r.stderr and "Traceback" not in r.stderr
    r = _chat(workdir, "hi\n", "--max_context=8")
    assert r.returncode == 2 and "max_context=8" in r.stderr


def test_bad_conversation_file_exits_2(tmp_path):
    bad = tmp_path / "conv.json"
    bad.write_text(json.dumps([["a", "b"], "not a list"]))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "research.main",
            "--config=configs/chat.py:smoke",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.source=lccc:{bad}",
            f"--config.data.data_dir={tmp_path / 'data'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{bad}: record 1" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_bert_weights_run_causally_as_the_chat_model(norm):
    # A BERT's encoder under the causal mask (UniLM with every token in segment 1 is causal)
    # is the chat DecoderLM holding the same weights (research.models.params.transfer).
    from research.models import Bert
    from research.models import params as params_io

    cfg = ModelConfig(
        vocab_size=60,
        d_model=32,
        num_heads=2,
        num_layers=2,
        d_ff=64,
        max_length=16,
        positions="learned",
        norm=norm,
        num_segments=2,
    )
    bert = Bert(cfg, rngs=nnx.Rngs(0))
    chat = DecoderLM(cfg.replace(mlm_head=False), rngs=nnx.Rngs(1))
    copied, fresh = params_io.transfer(bert, chat)
    assert fresh == [] and any(p.startswith("layers/1/") for p in copied)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 60, (2, 16)), jnp.int32)
    seg = jnp.ones_like(tokens)
    want = bert(tokens, segment_ids=seg, unilm=True).hidden_states
    got = chat.hidden_states(tokens, segment_ids=seg)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("chat.max_reply_tokens", 30, "chat.max_reply_tokens=30"),
        ("chat.max_context", 5, "chat.max_context=5"),
        ("data.source", "wiki", "data.source='wiki'"),
        ("chat.vocab", "bpe", "vocab='bpe'"),
    ],
)
def test_bad_chat_config(key, value, match):
    from research.config import ConfigError

    c = chat_config.get_config("smoke")
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises((ConfigError, ValueError), match=match):
        parse(c)


def test_chat_starts_from_a_hugging_face_bert_without_an_mlm_head(tmp_path, capsys):
    """chat.init=hf:PATH with a BertModel directory (no MLM head, like all-MiniLM-L6-v2): the
    chat model takes its embeddings and layers, its output is the tied embedding, it trains."""
    torch = pytest.importorskip("torch", reason="parity tests need the test extra (torch==2.13.0)")
    transformers = pytest.importorskip("transformers", reason="parity tests need the test extra")
    from research import tasks
    from research.models.convert import load_bert

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "hi",
        "how",
        "are",
        "you",
        "fine",
        "thanks",
        "good",
        "bye",
        "?",
        "!",
        ".",
        "see",
        "later",
    ]
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.txt").write_text("".join(w + "\n" for w in words))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(cfg).eval().save_pretrained(hf_dir, safe_serialization=True)
    rng = np.random.default_rng(0)
    convs = [
        [" ".join(rng.choice(words[5:], rng.integers(1, 6))) for _ in range(rng.integers(2, 5))]
        for _ in range(400)
    ]
    data = tmp_path / "conversations.json"
    data.write_text(json.dumps(convs))
    c = chat_config.get_config("smoke")
    c.data.update(source=f"lccc:{data}", data_dir=str(tmp_path / "data"))
    c.chat.init = f"hf:{hf_dir}"
    run = parse(c)
    task = tasks.get("chat")
    mcfg = task.model_config(run, vocab_size=len(words), max_length=32)
    assert mcfg.norm == "post" and mcfg.tie_embeddings and mcfg.num_segments == 2
    model = task.build_model(run, mcfg, rngs=nnx.Rngs(params=1, dropout=2))
    task.initialize(run, model)
    assert "newly initialised: none" in capsys.readouterr().out
    hf = load_bert(hf_dir)
    np.testing.assert_array_equal(
        model.layers[1].attn.q.kernel.get_value(), hf.layers[1].attn.q.kernel.get_value()
    )
    summary = loop.train_and_evaluate(run, str(tmp_path / "run"))
    assert np.isfinite(summary.final_train_loss) and np.isfinite(summary.eval["perplexity"])


def test_a_local_files_vocabulary_is_built_again_when_the_file_changes(tmp_path):
    """It was named by the source string alone: an edited file's new characters read as
    [UNK] from the old vocabulary."""
    from research.tasks.chat import chat_vocab

    c = chat_config.get_config("smoke")
    c.data.update(source=f"lccc:{tmp_path / 'c.json'}", data_dir=str(tmp_path / "data"))
    run = parse(c)
    old = chat_vocab(run, [["你好", "早上好"]] * 3)
    new = chat_vocab(run, [["你好", "晚安"]] * 3)
    unk = new.encode("晚")
    assert old.encode("晚") != unk and unk == [new.tokenizer.token_to_id("晚")]
    assert len(list((tmp_path / "data" / "tokenizers").glob("chat-lccc*-char*.json"))) == 2
    assert chat_vocab(run, [["你好", "晚安"]] * 3).encode("晚") == unk  # the same file: reused


def test_generate_on_a_chat_run_points_to_research_chat(smoke_run):
    workdir, _ = smoke_run
    cmd = [sys.executable, "-m", "research.generate", f"--workdir={workdir}", "--prompt=hi"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {workdir}: task='chat': talk to it with research.chat; research.generate "
        "continues lm runs and decodes seq2seq runs trained on text (data.source=jsonl:FILE)"
    ], r.stderr


def test_a_capped_train_split_is_said(smoke_run, capsys):
    """data.train_examples (100,000 by default) cut a larger corpus silently: the cap is
    printed when it binds (the smoke preset trains on 200 conversations)."""
    trained = load_trained(smoke_run[0])
    capsys.readouterr()
    tasks.get("chat").build_data(trained.config)
    total = len(dialogue.conversations("chitchat", trained.config.data.data_dir)["train"])
    assert f"chat train: the first 200 of {total:,} conversations" in capsys.readouterr().out
