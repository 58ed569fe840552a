"""`python -m research.demo` (named in the README) runs at any length >= 2 and its checks hold."""

import re

from research import demo


def test_demo_runs_short_sequences_and_its_figures_hold(capsys):
    for length in (7, 40):  # shorter than the 16 decode steps it compares, and longer
        assert demo.main(["--length", str(length)]) == 0
        out = capsys.readouterr().out
        errors = [float(x) for x in re.findall(r"max \|[^|]+\| = ([0-9.e+-]+)", out)]
        assert len(errors) == 3 and max(errors) < 1e-5, out
        assert f"{min(16, length)} steps of linear_attention_step" in out
        # The GELU tanh coefficient re-derived by the fit matches the published 0.044715.
        coef = float(re.search(r"tanh coefficient ([0-9.]+)", out).group(1))
        assert abs(coef - 0.044715) < 1e-5


def test_demo_rejects_a_too_short_length(capsys):
    assert demo.main(["--length", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --length must be >= 2, got 1"
