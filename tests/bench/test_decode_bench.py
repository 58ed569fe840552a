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
from research.report import decode_program
from research.sampling import generate

TINY = ["--context", "12", "--tokens", "4", "--d_model", "16", "--heads", "2", "--layers", "1"]


@pytest.mark.parametrize("attention", ["softmax", "gated_deltanet"])
def test_the_timed_loop_decodes_the_samplers_greedy_tokens(attention):
    ns = argparse.Namespace(
        attention=attention, context=12, tokens=4, d_model=16, heads=2, layers=1, vocab=32
    )
    model = DecoderLM(decode.model_config(ns).replace(max_length=17), rngs=nnx.Rngs(0))
    run, inputs = decode_program(model, context=12, steps=4)
    token, _ = run(*inputs)
    prompt = jax.random.randint(jax.random.key(0), (1, 12), 0, 32)  # decode_program's prompt
    want = generate(model, prompt, max_new_tokens=5)  # the prefill's token, then 4 steps
    assert int(token[0]) == int(want[0, -1])


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


def test_bad_arguments_exit_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        decode.main([*TINY, "--heads", "3"])
    assert e.value.code == 2
    assert "d_model" in capsys.readouterr().err.strip().splitlines()[-1]
