"""The Task interface: a new task is one class; the loop and the entry points know no task by
name."""

import json
import pathlib

import numpy as np
import pytest

from configs import lm
from research import tasks
from research.data.shards import array_iterator
from research.models import DecoderLM
from research.tasks import Task, TaskData
from research.train import loop
from research.train.config import parse

ROOT = pathlib.Path(__file__).resolve().parents[2]


# The entry points, each a module or a package of them (research/plan is not listed yet: its
# train.py refuses seq2seq by name until the planner takes abstract batches from the task).
ENTRY_POINTS = (
    "research/main.py",
    "research/generate.py",
    "research/chat.py",
    "research/qagen.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "research/bench").rglob("*.py")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "research/plan").rglob("*.py")),
)


def test_the_loop_and_main_name_no_task():
    loop = ("research/train/loop.py", "research/train/evaluation.py", "research/train/config.py")
    for path in (*loop, *ENTRY_POINTS):
        text = (ROOT / path).read_text()
        for name in tasks.TASKS:
            assert f'"{name}"' not in text and f"'{name}'" not in text, (path, name)


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="task='no_such_task': allowed lm, mqar, seq2seq"):
        tasks.get("no_such_task")


class ReverseTask(Task):
    """A toy task defined outside the package: predict the reversed first half."""

    name = "reverse_test"

    def build_data(self, run):
        rng = np.random.default_rng(run.train.seed)
        n, v = run.data.seq_len, run.data.vocab_size

        def rows(count):
            out = []
            for _ in range(count):
                x = rng.integers(1, v, n // 2).astype(np.int32)
                seq = np.concatenate([x, x[::-1], [0]]).astype(np.int32)[: n + 1]
                w = (np.arange(n) >= n // 2 - 1).astype(np.float32)
                out.append({"inputs": seq[:-1], "targets": seq[1:], "weights": w})
            return out

        train, evaluation = rows(64), rows(16)

        def make(train_split: bool):
            return array_iterator(
                train if train_split else evaluation,
                batch_size=run.train.batch_size,
                seed=run.train.seed,
                train=train_split,
            )

        return TaskData(v, n, make)

    def model_class(self, run):
        return DecoderLM

    def loss_fn(self, run, data):
        return tasks.lm_loss

    def evaluate(self, run, data, eval_model, state, batches):
        model = eval_model(state.params, state.consts)
        local, batch = batches[0]
        return {"rows_seen": float(len(local["inputs"])), "vocab": float(model.cfg.vocab_size)}


def test_a_new_task_plugs_in_without_touching_the_loop(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "reverse_test", ReverseTask())
    c = lm.get_config("smoke")
    c.task = "reverse_test"
    c.data.update(seq_len=8, vocab_size=16)
    c.update(num_train_steps=4, eval_every_steps=4, checkpoint_every_steps=4, batch_size=8)
    summary = loop.train_and_evaluate(parse(c), str(tmp_path))
    assert summary.last_step == 4 and np.isfinite(summary.final_train_loss)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if r["split"] == "eval"][-1]
    assert ev["rows_seen"] == 8 and ev["vocab"] == 16 and 0 <= ev["accuracy"] <= 1
    assert json.loads((tmp_path / "model.json").read_text())["vocab_size"] == 16


def _shapes(batch) -> dict:
    return {k: (tuple(np.shape(v)), np.dtype(v.dtype)) for k, v in batch.items()}


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("mqar", {}),
        ("lm", {}),
        ("lm", {"data.document_boundaries": True}),  # document_ids reach the batches
        ("seq2seq", {"seq2seq.layout": "encdec"}),
        ("seq2seq", {"seq2seq.layout": "unilm", "model.attention": "softmax"}),
    ],
)
def test_the_planners_abstract_batch_and_data_are_a_real_ones_shapes(tmp_path, config, overrides):
    """What research.plan compiles with (Task.abstract_batch, abstract_data) has the shapes and
    dtypes of build_data's batches and the same model length."""
    import importlib

    c = importlib.import_module(f"configs.{config}").get_config("smoke")
    c.data.data_dir = str(tmp_path)
    c.update_from_flattened_dict(overrides)
    run = parse(c)
    task = tasks.get(run.task)
    data, stand_in = task.build_data(run), task.abstract_data(run)
    real = next(data.make_iterator(True))
    abstract = task.abstract_batch(run, run.train.batch_size)
    assert _shapes(abstract) == _shapes(real)
    assert stand_in.max_length == data.max_length
    task.loss_fn(run, stand_in)  # builds without the data
