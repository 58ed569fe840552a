"""A sweep point cached by result.json is reused, and the line logged before it says so."""

import json

import pytest

from configs import mqar
from research.experiments import sweep
from research.train.config import ConfigError


def _finished_point(out, pc):
    """A run directory as train_point leaves it: result.json holding the run's config."""
    out.mkdir(parents=True)
    result = {
        "point": {"seed": 0},
        "config": pc.to_dict(),
        "eval": {"accuracy": 0.25},
        "tokens_per_second": 123.0,
        "note": "",
    }
    (out / "result.json").write_text(json.dumps(result))
    return result


def test_a_finished_point_is_reused_and_announced_as_such(tmp_path):
    pc = mqar.get_config("smoke")
    out = tmp_path / "runs" / "softmax_seed0"
    assert not sweep.is_finished(out)
    assert sweep.start_message(out, "training softmax seed 0") == (
        f"training softmax seed 0 in {out}"
    )
    saved = _finished_point(out, pc)
    assert sweep.is_finished(out)
    assert sweep.start_message(out, "training softmax seed 0") == (
        f"reusing the finished run in {out}"
    )
    # Nothing trains: the saved result comes back (as JSON holds it: lists for tuples) and the
    # directory is left as it was.
    assert sweep.train_point(pc, out, {"seed": 0}) == json.loads(json.dumps(saved))
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]


def test_a_finished_point_with_another_config_is_refused(tmp_path):
    pc = mqar.get_config("smoke")
    out = tmp_path / "point"
    _finished_point(out, pc)
    pc.num_train_steps += 1
    with pytest.raises(ConfigError, match="different config"):
        sweep.train_point(pc, out, {"seed": 0})
