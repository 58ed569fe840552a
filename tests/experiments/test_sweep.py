"""A sweep point cached by result.json is reused, and the line logged before it says so."""

import dataclasses
import fnmatch
import json
import pathlib

import pytest

from configs import mqar
from research.experiments import sweep
from research.models.config import CAUSAL_FEATURE_MAPS
from research.train import loop
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


def test_a_point_stopped_after_its_last_step_keeps_its_result(tmp_path, monkeypatch):
    """A point whose last step and final evaluation finished, but whose result.json was not
    written (a SIGTERM during the last step, or a kill after the final save), cached an empty
    result ({"eval": {}}, 0 tokens/s) on the next run. Now: the stopped run's own result is
    saved before the sweep stops, and a run resumed at its end reads its final evaluation back
    from metrics.jsonl, equal to the first run's."""
    pc = mqar.get_config("smoke")
    pc.data.data_dir = str(tmp_path / "data")
    out = tmp_path / "point"
    first = sweep.train_point(pc, out, {"seed": 0})
    assert first["eval"] and first["tokens_per_second"] > 0
    (out / "result.json").unlink()  # killed between the final save and result.json
    again = sweep.train_point(pc, out, {"seed": 0})
    assert again["eval"] == first["eval"]
    assert again["tokens_per_second"] > 0 and (out / "result.json").exists()

    n = pc.num_train_steps
    stopped = loop.Summary(n, n, 1.0, {"accuracy": 0.5}, 10.0, preempted=True, signal="SIGTERM")
    monkeypatch.setattr(loop, "train_and_evaluate", lambda run, workdir, **kw: stopped)
    other = tmp_path / "stopped"
    other.mkdir()  # as the run leaves it
    with pytest.raises(sweep.Preempted, match="after its last step"):
        sweep.train_point(pc, other, {"seed": 0})
    assert json.loads((other / "result.json").read_text())["eval"] == {"accuracy": 0.5}
    # research.main's --start_fresh reaches the point's run (the refusal of a point whose
    # checkpoints are all unreadable advises it; it had no effect on sweeps).
    seen, done = [], dataclasses.replace(stopped, preempted=False, signal="")

    def record(run, workdir, **kw):
        seen.append(kw)
        pathlib.Path(workdir).mkdir()
        return done

    monkeypatch.setattr(loop, "train_and_evaluate", record)
    with sweep.start_fresh(True):
        assert sweep.train_point(pc, tmp_path / "fresh", {"seed": 0})["eval"] == {"accuracy": 0.5}
    sweep.train_point(pc, tmp_path / "plain", {"seed": 0})
    assert seen == [
        {"allow_config_change": False, "start_fresh": True},
        {"allow_config_change": False, "start_fresh": False},
    ]
    partial = dataclasses.replace(stopped, last_step=n - 1)
    monkeypatch.setattr(loop, "train_and_evaluate", lambda run, workdir, **kw: partial)
    with pytest.raises(sweep.Preempted, match=f"at step {n - 1}"):
        sweep.train_point(pc, tmp_path / "partial", {"seed": 0})
    assert not (tmp_path / "partial" / "result.json").exists()


def test_a_partial_point_with_another_config_is_refused(tmp_path, monkeypatch):
    """A point stopped part-way and rerun with a changed learning rate trained on under the new
    rate and was stored as if all of it had (its result.json then matched the new config)."""
    pc = mqar.get_config("smoke")
    pc.data.data_dir = str(tmp_path / "data")
    pc.update(num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=2)
    out = tmp_path / "point"
    reached = iter([False, True])  # a stop after step 2's checkpoint
    monkeypatch.setattr(loop._Preemption, "reached", lambda self: next(reached, True))
    with pytest.raises(sweep.Preempted, match="at step 2"):
        sweep.train_point(pc, out, {"seed": 0})
    monkeypatch.undo()
    pc.optimizer.learning_rate *= 2
    with pytest.raises(ConfigError, match="saved with another config .*learning_rate"):
        sweep.train_point(pc, out, {"seed": 0})
    assert not (out / "result.json").exists()
    # a change that does not alter the training resumes (and finishes)
    pc.optimizer.learning_rate /= 2
    pc.log_every_steps = 1
    assert sweep.train_point(pc, out, {"seed": 0})["eval"]


def _keys(c, prefix=""):
    """Every leaf key of a ConfigDict, dotted."""
    out = []
    for k, v in c.items():
        out += _keys(v, f"{prefix}{k}.") if hasattr(v, "items") else [f"{prefix}{k}"]
    return out


@pytest.mark.parametrize(
    "name", ["compare_attention", "recall", "gelu", "pet", "theseus", "qagen", "exposure_bias"]
)
def test_every_swept_key_exists_and_its_override_is_refused(name):
    """Each experiment's SWEPT patterns name keys its config has (none stale), and an override
    of one is a one-line ConfigError naming the key and what to use instead."""
    import importlib

    from research.experiments import SWEPT

    preset = "zh_smoke" if name == "exposure_bias" else "smoke"  # the preset with a pretraining
    c = importlib.import_module(f"configs.{name}").get_config(preset)
    keys = _keys(c)
    for pattern in SWEPT[name]:
        matched = [k for k in keys if fnmatch.fnmatchcase(k, pattern)]
        assert matched, (name, pattern)
        with pytest.raises(ConfigError, match=rf"^--config\.{matched[0]}: the {name} experiment"):
            sweep.refuse_swept_overrides(name, {"num_train_steps": 1, matched[0]: 0}, SWEPT[name])
    sweep.refuse_swept_overrides(name, {"data_dir": "/d", "seeds": (1,)}, SWEPT[name])


def _sentinel_lost(c, key, module) -> None:
    """Sets key (dotted) on a copy of c to a sentinel of its type; no point config keeps it."""
    section, *path = key.split(".")
    sentinel = c.copy_and_resolve_references()
    sub = sentinel[section]
    for part in path[:-1]:
        sub = sub[part]
    old = sub[path[-1]]
    mark = {str: "sentinel", int: 7, float: 0.7, tuple: ("8:1",)}[type(old)]
    if path[-1] == "feature_map":  # checked for every kind, so a valid one none of them is
        mark = "relu"
    sub[path[-1]] = mark
    points = module.points(sentinel)
    if path[-1] == "feature_map":  # the kinds that read it
        points = [p for p in points if p.attention in CAUSAL_FEATURE_MAPS]
    assert points
    for p in points:
        value = module.point_config(sentinel, p)
        for part in path:
            value = value[part]
        assert value != mark, (key, p)


def test_the_swept_keys_are_the_ones_the_points_overwrite():
    """Against the points' configs themselves: a sentinel set on a SWEPT key of compare_attention
    and recall, or on sweep.point_config's seed and data, never reaches a point; a key left out
    of SWEPT (short_conv, which only the delta kinds reset) does."""
    from configs import compare_attention as ca_config
    from configs import pet as pet_config
    from configs import recall as recall_config
    from research.experiments import compare_attention, pet, recall

    c = ca_config.get_config("smoke")
    for key in ("lm.model.attention", "lm.model.d_model", "lm.model.d_ff",
                "mqar.model.feature_map", "mqar.optimizer.learning_rate"):  # fmt: skip
        assert any(fnmatch.fnmatchcase(key, p) for p in compare_attention.SWEPT), key
        _sentinel_lost(c, key, compare_attention)
    c = recall_config.get_config("smoke")
    for key in recall.SWEPT.keys() - {"mqar.seed"}:  # points() refuses a seed of its own
        _sentinel_lost(c, key, recall)
    kept = c.copy_and_resolve_references()
    kept.mqar.model.short_conv = 2
    assert recall.point_config(kept, recall.points(kept)[0]).model.short_conv == 2  # softmax
    # sweep.point_config (pet, theseus, qagen): seed and data come from the experiment.
    c = pet_config.get_config("smoke")
    c.pet.seed, c.pet.data.seq_len = 7, 7
    assert fnmatch.fnmatchcase("pet.data.seq_len", "pet.data.*") and "pet.seed" in pet.SWEPT
    pc = sweep.point_config(c, c.pet, 3)
    assert pc.seed == 3 and pc.data.seq_len == c.data.seq_len != 7
