"""The call-by-call decode benchmark: its loop decodes what the sampler decodes, and it reports one
row per call (the times are reported, not tested)."""

import argparse
import csv

import jax
import numpy as np
import pytest
from flax import nnx

from research.bench import decode
from research.models import DecoderLM
from research.models.config import ATTENTION_NAMES
from research.report import decode_program
from research.sampling import generate

TINY = ["--context", "12", "--tokens", "4", "--d_model", "16", "--heads", "2", "--layers", "1"]


def _args(attention, **kw):
    shape = dict(context=12, tokens=4, d_model=16, heads=2, layers=1, vocab=32)
    return argparse.Namespace(attention=attention, **{**shape, **kw})


@pytest.mark.parametrize("attention", ["softmax", "taylor", "gated_deltanet"])
def test_the_timed_loop_decodes_the_samplers_greedy_tokens(attention):
    model = DecoderLM(
        decode.model_config(_args(attention)).replace(max_length=17), rngs=nnx.Rngs(0)
    )
    # At initialisation every logit row is dominated by the last token's own embedding (tied,
    # N(0, 0.02)), so greedy decoding repeats it; larger weights make the tokens differ.
    nnx.update(model, jax.tree.map(lambda x: 30 * x, nnx.state(model, nnx.Param)))
    prompt = jax.random.randint(jax.random.key(0), (1, 12), 0, 32)  # decode_program's prompt
    want = np.asarray(generate(model, prompt, max_new_tokens=5))[0]  # the prefill's token, 4 more
    assert (want[1:] != want[:-1]).any(), want  # so a loop a step short or long gets caught
    for steps in range(1, 5):
        run, inputs = decode_program(model, context=12, steps=steps)
        token, _ = run(*inputs)
        assert int(token[0]) == want[steps], (steps, want)


@pytest.mark.parametrize("attention", ATTENTION_NAMES)
def test_the_bench_builds_the_comparisons_lm_model(attention):
    """The same ModelConfig as the default comparison's LM point (configs/compare_attention.py),
    at the bench's width, vocabulary and length."""
    from configs import compare_attention as cfg
    from research.experiments import compare_attention as ca
    from research.train.config import parse

    c = cfg.get_config()
    pc = ca.point_config(c, ca.Point("lm", attention, 64, 1e-3, 256))
    want = parse(pc).model.replace(vocab_size=pc.data.vocab_size, max_length=8192 + 64)
    args = _args(attention, context=8192, tokens=64, d_model=64, layers=2, vocab=512)
    assert decode.model_config(args) == want


def test_bench_prints_a_row_per_call_and_writes_csv_and_png(tmp_path, capsys):
    rows = decode.main([*TINY, "--vocab", "32", "--calls", "3", "--out", str(tmp_path)])
    assert [r["call"] for r in rows] == [1, 2, 3]
    assert all(r["ms_per_token"] > 0 and r["cpu_per_wall"] >= 0 for r in rows)
    assert all(
        isinstance(r["voluntary_switches"], int) and r["voluntary_switches"] >= 0 for r in rows
    )
    saved = list(csv.DictReader((tmp_path / "decode_bench.csv").open()))
    np.testing.assert_allclose(
        [float(r["ms_per_token"]) for r in saved], [r["ms_per_token"] for r in rows]
    )
    assert (tmp_path / "decode_bench.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "| call | ms/token | process CPU s / wall s | voluntary context switches |" in out
    assert "3 calls of 4 greedy tokens after 12 tokens of context" in out


def test_bad_arguments_exit_with_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        decode.main([*TINY, "--heads", "3"])
    assert e.value.code == 2
    assert "d_model" in capsys.readouterr().err.strip().splitlines()[-1]
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as e:  # before the run, not after it
        decode.main([*TINY, "--out", str(tmp_path / "file")])
    assert e.value.code == 2
    afile = tmp_path / "file"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f"cannot write results under {afile}: {afile} is not a directory")
