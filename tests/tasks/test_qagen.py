import functools
import io
import json
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import qagen as qagen_config
from research import tasks
from research.config import ConfigError
from research.data import qa, qa_rows
from research.experiments import EXPERIMENTS
from research.models import Bert, ModelConfig
from research.ops import decoding
from research.sampling import qagen as qagen_sampling
from research.tasks import qagen
from research.tasks.qagen import loss as qagen_loss
from research.tasks.qagen import metrics as qagen_metrics
from research.tasks.seq2seq import metrics
from research.train import load_trained
from research.train.config import parse
from tests.once import once

CLS, SEP, PAD = 2, 3, 0


def _tiny_bert(**overrides) -> Bert:
    fields = dict(
        vocab_size=40,
        d_model=32,
        num_heads=2,
        num_layers=2,
        d_ff=64,
        max_length=64,
        positions="rotary",
        num_segments=2,
        mlm_head=True,
    )
    return Bert(ModelConfig(**{**fields, **overrides}), rngs=nnx.Rngs(0))


def _row(passage=(10, 11, 12, 13, 14), answer=(12, 13), question=(20, 21, 22), seq_len=20):
    return qa_rows.qa_row(
        list(passage),
        list(answer),
        list(question),
        seq_len=seq_len,
        cls_id=CLS,
        sep_id=SEP,
        pad_id=PAD,
    )


def test_row_layout_segments_and_loss_weights():
    r = _row()
    ids = [CLS, 10, 11, 12, 13, 14, SEP, 12, 13, SEP, 20, 21, 22, SEP]
    assert r["inputs"][:14].tolist() == ids and (r["inputs"][14:] == PAD).all()
    assert r["segment_ids"][:14].tolist() == [0] * 7 + [1] * 7
    assert r["mask"].tolist() == [True] * 14 + [False] * 6
    # A weight where the NEXT token is a segment-1 token: from the passage's [SEP] to the
    # question's last token; the target there is that next token.
    assert np.flatnonzero(r["weights"]).tolist() == list(range(6, 13))
    assert r["targets"][6:13].tolist() == ids[7:14]
    with pytest.raises(ValueError, match="does not fit seq_len=10"):
        _row(seq_len=10)


def test_unilm_mask_segment_one_sees_the_passage_and_only_earlier_targets():
    model = _tiny_bert()
    r = _row()
    tokens, seg, mask = (jnp.asarray(r[k][None]) for k in ("inputs", "segment_ids", "mask"))

    def logits(t):
        return np.asarray(model(t, segment_ids=seg, mask=mask, unilm=True).logits[0])

    base = logits(tokens)
    # A change in a later token changes no earlier logit; every later segment-1 logit moves.
    for j in (7, 9, 11):
        moved = np.abs(logits(tokens.at[0, j].set(30)) - base).max(-1)
        assert (moved[:j] == 0).all() and (moved[j:14] > 1e-6).all(), j
    # The passage is bidirectional and every segment-1 token sees all of it.
    moved = np.abs(logits(tokens.at[0, 5].set(30)) - base).max(-1)
    assert (moved[:14] > 1e-6).all()


def test_loss_is_the_cross_entropy_of_segment_one_tokens_only():
    model = _tiny_bert()
    rows = [_row(), _row(passage=(15, 16, 17), answer=(16,), question=(21, 22, 23, 24, 25))]
    batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    loss, weight, metrics = qagen_loss.make_qagen_loss(2 + 5 + 2)(model, batch)
    full = np.asarray(
        model(
            batch["inputs"], segment_ids=batch["segment_ids"], mask=batch["mask"], unilm=True
        ).logits
    )
    top = full.max(-1, keepdims=True)
    logp = full - top - np.log(np.exp(full - top).sum(-1, keepdims=True))
    want, n, hits = 0.0, 0, 0
    for b, r in enumerate(rows):
        ids = r["inputs"][r["mask"]]
        for i in range(len(ids) - 1):
            if r["segment_ids"][i + 1] == 1:  # the next token is in segment 1
                want -= logp[b, i, ids[i + 1]]
                n += 1
                hits += int(np.argmax(full[b, i]) == ids[i + 1])
    assert float(weight) == n == 7 + 8
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    # Passage tokens are inputs, never targets: other targets there change nothing.
    other = dict(batch, targets=batch["targets"].at[:, :3].set(7))
    np.testing.assert_allclose(float(qagen_loss.make_qagen_loss(9)(model, other)[0]), float(loss))
    assert float(metrics["correct"]) == hits  # the argmax hits among those targets


class _CharVocab:
    """One id per character (ids 5..), enough for windows and prompts."""

    cls_id, sep_id, pad_id = CLS, SEP, PAD

    def encode(self, text):
        return [5 + ord(c) % 30 for c in text]


def test_only_the_passage_is_cut_and_its_window_holds_the_answer():
    v = _CharVocab()
    passage = "abcdefghijklmnopqrstuvwxyz"
    ids = qa_rows.passage_window(v, passage, passage.index("st"), 2, 6)
    assert len(ids) == 6 and v.encode("st")[0] in ids and ids == v.encode("qrstuv")
    assert qa_rows.passage_window(v, passage, -1, 0, 6) == v.encode("abcdef")
    assert qa_rows.passage_window(v, passage, 24, 2, 6) == v.encode("uvwxyz")
    s = qagen.QagenConfig(answer_len=3, question_len=5)
    ex = {"passage": passage, "answer": "xyz", "question": "what?", "answer_start": 23}
    r = qa_rows.encode_example(
        v, ex, seq_len=20, answer_len=s.answer_len, question_len=s.question_len
    )  # passage budget 20 - 3 - 5 - 4 = 8
    row = r["inputs"][r["mask"]].tolist()
    assert row == [CLS, *v.encode("stuvwxyz"), SEP, *v.encode("xyz"), SEP, *v.encode("what?"), SEP]
    assert (
        qa_rows.encode_example(
            v,
            dict(ex, question="a longer question"),
            seq_len=20,
            answer_len=s.answer_len,
            question_len=s.question_len,
        )
        is None
    )
    assert (
        qa_rows.encode_example(
            v,
            dict(ex, answer="wxyz", answer_start=22),
            seq_len=20,
            answer_len=s.answer_len,
            question_len=s.question_len,
        )
        is None
    )


def _reference_step(model, width: int, segment_from):
    """A cache-free decode step: the token is written at the row's length and the whole row is
    run again with the UniLM mask (segment 1 from segment_from[row])."""

    def step(token, state):
        buf, length = state["buf"], state["length"]
        buf = buf.at[jnp.arange(buf.shape[0]), length].set(token)
        length = length + 1
        pos = jnp.arange(width)[None, :]
        seg = (pos >= state["seg_from"][:, None]).astype(jnp.int32)
        out = model(buf, segment_ids=seg, mask=pos < length[:, None], unilm=True).logits
        return out[jnp.arange(buf.shape[0]), length - 1], {**state, "buf": buf, "length": length}

    def start(prompt, lengths):
        buf = jnp.pad(prompt, ((0, 0), (0, width - prompt.shape[1])), constant_values=PAD)
        state = {"buf": buf, "length": lengths, "seg_from": segment_from}
        pos = jnp.arange(width)[None, :]
        seg = (pos >= segment_from[:, None]).astype(jnp.int32)
        out = model(buf, segment_ids=seg, mask=pos < lengths[:, None], unilm=True).logits
        return out[jnp.arange(buf.shape[0]), lengths - 1], state

    return start, step


def test_two_stage_generation_equals_step_by_step_reference_decoding():
    model = _tiny_bert()
    # Make [SEP] and the passages' alphabet likely, so that answers of several lengths end
    # inside the budget and some are spans of their passage.
    model.mlm_bias.set_value(model.mlm_bias.get_value().at[SEP].add(2.5).at[5:12].add(2.5))
    rng = np.random.default_rng(0)
    b, p, k, a_len, q_len = 3, 9, 4, 4, 5
    prompt = np.full((b, p), PAD, np.int32)
    lengths = np.array([9, 6, 7], np.int32)
    for i, n in enumerate(lengths):
        prompt[i, :n] = [CLS, *rng.integers(5, 12, n - 2), SEP]  # a small alphabet: spans recur
    key = jax.random.key(3)
    opts = dict(
        num_answers=k,
        answer_len=a_len,
        question_len=q_len,
        top_p=0.9,
        top_k=6,
        beam_size=3,
        sep_id=SEP,
        pad_id=PAD,
        banned_ids=(PAD, CLS),
    )
    got = jax.jit(functools.partial(qagen_sampling.generate_qa, model, **opts))(
        jnp.asarray(prompt), jnp.asarray(lengths), key
    )
    # Stage 1, by hand: sample with the same key, each step a full forward of the whole row.
    rep, rep_len = np.repeat(prompt, k, 0), np.repeat(lengths, k)
    start, step = _reference_step(model, p + a_len + 1, jnp.asarray(rep_len))
    logits, state = start(jnp.asarray(rep), jnp.asarray(rep_len))
    ban = jnp.zeros(40).at[jnp.asarray([PAD, CLS])].set(-jnp.inf)  # never sampled

    def banned(token, state):
        logits, state = step(token, state)
        return logits + ban, state

    answers = decoding.sample(
        banned,
        logits + ban,
        state,
        key,
        max_new_tokens=a_len + 1,
        top_p=0.9,
        top_k=6,
        stop_tokens=(SEP,),
        pad_id=PAD,
    )
    np.testing.assert_array_equal(np.asarray(got["answers"]).reshape(b * k, -1), answers)
    answers = np.asarray(answers)
    alen = np.array([list(r).index(SEP) if SEP in r else a_len + 1 for r in answers])
    assert len(set(alen.tolist())) > 1  # the check covers answers of several lengths
    np.testing.assert_array_equal(
        np.asarray(got["answer_length"]).reshape(-1), np.minimum(alen, a_len)
    )
    # Stage 2, by hand: prompt + answer + [SEP] (segment 1), beam search over full forwards.
    width = p + a_len + 1 + q_len + 1
    prompt2 = np.full((b * k, p + a_len + 1), PAD, np.int32)
    len2 = np.zeros(b * k, np.int32)
    for i in range(b * k):
        n, m = rep_len[i], min(alen[i], a_len)
        row = [*rep[i, :n], *answers[i, :m], SEP]
        prompt2[i, : len(row)], len2[i] = row, len(row)
    # The questions never hold a banned token either (stage 2 once could emit them).
    start, step = _reference_step(model, width, jnp.asarray(rep_len))
    logits, state = start(jnp.asarray(prompt2), jnp.asarray(len2))

    def banned2(token, state):
        logits, state = step(token, state)
        return logits + ban, state

    seqs, scores = decoding.beam_search(
        banned2, logits + ban, state, beam_size=3, max_new_tokens=q_len + 1, eos_id=SEP, pad_id=PAD
    )
    np.testing.assert_array_equal(np.asarray(got["questions"]).reshape(b * k, -1), seqs[:, 0])
    for q in np.asarray(got["questions"]).reshape(b * k, -1):
        body = q[: list(q).index(SEP)] if SEP in q else q
        assert not set(body.tolist()) & {PAD, CLS}
    np.testing.assert_allclose(
        np.asarray(got["question_score"]).reshape(-1), scores[:, 0], rtol=1e-5, atol=1e-5
    )
    # The answer score is log p(answer [SEP] | passage), summed by hand from one full forward of
    # the padded rows (the padding mask keeps every row's logits those of the row alone).
    pos = np.arange(prompt2.shape[1])[None, :]
    seg = (pos >= rep_len[:, None]).astype(np.int32)
    out = model(jnp.asarray(prompt2), segment_ids=seg, mask=pos < len2[:, None], unilm=True)
    lp = np.asarray(jax.nn.log_softmax(out.logits, -1))
    for i in range(b * k):
        n, m = rep_len[i], min(alen[i], a_len)
        want = sum(float(lp[i, n - 1 + t, prompt2[i, n + t]]) for t in range(m + 1))
        score = float(np.asarray(got["answer_score"]).reshape(-1)[i])
        assert score == pytest.approx(want, abs=1e-4)
    # keep: ended with [SEP], non-empty, a span of the passage, first of its duplicates.
    keep = np.asarray(got["keep"])
    for i in range(b):
        seen = []
        text = list(prompt[i, 1 : lengths[i] - 1])
        for j in range(k):
            r = i * k + j
            ans = list(answers[r, : alen[r]])
            ok = alen[r] <= a_len and SEP in answers[r] and len(ans) > 0
            ok = ok and any(text[s : s + len(ans)] == ans for s in range(len(text)))
            want = ok and ans not in seen
            if ok:
                seen.append(ans)
            assert keep[i, j] == want, (i, j)
    assert keep.any() and not keep.all()
    assert not np.isin(answers, [CLS]).any()
    # The stage-2 row fits a model whose positions end exactly at the longest training row.
    learned = _tiny_bert(positions="learned", max_length=p + a_len + 1 + q_len + 1)
    out = jax.jit(functools.partial(qagen_sampling.generate_qa, learned, **opts))(
        jnp.asarray(prompt), jnp.asarray(lengths), key
    )
    assert out["questions"].shape == (b, k, q_len + 1)


def test_in_passage_and_dedup_against_python():
    prompt = jnp.asarray([[CLS, 7, 8, 9, 7, 8, SEP, PAD]])
    lengths = jnp.asarray([7])
    answers = jnp.asarray([[7, 8, PAD], [8, 9, 7], [9, 9, PAD], [8, SEP, PAD], [6, PAD, PAD]])
    alen = jnp.asarray([2, 3, 2, 1, 0])
    got = qagen_sampling.in_passage(jnp.repeat(prompt, 5, 0), jnp.repeat(lengths, 5), answers, alen)
    assert got.tolist() == [True, True, False, True, False]
    # [SEP] is not part of the passage: an answer running into it is not a span.
    assert not qagen_sampling.in_passage(
        prompt, lengths, jnp.asarray([[7, 8, SEP]]), jnp.asarray([3])
    )[0]
    dup = jnp.asarray([[[7, 8, 1], [7, 8, 2], [7, 9, 0], [7, 8, 0]]])
    keep = qagen_sampling.first_of_each(
        dup, jnp.asarray([[2, 2, 2, 2]]), jnp.asarray([[1, 1, 1, 1]]) > 0
    )
    assert keep.tolist() == [[True, False, True, False]]
    keep = qagen_sampling.first_of_each(
        dup, jnp.asarray([[2, 2, 2, 2]]), jnp.asarray([[0, 1, 1, 1]]) > 0
    )
    assert keep.tolist() == [[False, True, True, False]]  # an invalid first does not count


def test_metrics_against_hand_computed_values():
    assert metrics.text_units("江泽民在1998年 Visited Beijing!") == [
        "江",
        "泽",
        "民",
        "在",
        "1998",
        "年",
        "visited",
        "beijing",
        "!",
    ]
    # SQuAD F1 on characters: 2 of 3 predicted, 2 of 4 gold -> 2 * (2/3 * 1/2) / (2/3 + 1/2).
    assert qagen_metrics.span_f1("北京市", "在北京城") == pytest.approx(4 / 7)
    got = qagen_metrics.answer_scores([["北京", "上海市"], []], [["北京", "上海"], ["x"]])
    assert got["answer_em"] == 50 and got["answers"] == 1
    # 上海市 vs 上海: 2 shared of 3 predicted and 2 gold -> F1 0.8; 北京 is exact.
    assert got["answer_f1"] == pytest.approx(100 * (1 + 0.8) / 2)
    # SQuAD's normalisation: punctuation, articles and accents do not count.
    same = qagen_metrics.answer_scores(
        [["１９９８年。", "The Beyoncé"]], [["１９９８年", "beyonce"]]
    )
    assert same["answer_em"] == 100 and same["answer_f1"] == 100
    same = metrics.text_scores(["谁发表讲话？"], ["谁发表讲话？"])
    assert same["bleu"] == pytest.approx(100) and same["rougeL"] == pytest.approx(100)
    # ROUGE-L F1 by hand: LCS("甲乙丙丁", "甲丙丁戊") = 3 -> P = R = 3/4.
    assert metrics.text_scores(["甲乙丙丁"], ["甲丙丁戊"])["rougeL"] == pytest.approx(75)
    ex = {"passage": "开幕了。江泽民在北京发表讲话，大家鼓掌。完", "answer": "北京"}
    assert qagen.baseline_question(ex) == "江泽民在发表讲话，大家鼓掌"
    # What copying cannot score: the reference's units absent from the passage are 哪, 里 (and
    # ？, punctuation, which every question ends with: not counted).
    ref = "江泽民在哪里发表讲话，大家鼓掌？"
    hyps = [qagen.baseline_question(ex) + "？", "江泽民在哪发表讲话？", ref]
    got = qagen_metrics.question_scores(hyps, [ref] * 3, [ex["passage"]] * 3)
    # copy + ？: no new units, F1 0; 哪 of 哪 里: 2 * 1 / (1 + 2); the reference: 1.
    assert got["question_novel_f1"] == pytest.approx(100 * (0 + 2 / 3 + 1) / 3)
    assert got["question_em"] == pytest.approx(100 / 3)
    # A pair whose reference adds nothing to its passage does not count toward the F1.
    got = qagen_metrics.question_scores(["甲", "丙？"], ["甲", "丙？"], ["甲", "甲"])
    assert got["question_novel_f1"] == 100 and got["question_em"] == 100  # 50 if counted
    # The template baseline: the train questions' most frequent word not in their passage, and
    # their most frequent ending, in the answer's place (a constant guess, exact for its type).
    train = [
        {"passage": "他在上海。", "question": "他在哪里？"},
        {"passage": "她去了北京。", "question": "她去了哪里？"},
        {"passage": "来了三人。", "question": "来了多少人？"},
    ]
    template = qagen_metrics.question_template(train)
    assert template == ("哪里", "？")
    assert qagen.template_question(ex, template) == ref
    assert qagen_metrics.frequent_answers(["上海", "北京", "江泽民"], ex["passage"], 1) == ["北京"]
    # As the model's text comes back through an uncased vocabulary: "Denver Broncos" is found
    # in the decoded window "the denver broncos won ." (raw, it never matched), once.
    window = "the denver broncos won ."
    ranked = ["Super Bowl", "Denver Broncos", "DENVER BRONCOS", "Won"]
    assert qagen_metrics.frequent_answers(ranked, window, 2) == []  # raw: no case-free match
    assert qagen_metrics.frequent_answers(ranked, window, 2, str.lower) == [
        "denver broncos",
        "won",
    ]


def test_config_errors():
    for bad, match in (
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(num_answers=0), "num_answers"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(in_passage=1), "in_passage=1"),
        (dict(eval_passages=-2), "eval_passages=-2"),
    ):
        with pytest.raises(ValueError, match=match):
            qagen.QagenConfig(**bad)
    c = qagen_config.run_config("smoke")
    c.data.seq_len = 32  # 32 - 6 - 24 - 4 = -2 passage tokens
    with pytest.raises(ConfigError, match="leaves -2 passage tokens"):
        parse(c)
    c = qagen_config.run_config("smoke")
    c.model.update(attention="linear", feature_map="elu")
    with pytest.raises(ConfigError, match="needs softmax attention, but model.attention is 'lin"):
        parse(c)
    c = qagen_config.run_config()
    c.qagen.init = "workdir:/nonexistent/mlm"
    with pytest.raises(ConfigError, match="train it first: python -m research.main --config="):
        parse(c)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The smoke experiment: a smoke MLM pretrained, then one qagen run from it; made once for all
    xdist workers, read-only."""

    def build(path):
        c = qagen_config.get_config("smoke")
        c.data.data_dir = str(path / "data")
        return EXPERIMENTS["qagen"](c, str(path / "study"))

    path, rows = once(tmp_path_factory, "qagen-smoke-study", build)
    return path / "study", rows


def test_smoke_study_reports_generation_metrics_beside_the_baseline(study):
    workdir, rows = study
    by = {r["key"]: r for r in rows}
    for name in ("question_bleu4", "question_rougeL", "answer_em", "answer_f1"):
        assert 0 <= by[name]["model_mean"] <= 100 and 0 <= by[name]["baseline"] <= 100
        # One seed: no std (NaN, printed "(1 seed)"), not a fake 0.
        assert np.isnan(by[name]["model_std"]) and by[name]["seeds"] == 1
    # The copy baseline shares most of a rule-made question's characters, and none of what the
    # question adds to the passage.
    assert by["question_rougeL"]["baseline"] > 50
    assert by["question_novel_f1"]["baseline"] == 0 and by["question_em"]["baseline"] == 0
    assert 0 <= by["question_novel_f1"]["model_mean"] <= 100
    # The template baseline guesses one question word: exact for the questions of its type.
    assert 0 < by["question_em"]["template"] < 100 and np.isnan(by["answers"]["template"])
    assert {p.name for p in workdir.iterdir()} >= {
        "qagen.csv",
        "qagen.png",
        "examples.jsonl",
        "pretrain",
        "runs",
    }
    examples = [json.loads(x) for x in (workdir / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 2 and all(e["passage"] for e in examples)
    for e in examples:
        for g in e["gold_answer_given"]:
            assert g["answer"] in e["passage"] and g["gold"].endswith("？")
    run = workdir / "runs" / "seed0"
    trained = load_trained(run)
    assert isinstance(trained.model, Bert) and trained.model.cfg.num_segments == 2
    assert trained.config.task_config.init == f"workdir:{workdir / 'pretrain'}"


def _qagen(workdir, text, *flags):
    return subprocess.run(
        [sys.executable, "-m", "research.qagen", f"--workdir={workdir}", *flags],
        input=text,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluation_reads_no_file_the_held_out_examples_come_with_the_data(study, monkeypatch):
    trained = load_trained(study[0] / "runs" / "seed0")
    run = trained.config
    task = tasks.get(run.task)
    data = task.build_data(run)
    assert (
        data.eval_examples.held_out
        == qagen.read_examples(run.data.source, run.data.data_dir)["validation"]
    )

    def no_reading(*args):
        raise AssertionError("evaluate read the examples from disk")

    monkeypatch.setattr(qa, "qa_sources", no_reading)
    monkeypatch.setattr(qagen, "read_examples", no_reading)
    state = types.SimpleNamespace(params=None, consts=None)
    out = task.evaluate(run, data, lambda params, consts: trained.model, state, [])
    assert {"question_bleu4", "answer_f1", "baseline_question_bleu4"} <= set(out)


def test_qagen_cli_on_piped_input(study):
    workdir = study[0] / "runs" / "seed0"
    given = {"passage": "江泽民在北京发表讲话。", "answer": "北京"}
    text = (
        "\n".join(
            [
                "１９９６年全国广播影视系统语言工作会议在北京召开。",
                "",
                json.dumps(given, ensure_ascii=False),
            ]
        )
        + "\n"
    )
    r = _qagen(workdir, text, "--noin_passage", "--num_answers=3", "--top_k=3")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines and lines[-1]["answer"] == "北京" and lines[-1]["passage"] == given["passage"]
    for line in lines:
        assert set(line) == {"passage", "answer", "question", "scores"}
        assert line["scores"]["answer"] < 0 and line["scores"]["question"] < 0
    assert len(lines) <= 3 + 1  # at most num_answers per free passage, one for the given answer
    produced = len({line["passage"] for line in lines})
    assert r.stderr.strip().splitlines()[-1] == (
        f"{produced} of 2 passages produced pairs; {len(lines)} pairs written"
    )


def test_qagen_cli_says_when_no_passage_produced_a_pair(study):
    """Passages of characters the vocabulary lacks are all [UNK], which is never sampled as an
    answer: with answers kept only as spans of the passage, none is kept. Nothing goes to
    stdout, and stderr says so per passage and in the summary (exit 0: the input was valid)."""
    workdir = study[0] / "runs" / "seed0"
    vocab = load_trained(workdir).vocab
    passages = ["\U0001f642\U0001f643\U0001f642", "\U0001f680\U0001f6f8"]
    for text in passages:
        assert set(vocab.encode(text)) == {vocab.unk_id}
    r = _qagen(workdir, "\n".join(passages) + "\n", "--num_answers=2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines[-3:] == [
        "stdin:1: no answer kept",
        "stdin:2: no answer kept",
        "0 of 2 passages produced pairs; 0 pairs written",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"passage": "江泽民在北京发表讲话。", "answer": "上海"}\n',
         "stdin:1: the answer '上海' is not in its passage"),
        ('好的\n{"passage": "  "}\n', "stdin:2: the passage is empty"),
        ('{"passage": 3}\n', "stdin:1: a JSON line must be an object with a 'passage' string"),
        ("{not json\n", "stdin:1: not valid JSON"),
    ],
)  # fmt: skip
def test_bad_input_records_are_one_line_naming_the_record(text, message):
    """research.qagen's reader (the CLI prints its DataError and exits 2: below)."""
    from research.data import DataError

    with pytest.raises(DataError) as e:
        qa.read_records(io.StringIO(text), "stdin")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert qa.read_records(io.StringIO(""), "stdin") == []  # the CLI: "holds no passage"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json\n", "stdin:1: not valid JSON"),
        ("\n  \n", "stdin holds no passage (it is empty or blank); give one passage a line"),
    ],
)
def test_qagen_cli_bad_input_exits_2_naming_the_record(study, text, message):
    r = _qagen(study[0] / "runs" / "seed0", text)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert r.stdout == ""


def test_qagen_cli_input_that_is_not_utf8_exits_2(study):
    """Bytes that are not UTF-8 on stdin: one line naming the byte (it was a tokenizer's
    TypeError traceback)."""
    cmd = [sys.executable, "-m", "research.qagen", f"--workdir={study[0] / 'runs' / 'seed0'}"]
    r = subprocess.run(cmd, input=b"\xff\xfe abc\n", capture_output=True, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.strip().splitlines() == [
        "error: --input=-: not UTF-8 text (invalid start byte)"
    ], err


def test_qagen_cli_rejects_other_runs(tmp_path):
    r = _qagen(tmp_path, "x\n")
    assert r.returncode == 2 and "no model.json" in r.stderr and "Traceback" not in r.stderr


def test_qagen_cli_given_the_experiment_directory_names_its_runs(study):
    workdir = study[0]
    r = _qagen(workdir, "x\n")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: --workdir={workdir} is an experiment directory; its runs are runs/seed0: give "
        f"one, e.g. --workdir={workdir}/runs/seed0"
    )


def test_bad_qa_file_exits_2_before_anything_trains(tmp_path):
    bad = tmp_path / "webqa.jsonl"
    good = {"passage": "江泽民在北京发表讲话。", "question": "在哪里？", "answer": "北京"}
    bad.write_text(
        json.dumps(good, ensure_ascii=False)
        + "\n"
        + json.dumps(dict(good, answer="上海"), ensure_ascii=False)
        + "\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "research.main",
            "--config=configs/qagen.py:smoke",
            f"--workdir={tmp_path / 'study'}",
            f"--config.data.source=jsonl:{bad}",
            f"--config.data.data_dir={tmp_path / 'data'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{bad}:2: the answer '上海' is not in its passage" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "study" / "pretrain").exists()


def test_gold_text_is_scored_as_the_models_text_comes_back(monkeypatch):
    """The model's questions and answers come back through the vocabulary (an uncased one
    lowercases) but the gold stayed raw: exact reproductions of cased English questions scored
    BLEU 42 (sacrebleu is case-sensitive)."""

    class Decoding:  # an uncased vocabulary: text comes back lowercased
        def encode(self, text):
            return [ord(c) for c in text.lower()]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    vocab = Decoding()
    questions = ["Where did Alice Smith move to in the spring?", "Where did Bob Jones go then?"]
    held = [
        {"passage": f"{q} To New York.", "answer": "New York", "question": q} for q in questions
    ]

    class Exact:  # the model's output: the gold, as the vocabulary gives text back
        def __init__(self, *args, **kwargs):
            pass

        def ask(self, passages, answers, starts):
            return [{"question": vocab.decode(vocab.encode(e["question"]))} for e in held]

        def generate(self, passages, key):
            return [[{"answer": vocab.decode(vocab.encode("New York"))}] for _ in passages]

    monkeypatch.setattr(qagen_metrics, "Generator", Exact)
    s = qagen.QagenConfig(eval_examples=2, eval_passages=2)
    got = qagen_metrics.evaluate_model(None, vocab, held, s, seq_len=64)
    assert got["question_bleu4"] == pytest.approx(100.0)
    assert got["question_rougeL"] == pytest.approx(100.0)
    assert (got["answer_em"], got["answer_f1"]) == (100.0, 100.0)
    # The frequent-answer baseline looks for the train answers as they come back too: raw, the
    # cased "New York" was never found in the lowercased window, and it scored 0.
    base = qagen_metrics.baseline_metrics(vocab, held, s, ["Paris", "New York"], seq_len=160)
    assert (base["answer_em"], base["answer_f1"], base["answers"]) == (100.0, 100.0, 1.0)


def test_a_pretrained_model_without_softmax_attention_is_refused(mlm_workdir, tmp_path):
    """With init the model is the pretrained architecture: a linear-attention MLM passed the
    check on the run's own model.attention and failed at the first traced step."""
    import json
    import shutil

    other = tmp_path / "linear_mlm"
    shutil.copytree(mlm_workdir, other)
    cfg = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**cfg, "attention": "linear"}))
    c = qagen_config.run_config("smoke")
    c.qagen.init = f"workdir:{other}"
    with pytest.raises(ConfigError, match=f"but workdir:{other}'s attention is 'linear'"):
        parse(c)


def test_a_diverged_seed_leaves_the_baselines_as_the_other_seeds_report_them():
    """The baselines are the same in every seed; a diverged run reports none, and its NaN made
    the baseline columns NaN too. The model's own row is NaN (no result), as elsewhere."""
    from research.experiments import qagen as qagen_experiment

    keys = list(qagen_experiment.METRICS)
    fine = {**{k: 20.0 for k in keys}, **{f"baseline_{k}": 80.0 + i for i, k in enumerate(keys)}}
    fine |= {f"baseline_template_{k}": 40.0 for k in keys}
    diverged = {k: float("nan") for k in keys}
    rows = qagen_experiment.summarize([fine, diverged])
    for i, r in enumerate(rows):
        assert (r["baseline"], r["template"], r["seeds"]) == (80.0 + i, 40.0, 2)
        assert np.isnan(r["model_mean"])
    assert all(np.isnan(r["baseline"]) for r in qagen_experiment.summarize([diverged]))
