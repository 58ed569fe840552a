r"""Continue a prompt with a trained language model, or decode a source with a seq2seq model.

    python -m research.generate --workdir=/tmp/seqlab/lm_smoke --prompt='def main(' \
        --max_new_tokens=64
    python -m research.generate --workdir=DIR --prompt='...' --method=sample --temperature=0.8 \
        --top_k=40 --seed=1 [--step=N]
    python -m research.generate --workdir=/tmp/seqlab/csl --prompt='...'   # a text seq2seq run

The workdir is any training run of an lm config, or of a seq2seq config on text
(data.source=jsonl:FILE; the default synthetic ids have no text), read by
`research.train.load_trained` at its newest checkpoint or --step; for a sweep
(configs/compare_attention.py, ...) one of its runs, WORKDIR/runs/NAME. Prints the continuation
only. Exit 2 for a bad flag or a workdir that cannot be used (an experiment's directory: its
runs are named).
"""

import sys

from absl import app, flags

from research.cli import fail, load_run, parse_flags, seed_flag, utf8

_WORKDIR = flags.DEFINE_string("workdir", None, "a training run's directory")
_PROMPT = flags.DEFINE_string("prompt", None, "text to continue (lm) or the source (seq2seq)")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate", lower_bound=1)
_METHOD = flags.DEFINE_enum("method", "greedy", ["greedy", "sample", "beam"], "decoding method")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "sample: softmax temperature", lower_bound=0)
_TOP_K = flags.DEFINE_integer(
    "top_k", 0, "sample: keep the k most likely tokens (0 = all)", lower_bound=0
)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "sample: nucleus mass", lower_bound=0, upper_bound=1)
_BEAM = flags.DEFINE_integer("beam_size", 4, "beam: beams kept", lower_bound=1)
_SEED = seed_flag("sample: PRNG seed")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")


def _options(eos: int, pad: int) -> dict:
    if _METHOD.value == "greedy":
        return {"stop_tokens": (eos,), "pad_id": pad}
    if _METHOD.value == "sample":
        return {
            "temperature": _TEMPERATURE.value,
            "top_k": _TOP_K.value,
            "top_p": _TOP_P.value,
            "stop_tokens": (eos,),
            "pad_id": pad,
        }
    return {"beam_size": _BEAM.value, "eos_id": eos, "pad_id": pad}


def main(argv):
    import jax
    import numpy as np

    from research import tasks
    from research.sampling import generate

    if not _WORKDIR.value or _PROMPT.value is None:
        fail("both --workdir=DIR and --prompt=TEXT are required")
    if _METHOD.value == "sample" and not 0 < _TEMPERATURE.value < float("inf"):
        fail(f"--temperature={_TEMPERATURE.value}: must be > 0 (--method=greedy takes the argmax)")
    if _METHOD.value == "sample" and not _TOP_P.value > 0:
        fail(f"--top_p={_TOP_P.value}: must be in (0, 1]")
    prompt_text = utf8(_PROMPT.value, "--prompt")  # before the model is read
    trained = load_run(argv, _WORKDIR.value, _STEP.value, task=None)
    run = trained.config
    # A task that generates from text lays the prompt out (LmTask, Seq2seqTask: text_prompt).
    laid_out = tasks.get(run.task).text_prompt(run, trained.vocab, prompt_text)
    if laid_out is None:
        hint = tasks.get(run.task).generate_hint
        fail(
            f"{_WORKDIR.value}: task={run.task!r}: {hint}; research.generate continues lm runs "
            "and decodes seq2seq runs trained on text (data.source=jsonl:FILE)"
        )
    ids, tok, bos, eos, pad = laid_out
    if not ids:
        fail("--prompt is empty after tokenization")
    prompt = np.asarray([ids], np.int32)
    try:
        out = generate(
            trained.model,
            prompt,
            max_new_tokens=_MAX_NEW.value,
            method=_METHOD.value,
            key=jax.random.key(_SEED.value),
            bos_id=bos,
            **_options(eos, pad),
        )
    except ValueError as e:  # a prompt longer than the model's positions, for example
        too_long = "max_length" in str(e)
        fail(
            f"{e} (--prompt is {len(ids)} tokens, --max_new_tokens={_MAX_NEW.value}); shorten "
            "one or the other"
            if too_long
            else str(e)
        )
    tokens = out[0][0, 0] if _METHOD.value == "beam" else out[0]
    kept = [int(t) for t in np.asarray(tokens) if int(t) not in (eos, pad)]
    print(tok.decode(kept))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
