"""Generate question-answer pairs from passages with a trained qagen run (configs/qagen.py;
docs/research_notes.md section 6; docs/qagen.md).

    python -m research.qagen --workdir=/tmp/seqlab/qagen/runs/seed0 < passages.txt > pairs.jsonl
    python -m research.qagen --workdir=DIR --input=passages.txt --num_answers=8 --top_k=5
    echo '{"passage": "...", "answer": "..."}' | python -m research.qagen --workdir=DIR

The workdir is one run of the qagen experiment (WORKDIR/runs/seedS), not the experiment's
directory. Input (a file, or stdin): one passage a line, plain text or a JSON object
{"passage": str} with an optional "answer" (str): then only the question for that answer is
generated. Blank lines are skipped. Output: a JSON line {passage, answer, question, scores:
{answer, question}} for every kept pair (scores are log-probabilities under the model:
log p(answer [SEP] | passage) and the question beam's). Answers are sampled (top-p / top-k /
temperature), deduplicated and, unless --noin_passage, kept only when they are a span of the
passage; questions come from beam search. A summary goes to stderr ("1 of 2 passages produced
pairs; 3 pairs written"), and each passage without a kept answer is named there. Exit 2 for a
bad flag, a workdir that is not a qagen run, an input without any passage, or a bad input line
(an empty passage, a given answer outside its passage, a JSON line that is not such an object).
"""

import dataclasses
import io
import json
import sys

from absl import app, flags

from research.cli import fail, load_run, parse_flags, seed_flag

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "a qagen run's directory: WORKDIR/runs/seedS of the experiment"
)
_INPUT = flags.DEFINE_string("input", "-", "passages file, one a line ('-' = stdin)")
_NUM_ANSWERS = flags.DEFINE_integer(
    "num_answers",
    None,
    "answers sampled per passage; --batch_size passages x this many rows decode together "
    "(default: the run's)",
    lower_bound=1,
    upper_bound=256,
)
_TOP_P = flags.DEFINE_float("top_p", None, "answer sampling: nucleus mass (default: the run's)")
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "answer sampling: top-k, 0 = off (default: the run's)", lower_bound=0
)
_TEMPERATURE = flags.DEFINE_float("temperature", None, "answer sampling temperature")
_BEAM = flags.DEFINE_integer(
    "beam_size", None, "question beam size (default: the run's)", lower_bound=1
)
_IN_PASSAGE = flags.DEFINE_boolean(
    "in_passage", True, "keep only answers found in the passage (default: the run's)"
)
_SEED = seed_flag("sampling PRNG seed")
_BATCH = flags.DEFINE_integer("batch_size", 16, "passages per jitted batch", lower_bound=1)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")


def _generate(gen, asked: list[dict], free: list[dict]) -> dict:
    """where -> the pairs of that input line: questions for given answers, both stages else."""
    import jax

    results = {}
    if asked:
        got = gen.ask([r["passage"] for r in asked], [r["answer"] for r in asked])
        for r, g in zip(asked, got, strict=True):
            results[r["where"]] = [{"answer": r["answer"], **g}]
    if free:
        got = gen.generate([r["passage"] for r in free], jax.random.key(_SEED.value))
        for r, g in zip(free, got, strict=True):
            results[r["where"]] = g
            if not g:
                print(f"{r['where']}: no answer kept", file=sys.stderr, flush=True)
    return results


def main(argv):

    from research.data import DataError
    from research.data.qa import read_records
    from research.sampling import Generator
    from research.tasks.qagen import QagenTask

    trained = load_run(argv, _WORKDIR.value, _STEP.value, task=QagenTask.name)
    run = trained.config
    changes = {
        "num_answers": _NUM_ANSWERS.value,
        "top_p": _TOP_P.value,
        "top_k": _TOP_K.value,
        "temperature": _TEMPERATURE.value,
        "beam_size": _BEAM.value,
    }
    if flags.FLAGS["in_passage"].present:
        changes["in_passage"] = _IN_PASSAGE.value
    try:
        s = dataclasses.replace(
            run.task_config, **{k: v for k, v in changes.items() if v is not None}
        )
    except ValueError as e:
        fail(str(e))
    try:
        if _INPUT.value == "-":
            # strict UTF-8 (Python's stdin passes other bytes on as lone surrogates)
            stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
            records = read_records(stdin, "stdin")
        else:
            with open(_INPUT.value, encoding="utf-8") as f:
                records = read_records(f, _INPUT.value)
    except OSError as e:
        fail(f"--input={_INPUT.value}: {e.strerror}")
    except UnicodeDecodeError as e:
        fail(f"--input={_INPUT.value}: not UTF-8 text ({e.reason})")
    except DataError as e:
        fail(str(e))
    if not records:
        source = "stdin" if _INPUT.value == "-" else f"--input={_INPUT.value}"
        fail(f"{source} holds no passage (it is empty or blank); give one passage a line")
    vocab = trained.vocab
    for r in records:
        given = r["answer"]
        if given is not None and len(vocab.encode(given)) > s.answer_len:
            fail(
                f"{r['where']}: the answer {given!r} is longer than the run's {s.answer_len} "
                "answer tokens"
            )
    gen = Generator(trained.model, vocab, s, run.data.seq_len, batch_size=_BATCH.value)
    for r in records:
        if r["answer"] is None and len(vocab.encode(r["passage"])) > gen.budget:
            print(
                f"{r['where']}: the passage is cut to its first {gen.budget} tokens (the run's "
                "passage budget)",
                file=sys.stderr,
                flush=True,
            )
    asked = [r for r in records if r["answer"] is not None]
    free = [r for r in records if r["answer"] is None]
    try:
        results = _generate(gen, asked, free)
    except ValueError as e:  # a run whose model cannot decode these lengths, say
        fail(str(e))
    pairs = 0
    for r in records:  # input order
        pairs += len(results[r["where"]])
        for g in results[r["where"]]:
            scores = {"answer": g["answer_score"], "question": g["question_score"]}
            line = {
                "passage": r["passage"],
                "answer": g["answer"],
                "question": g["question"],
                "scores": scores,
            }
            print(json.dumps(line, ensure_ascii=False), flush=True)
    produced = sum(1 for r in records if results[r["where"]])
    print(
        f"{produced} of {len(records)} passages produced pairs; {pairs} pairs written",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
