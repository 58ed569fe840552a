"""research.train.faults and the one-line exits of research.main for faults outside a save."""

import errno
import signal

import numpy as np
import pytest

from research.train import faults


def test_a_full_disk_and_an_exceeded_quota_are_recognised():
    """ENOSPC and EDQUOT (a shared cluster's quota), as Python raises them and as TensorStore
    words them, also inside a cause chain; another OSError is not a full disk."""
    assert faults.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert faults.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    for code in (28, 122):
        ts = ValueError(f"RESOURCE_EXHAUSTED: Error writing file [os_error_code='{code}']")
        assert faults.is_disk_full(ts)
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert faults.is_disk_full(outer)
    assert not faults.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not faults.is_disk_full(ValueError("os_error_code='2'"))


def test_fail_exits_with_its_code_when_stderr_cannot_take_the_line(monkeypatch):
    """On a full disk stderr may be a file on that disk: the exit code still stands."""
    from research import cli

    class FullStderr:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sys.stderr", FullStderr())
    with pytest.raises(SystemExit) as e:
        cli.fail("the disk filled", code=3)
    assert e.value.code == 3


def test_an_ignored_signal_stays_ignored():
    """`nohup` ignores SIGHUP: a run started that way must not stop when the terminal closes.
    The signals the process handles get the loop's flag handler, and restore() puts them back."""
    from research.train.loop import _Preemption

    before = {s: signal.getsignal(s) for s in _Preemption.SIGNALS}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        p = _Preemption()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == p._handle
        p.restore()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_a_full_disk_outside_a_save_is_one_line_and_exit_3(tmp_path, monkeypatch, capsys):
    """An ENOSPC from a write outside Orbax's saves (the lock's holder file, the run files, a
    sweep's result.json) gave a traceback and exit 1."""
    from absl import flags

    import research.main
    from research import cli
    from research.train import loop

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.json"))

    monkeypatch.chdir(research.main.__file__.rsplit("/research/", 1)[0])
    cli.parse_flags(["research.main", "--config=configs/lm.py:smoke", f"--workdir={tmp_path}"])
    try:
        monkeypatch.setattr(loop, "train_and_evaluate", full)
        with pytest.raises(SystemExit) as e:
            research.main.main(["research.main"])
    finally:
        flags.FLAGS.unparse_flags()
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 3 and len(lines) == 1, lines
    assert lines[0].startswith("error: the disk filled (") and "model.json" in lines[0]


def test_a_stop_before_a_scheduled_evaluation_saves_first_and_skips_it(tmp_path, monkeypatch):
    """SIGTERM's grace period is short: a stop seen at an evaluation step saves and stops
    without that evaluation (it ran first, however long it took)."""
    import json

    from configs import mqar
    from research.train import loop
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(num_train_steps=4, eval_every_steps=1, checkpoint_every_steps=4, log_every_steps=1)
    monkeypatch.setattr(loop._Preemption, "reached", lambda self: True)
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert summary.preempted and summary.last_step == 1 and summary.eval == {}
    rows = [json.loads(x) for x in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train"]
    assert (tmp_path / "wd" / "checkpoints" / "1").is_dir()


def test_throughput_is_over_training_steps_alone(tmp_path, monkeypatch):
    """Tokens/s counted the evaluations and the saves between steps (and the first log row read
    0.0): with an evaluation that takes 1 s at every step, the rate is still the steps' own, in
    the summary and in every train row, and a row before any step was timed has no rate."""
    import json
    import time

    from configs import mqar
    from research.train import evaluation, loop
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(num_train_steps=4, eval_every_steps=1, checkpoint_every_steps=2, log_every_steps=1)
    real = evaluation.evaluate

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", slow)
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    per_step = c.batch_size * c.data.seq_len
    # three timed steps of a tiny model (milliseconds each): under the 1 s each evaluation
    # took, so with it counted in no rate could pass
    assert summary.tokens_per_second > per_step / 0.9, summary.tokens_per_second
    rows = [json.loads(x) for x in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and "tokens_per_second" not in train[0]
    assert all(r["tokens_per_second"] > per_step / 0.9 for r in train[1:])
    assert train[-1]["tokens_per_second"] == pytest.approx(summary.tokens_per_second, rel=0.05)


@pytest.mark.parametrize("layout", ["encdec", "unilm"])
def test_tokens_per_second_counts_every_token_a_step_reads(tmp_path, monkeypatch, layout):
    """With a clock that moves 1 s between its readings, every timed step takes 1 s: tokens/s
    is then a step's tokens. An encoder-decoder's step reads the source as well as the target
    (its inputs are the decoder side alone, and the source was left out of the count)."""
    import types

    from configs import seq2seq
    from research.train import loop
    from research.train.config import parse

    c = seq2seq.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.seq2seq.layout = layout
    c.update(num_train_steps=3, eval_every_steps=3, checkpoint_every_steps=3, log_every_steps=3)
    now = iter(range(10**6))  # the loop's clock alone (other threads keep the real one)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(now))))
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    s = c.seq2seq
    width = s.src_len + s.tgt_len  # encdec: src [S] + inputs [T]; unilm: one row of S + T
    assert summary.tokens_per_second == c.batch_size * width


def test_the_model_is_built_in_host_memory(tmp_path, monkeypatch):
    """Built on the default device, a 7B model's fp32 parameters (26 GiB) overflowed one v5e
    chip before FSDP spread them (the planner, which never builds them, said it fits): the
    model and its pretrained weights are made under the host's CPU device, then placed."""
    import jax

    from configs import mqar
    from research import tasks
    from research.train import loop
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(num_train_steps=1, eval_every_steps=1, checkpoint_every_steps=1, log_every_steps=1)
    task = tasks.get("mqar")
    seen = []

    def spying(run, mcfg, *, rngs):
        seen.append(jax.config.jax_default_device)
        return real(run, mcfg, rngs=rngs)

    real = task.build_model
    monkeypatch.setattr(task, "build_model", spying)
    loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert seen == [jax.local_devices(backend="cpu")[0]]


def test_pretrained_weights_are_read_onto_the_models_own_device(mlm_workdir):
    """A pretrained run's weights were restored onto jax.devices()[0] whatever device the model
    was built on: the training loop builds in host memory, and a 7B's weights would have landed
    on the first accelerator. They now go where the model's arrays are (here a second CPU
    device, as a stand-in)."""
    import jax
    from flax import nnx

    from research import tasks
    from research.models import params as params_io
    from research.train import load_trained

    t = load_trained(mlm_workdir)
    other = jax.devices()[1]
    with jax.default_device(other):
        fresh = tasks.get(t.config.task).build_model(t.config, t.model.cfg, rngs=nnx.Rngs(5))
        _, restored = params_io.read_checkpoint(mlm_workdir / "checkpoints", t.step, model=fresh)
    leaves = jax.tree.leaves(nnx.state(restored, nnx.Param))
    assert leaves and all(x.devices() == {other} for x in leaves)
    want = jax.tree.leaves(nnx.state(t.model, nnx.Param))
    assert all(np.array_equal(a, b) for a, b in zip(leaves, want, strict=True))


def test_an_eval_split_smaller_than_one_batch_is_refused_before_training(tmp_path):
    """Found at the first evaluation, it stopped a run after eval_every_steps steps, before its
    first checkpoint when that came later, and again on every rerun."""
    from configs import mqar
    from research.data import DataError
    from research.train import loop
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.data.test_examples = c.batch_size - 1
    with pytest.raises(DataError, match="the eval split is too small for one batch"):
        loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert not (tmp_path / "wd" / "metrics.jsonl").exists()
    assert not list((tmp_path / "wd").glob("checkpoints/*"))


def test_every_step_is_in_a_train_row_across_a_stop_and_the_last_step(tmp_path, monkeypatch):
    """The steps since the last train row were dropped where a signal stopped the run, at a
    last step off the log schedule, and (for a resume after a crash) at a checkpoint off it:
    their row is written there, so the rows' "steps" add up to every step trained, across the
    stop and the resume."""
    import json
    import os
    import signal

    from configs import mqar
    from research.data import shards
    from research.train import loop
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(num_train_steps=7, eval_every_steps=7, checkpoint_every_steps=5, log_every_steps=4)
    real, calls = shards.global_batch, []

    def signalled_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler: save and stop after it
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "global_batch", signalled_at_step_3)
    first = loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert first.preempted and first.last_step == 3
    monkeypatch.undo()
    second = loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert (second.resumed_from, second.last_step) == (3, 7)
    rows = [json.loads(x) for x in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["steps"]) for r in rows if r["split"] == "train"]
    assert train == [(3, 3), (4, 1), (5, 1), (7, 2)]  # 5: a checkpoint off the log schedule


def test_a_checkpoint_whose_config_is_unreadable_resumes_only_when_allowed(tmp_path):
    """Its config could not be compared with the run's, and the run resumed it anyway, even
    where a changed config is refused (allow_config_change=False: sweeps, the CLI's default).
    One whose state is unreadable too falls back to the checkpoint before, as any unreadable
    checkpoint does."""
    from configs import mqar
    from research.config import ConfigError
    from research.train import loop
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(
        num_train_steps=6,
        eval_every_steps=6,
        checkpoint_every_steps=2,
        keep_checkpoints=5,
        log_every_steps=2,
    )
    wd = tmp_path / "wd"
    loop.train_and_evaluate(parse(c), str(wd))
    newest = wd / "checkpoints" / "6"
    (newest / "config" / "metadata").write_text("{not json")
    with pytest.raises(ConfigError, match="checkpoint 6 in .*: its config is unreadable, so it"):
        loop.train_and_evaluate(parse(c), str(wd), allow_config_change=False)
    summary = loop.train_and_evaluate(parse(c), str(wd), allow_config_change=True)
    assert (summary.resumed_from, summary.steps_run) == (6, 0)
    for f in (newest / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])
    summary = loop.train_and_evaluate(parse(c), str(wd), allow_config_change=False)
    assert (summary.resumed_from, summary.last_step) == (4, 6)
    assert (wd / "unreadable_checkpoints" / "6").is_dir()


def test_a_resume_does_not_hold_step_0s_state_beside_the_restored_one(tmp_path, monkeypatch):
    """The state of step 0 was still alive while the checkpoint's was read into new arrays:
    twice the parameters and optimizer state on the devices at every resume."""
    import weakref

    import jax

    from configs import mqar
    from research.train import checkpoint, loop, step
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1)
    loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))

    built, alive_at_restore = [], []
    real_init, real_restore = step.init_state, checkpoint.Checkpointer.restore_latest

    def init_state(*args, **kwargs):
        state = real_init(*args, **kwargs)
        built.extend(weakref.ref(x) for x in jax.tree.leaves(state))
        return state

    def restore_latest(self, *args, **kwargs):
        alive_at_restore.append(sum(r() is not None for r in built))
        return real_restore(self, *args, **kwargs)

    monkeypatch.setattr(step, "init_state", init_state)
    monkeypatch.setattr(checkpoint.Checkpointer, "restore_latest", restore_latest)
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert summary.resumed_from == 2
    assert len(built) > 10 and alive_at_restore == [0]


def test_a_resume_whose_data_gives_another_vocabulary_is_refused(tmp_path):
    """Another data_dir, or a tokenizer trained again there (one shared by two Pythons gave each
    the first one's), meant other tokens for the same ids: the run resumed silently and wrote
    the new vocabulary over its own."""
    from configs import lm
    from research.config import ConfigError
    from research.data import tokenizer
    from research.train import loop
    from research.train.config import parse

    c = lm.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1)
    loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    saved = tmp_path / "wd" / "tokenizer.model"
    ours = saved.read_bytes()
    other = tmp_path / "other"  # a tokenizer trained on other text, of the same size
    other.write_text("\n\n".join(f"zz{i} yy{i * 7} xx{i % 13}" for i in range(3000)))
    tokenizer.train_or_load(lambda: [other.read_text()], str(other) + ".model", vocab_size=384)
    saved.write_bytes((tmp_path / "other.model").read_bytes())
    with pytest.raises(ConfigError, match=r"vocabulary differs from the one this run .* resume"):
        loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert saved.read_bytes() == (tmp_path / "other.model").read_bytes()  # nothing written
    saved.write_bytes(ours)
    # The same tokenizer trained in another data_dir differs in bytes (its model names the
    # directory), not in meaning: resumed.
    c.data.data_dir = str(tmp_path / "data2")
    assert loop.train_and_evaluate(parse(c), str(tmp_path / "wd")).resumed_from == 2


def test_a_failure_while_closing_is_logged_beside_the_first(tmp_path, monkeypatch, caplog):
    """Only the first error was raised: a save that failed to commit while the run was already
    stopping for another reason went unsaid."""
    from configs import mqar
    from research.train import checkpoint, evaluation, loop
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1)

    def broken(*args, **kwargs):
        raise RuntimeError("the evaluation broke")

    def unsaved(self):
        raise RuntimeError("checkpoint 1 did not commit")

    monkeypatch.setattr(evaluation, "evaluate", broken)
    monkeypatch.setattr(checkpoint.Checkpointer, "wait", unsaved)
    with pytest.raises(RuntimeError, match="the evaluation broke"):
        loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert "also, while closing: checkpoint 1 did not commit" in caplog.text


def test_an_evaluation_that_fails_loses_no_training(tmp_path, monkeypatch):
    """A scheduled checkpoint is saved before the evaluation at its step: an evaluation that
    raised there lost every step since the previous checkpoint. The final step is evaluated
    before its save, so a failed final evaluation is rerun on resume, not skipped."""
    from configs import mqar
    from research.train import evaluation, loop
    from research.train.config import parse

    c = mqar.get_config("smoke")
    c.data.data_dir = str(tmp_path / "data")
    c.update(num_train_steps=4, eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1)

    def broken(*args, **kwargs):
        raise RuntimeError("the evaluation broke")

    monkeypatch.setattr(evaluation, "evaluate", broken)
    for _ in range(2):  # step 2, then (resumed from checkpoint 2) the final step 4
        with pytest.raises(RuntimeError, match="the evaluation broke"):
            loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert sorted(p.name for p in (tmp_path / "wd" / "checkpoints").iterdir()) == ["2"]
    monkeypatch.undo()
    summary = loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))
    assert (summary.resumed_from, summary.last_step, summary.steps_run) == (2, 4, 2)
    assert "loss" in summary.eval
