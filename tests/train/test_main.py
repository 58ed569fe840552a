"""The training CLI end to end: smoke, resume, preemption, corrupt checkpoint, NaN, bad config."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from configs import lm as lm_config
from tests.cpu import cpu_env
from tests.once import once
from tests.preemption import sigterm_after_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env():
    return cpu_env(4)


def _cmd(workdir, data_dir, *overrides, config="configs/lm.py:smoke"):
    return [
        sys.executable,
        "-m",
        "research.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *overrides,
    ]


def _run(*args, **kw):
    return subprocess.run(
        _cmd(*args, **kw), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )


def _train_losses(workdir) -> dict[int, float]:
    """step -> loss, asserting that no (step, split) row appears twice in metrics.jsonl."""
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
    keys = [(row["step"], row["split"]) for row in rows]
    assert len(keys) == len(set(keys)), "a step is listed twice in metrics.jsonl"
    return {row["step"]: row["loss"] for row in rows if row["split"] == "train"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 24-step smoke run (its own data directory; data.data_dir is a safe change,
    so the tests resume copies of it with theirs), made once for all xdist workers. Read-only."""

    def build(path):
        r = _run(path / "wd", path / "data", "--config.num_train_steps=24")
        assert r.returncode == 0, r.stderr[-3000:]
        return {"stdout": r.stdout, "stderr": r.stderr}

    path, r = once(tmp_path_factory, "lm-smoke-reference", build)
    return path / "wd", SimpleNamespace(**r)


def test_smoke_run_writes_metrics_checkpoints_and_summary(reference):
    wd, r = reference
    rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["split"] == "train"]
    evals = [x for x in rows if x["split"] == "eval"]
    assert [x["step"] for x in train] == list(range(1, 25))
    assert [x["step"] for x in evals] == [6, 12, 18, 24]
    assert train[-1]["loss"] < train[0]["loss"]  # it learns
    assert all({"step", "split", "loss"} <= x.keys() for x in rows)
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [
        16,
        20,
        24,
    ]  # every 4 steps, newest 3 kept
    assert list((wd / "tensorboard").glob("events.out.tfevents.*"))
    assert "done at step 24" in r.stdout and "tokens/s" in r.stdout
    assert "Traceback" not in r.stderr
    # Its tokenizer is named for this interpreter's library and the builder's version: one
    # data_dir shared by two Pythons (or versions) served both the first one's tokenizer.
    from research.data import builders

    tag = f"py{builders.PYTHON_VERSION}-small-{builders.StdlibCode.VERSION}"
    assert [p.name for p in (wd.parent / "data" / "tokenizers").glob("*.model")] == [
        f"stdlib_code-{tag}-384.model"
    ]


def test_exact_resume_after_sigkill(reference, data_dir, tmp_path):
    ref_losses = _train_losses(reference[0])
    proc = subprocess.Popen(
        _cmd(tmp_path, data_dir, "--config.num_train_steps=24"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 15:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_train_losses(tmp_path))
    assert killed_at < 24, "the run finished before it could be killed"
    r = _run(tmp_path, data_dir, "--config.num_train_steps=24")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step" in r.stdout
    # Bitwise: every step's loss equals the uninterrupted run's, before and after the kill.
    assert _train_losses(tmp_path) == ref_losses


@pytest.mark.parametrize("every", [100000, 1])  # 1: the schedule has just saved the stop step
def test_sigterm_saves_and_exits_zero(data_dir, tmp_path, every):
    cmd = _cmd(
        tmp_path,
        data_dir,
        "--config.num_train_steps=100000",
        f"--config.checkpoint_every_steps={every}",
    )
    code, out, err = sigterm_after_metrics(cmd, tmp_path / "metrics.jsonl", 5, cwd=ROOT, env=_env())
    assert code == 0, err[-3000:]
    assert "stopped by SIGTERM: saved at step" in out
    step = int(out.split("at step ")[1].split()[0])
    assert (tmp_path / "checkpoints" / str(step)).is_dir()
    if every > 1:  # resuming is the same either way; checked once
        r = _run(
            tmp_path, data_dir, f"--config.num_train_steps={step + 2}", "--allow_config_change"
        )
        assert f"resumed from step {step}" in r.stdout


def _truncate_arrays(checkpoint):
    """Cut every array data file of a saved state to 10 bytes (a torn write, a bad disk)."""
    files = [f for f in (checkpoint / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:10])


def _assert_one_line_no_traceback(err: str, *needles):
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip()]
    hits = [x for x in lines if all(n in x for n in needles)]
    assert len(hits) == 1, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert "Event loop is closed" not in err and "'driver'" not in err, err[-3000:]
    return hits[0]


def test_corrupt_latest_checkpoint_falls_back(reference, data_dir, tmp_path):
    """A truncated array file in the newest checkpoint: one line naming it and the step resumed
    from, the bad step moved to unreadable_checkpoints (not overwritten by the resumed run's
    save of the same step), the run's losses exactly the uninterrupted ones, no row twice."""
    shutil.copytree(reference[0], tmp_path / "wd")
    wd = tmp_path / "wd"
    _truncate_arrays(wd / "checkpoints" / "24")
    bad = _files(wd / "checkpoints" / "24")
    r = _run(wd, data_dir, "--config.num_train_steps=24")
    assert r.returncode == 0, r.stderr[-3000:]
    line = _assert_one_line_no_traceback(r.stderr, "checkpoint 24 is unreadable (")
    assert line.endswith(f"; moved to {wd / 'unreadable_checkpoints'}; resuming from 20")
    assert "resumed from step 20" in r.stdout
    assert _files(wd / "unreadable_checkpoints" / "24") == bad  # kept as it was, to inspect
    assert _steps(wd) == [16, 20, 24]  # 24 saved anew by the resumed run
    assert _train_losses(wd) == _train_losses(reference[0])
    replaced = (wd / "metrics.replaced.jsonl").read_text().splitlines()
    assert sorted({json.loads(x)["step"] for x in replaced}) == [21, 22, 23, 24]


def test_on_several_processes_an_unreadable_checkpoint_stops_with_what_to_do(
    reference, data_dir, tmp_path, monkeypatch
):
    """With several processes one cannot fall back alone (the others may have read their part
    and wait in Orbax's collectives: the processes ended at different steps and hung, and the
    one that failed advised --start_fresh, which drops the good checkpoints). The process stops
    with one line naming the checkpoint, the process and the fix; nothing is moved. (Run here in
    one process that believes there are two.)"""
    import types

    import jax

    from research.train import checkpoint, faults, loop
    from research.train.config import parse

    shutil.copytree(reference[0], tmp_path / "wd")
    wd = tmp_path / "wd"
    _truncate_arrays(wd / "checkpoints" / "24")
    before = _files(wd)
    two = types.SimpleNamespace(**{k: getattr(jax, k) for k in dir(jax) if not k.startswith("__")})
    two.process_count = lambda: 2
    monkeypatch.setattr(checkpoint, "jax", two)
    c = lm_config.get_config("smoke")
    c.data.data_dir = str(data_dir)
    c.num_train_steps = 24
    with pytest.raises(faults.UnreadableCheckpoints) as e:
        loop.train_and_evaluate(parse(c), str(wd))
    message = str(e.value)
    assert message.startswith(
        f"checkpoint 24 in {wd / 'checkpoints'} is unreadable on process 0 ("
    ), message
    assert message.endswith(
        f"processes cannot fall back one by one: mkdir -p {wd / 'unreadable_checkpoints'} && "
        f"mv {wd / 'checkpoints' / '24'} {wd / 'unreadable_checkpoints'}/, then rerun to "
        "resume from the checkpoint before it"
    )
    assert "\n" not in message
    after = _files(wd)
    after.pop(pathlib.Path("errors.log"), None)
    assert {k: v for k, v in after.items() if k.parts[0] != "tensorboard"} == {
        k: v for k, v in before.items() if k.parts[0] != "tensorboard"
    }


def test_every_checkpoint_unreadable_is_refused_until_start_fresh(reference, data_dir, tmp_path):
    """No readable checkpoint: refused (exit 2, one line naming the steps and --start_fresh),
    nothing changed; --start_fresh moves them aside and trains from step 0, exactly as a new
    run would (the failed restores must not have moved the data iterator)."""
    shutil.copytree(reference[0], tmp_path / "wd")
    wd = tmp_path / "wd"
    for step in (16, 20, 24):
        _truncate_arrays(wd / "checkpoints" / str(step))
    before = _files(wd)
    r = _run(wd, data_dir, "--config.num_train_steps=24")
    assert r.returncode == 2, r.stderr[-3000:]
    line = _assert_one_line_no_traceback(r.stderr, "error: every checkpoint in")
    assert "checkpoints 24, 20, 16 are unreadable (24: " in line and "--start_fresh" in line
    after = _files(wd)
    noise = after.pop(pathlib.Path("errors.log"))  # the restores' tracebacks, kept aside
    assert b"Traceback" in noise and b"Traceback" not in r.stderr.encode()
    assert after == before  # nothing else written, moved or deleted
    r = _run(wd, data_dir, "--config.num_train_steps=24", "--start_fresh")
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_one_line_no_traceback(r.stderr, "--start_fresh: checkpoints 24, 20, 16 are unreadable")
    assert "done at step 24 (24 steps this run, resumed from 0)" in r.stdout
    assert sorted(p.name for p in (wd / "unreadable_checkpoints").iterdir()) == ["16", "20", "24"]
    assert _train_losses(wd) == _train_losses(reference[0])


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_holder_taken_over(data_dir, tmp_path):
    """While a run holds the workdir, the same command is refused (exit 2, one line naming pid,
    host and start time) and writes nothing; after the holder is SIGKILLed, the next run takes
    the lock over with one line. metrics.jsonl never lists a step twice."""
    import socket

    from tests.preemption import wait_for_lines

    long = ["--config.num_train_steps=100000", "--config.checkpoint_every_steps=100000"]
    first = subprocess.Popen(
        _cmd(tmp_path, data_dir, *long),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_lines(first, tmp_path / "metrics.jsonl", 2)
        assert first.poll() is None
        # Paused, the holder keeps its lock (the kernel's flock) and leaves the CPU to the second.
        os.kill(first.pid, signal.SIGSTOP)
        rows = (tmp_path / "metrics.jsonl").read_text().count("\n")
        r = _run(tmp_path, data_dir, *long)
        assert first.poll() is None  # the holder is still there
    finally:
        first.kill()
        first.wait()
    assert r.returncode == 2
    assert r.stderr.startswith(
        f"error: {tmp_path} is in use by pid {first.pid} on host {socket.gethostname()} since "
    )
    assert r.stderr.count("\n") == 1 and not r.stdout
    written = (tmp_path / "metrics.jsonl").read_text().count("\n")
    assert written == rows  # the refused run wrote none
    r = _run(tmp_path, data_dir, "--config.num_train_steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"taking over the lock of {tmp_path} from pid {first.pid}" in r.stderr
    assert "done at step 4" in r.stdout
    _train_losses(tmp_path)  # no step twice
    assert (tmp_path / "run.lock").read_text() == ""  # a clean exit leaves no holder behind


def test_closed_stdout_and_stderr_still_save_on_schedule_and_on_sigterm(data_dir, tmp_path):
    """`python -m research.main ... | head -n 1`: the reader goes away; the run goes on, saves on
    its schedule and on SIGTERM, and its output continues in WORKDIR/console.log."""
    from tests.preemption import wait_for_lines

    cmd = _cmd(
        tmp_path, data_dir, "--config.num_train_steps=100000", "--config.checkpoint_every_steps=10"
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_lines(proc, tmp_path / "metrics.jsonl", 3)  # training, the bar writing to stderr
    proc.stdout.close()  # both readers gone mid-run: every write now fails with EPIPE
    proc.stderr.close()
    wait_for_lines(proc, tmp_path / "metrics.jsonl", 30)
    assert proc.poll() is None, "the run died when its output was closed"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    console = (tmp_path / "console.log").read_text()
    assert "was closed (Broken pipe); its output continues here" in console
    step = int(console.split("stopped by SIGTERM: saved at step ")[1].split()[0])
    saved = _steps(tmp_path)
    assert step in saved  # the signal's save
    assert [s for s in saved if s < step] == [s for s in saved if s < step and s % 10 == 0] != []


@pytest.fixture
def small_disk(tmp_path):
    """A 1,400 KiB tmpfs (room for two smoke checkpoints, not three); grow(size) frees space."""
    fs = tmp_path / "fs"
    fs.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(fs)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mount.stderr.strip()}")

    def grow(size="64m"):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(fs)], check=True)

    try:
        yield fs, grow
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def test_disk_full_while_saving_is_one_line_and_the_rerun_resumes(data_dir, small_disk):
    """The third checkpoint does not fit: exit 3, one line naming the step and the intact ones,
    no traceback, no half-written step or metrics row left; after space is freed the same
    command resumes from the last intact step and lists no step twice."""
    fs, grow = small_disk
    wd = fs / "wd"
    args = ("--config.num_train_steps=40", "--config.checkpoint_every_steps=10")
    r = _run(wd, data_dir, *args)
    assert r.returncode == 3, r.stderr[-3000:]
    line = _assert_one_line_no_traceback(r.stderr, "error: no space left on device while")
    m = re.fullmatch(
        rf"error: no space left on device while saving step (\d+) in "
        rf"{re.escape(str(wd / 'checkpoints'))}; (steps? [\d, ]+ (?:is|are) intact|"
        "no checkpoint was saved yet); free space and rerun the same command to "
        "resume",
        line,
    )
    assert m, line
    # How many saves fit depends on what else the run wrote first; the line must say which.
    intact = [int(x) for x in re.findall(r"\d+", m.group(2))]
    assert all(s % 10 == 0 for s in intact) and int(m.group(1)) == (intact or [0])[-1] + 10
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir()) == intact  # no tmp left
    assert (wd / "metrics.jsonl").read_text().endswith("\n")  # no half row
    _train_losses(wd)
    grow()
    r = _run(wd, data_dir, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = intact[-1] if intact else 0
    assert f"done at step 40 ({40 - resumed} steps this run, resumed from {resumed})" in r.stdout
    assert sorted(_train_losses(wd)) == list(range(1, 41))


def test_sighup_saves_and_stops_like_sigterm(data_dir, tmp_path):
    from tests.preemption import signal_after_metrics

    cmd = _cmd(
        tmp_path,
        data_dir,
        "--config.num_train_steps=100000",
        "--config.checkpoint_every_steps=100000",
    )
    code, out, err = signal_after_metrics(
        cmd, tmp_path / "metrics.jsonl", 3, signal.SIGHUP, cwd=ROOT, env=_env()
    )
    assert code == 0, err[-3000:]
    step = int(out.split("stopped by SIGHUP (terminal closed): saved at step ")[1].split()[0])
    assert _steps(tmp_path) == [step]


def test_non_finite_loss_stops_and_saves_nothing_bad(data_dir, tmp_path):
    r = _run(
        tmp_path,
        data_dir,
        "--config.optimizer.learning_rate=1e30",
        "--config.optimizer.grad_clip=0.0",
        "--config.num_train_steps=24",
    )
    assert r.returncode == 1
    msg = r.stderr.strip().splitlines()[-1]
    assert msg.startswith("error: non-finite train loss") and " at step " in msg
    bad_step = int(msg.split(" at step ")[1].split(";")[0])
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert all(s < bad_step for s in saved)


def test_an_update_that_overflows_the_parameters_is_never_saved(data_dir, tmp_path):
    """A step whose loss is finite but whose update overflows the parameters (learning rate
    1e39 > float32's max) stops the run there: that state is not checkpointed (it was, and the
    next step's non-finite loss came too late), and every saved checkpoint is finite."""
    from research.train import loop
    from research.train.config import parse

    c = lm_config.get_config("smoke")
    c.data.data_dir = str(data_dir)
    c.optimizer.update(learning_rate=1e39, warmup_steps=0, grad_clip=0.0)
    c.update(num_train_steps=4, checkpoint_every_steps=1)
    with pytest.raises(loop.NonFiniteLoss) as e:
        loop.train_and_evaluate(parse(c), str(tmp_path))
    assert str(e.value).startswith("non-finite parameters after step 1's update (loss ")
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_a_train_row_is_the_mean_over_its_steps_and_says_how_many(data_dir, tmp_path):
    """grad_norm in a row is the mean over the row's steps (it was their sum: 50x at the
    default log_every_steps), loss the token-weighted mean, "steps" their count: a run logging
    every 4 steps against the same run logging every step."""
    from research.train import loop
    from research.train.config import parse

    rows = {}
    for every in (1, 4):
        c = lm_config.get_config("smoke")
        c.data.data_dir = str(data_dir)
        c.update(num_train_steps=8, log_every_steps=every, eval_every_steps=8)
        wd = tmp_path / str(every)
        loop.train_and_evaluate(parse(c), str(wd))
        lines = (wd / "metrics.jsonl").read_text().splitlines()
        rows[every] = [r for r in map(json.loads, lines) if r["split"] == "train"]
    one, four = rows[1], rows[4]
    assert [r["steps"] for r in one] == [1] * 8 and [r["steps"] for r in four] == [4, 4]
    for i, row in enumerate(four):
        part = one[4 * i : 4 * i + 4]
        assert row["grad_norm"] == pytest.approx(np.mean([r["grad_norm"] for r in part]), rel=1e-5)
        loss = sum(r["loss"] * r["tokens"] for r in part) / sum(r["tokens"] for r in part)
        assert row["loss"] == pytest.approx(loss, rel=1e-5)


def test_mqar_config_smoke(data_dir, tmp_path):
    r = _run(tmp_path, data_dir, config="configs/mqar.py:smoke")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in rows if x["split"] == "eval"]
    assert [x["step"] for x in evals] == [4, 8] and 0.0 <= evals[-1]["accuracy"] <= 1.0
    # Only query positions carry weight: 4 key-value pairs x 16 sequences per train batch.
    assert all(x["tokens"] == 64 for x in rows if x["split"] == "train")


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.batch_size=0", "error: batch_size=0: must be a positive int"),
        ("--config.data.source=text:/no/such/file", "error: data.source=text:/no/such/file"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(data_dir, tmp_path, override, message):
    """The command's end: exit code 2 and one line, no traceback (a config check, data that
    cannot be read; a flag that names no key: tests/test_cli.py). The config checks' messages:
    below, in-process."""
    r = _run(tmp_path, data_dir, override)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("batch_size", 0, "batch_size=0: must be a positive int"),
        ("model.attention", "flash", "model: attention='flash' is not allowed"),
        ("model.d_model", 31, "model: d_model (31) must be divisible by num_heads"),
        ("mesh.data", 3, "mesh: mesh {'data': 3, 'fsdp': 1, 'tensor': 1} needs 3"),
        ("optimizer.schedule", "step", "optimizer.schedule='step': allowed cosine"),
        ("model.attention", "linformer", "model.attention='linformer' cannot be"),
        ("model.remat", "everything", "model: remat='everything' is not allowed"),
        ("batch_size", 6, "batch_size=6 is not divisible by mesh data x fsdp"),
        (
            "model.softmax_implementation",
            "cudnn",
            "model.softmax_implementation: softmax implementation 'cudnn' needs a GPU",
        ),
        ("data.shards", 3, "batch_size=8 must be divisible by data.shards=3"),
        ("data.seq_len", 8192, "data.seq_len=8192 with model.softmax_implementati"),
    ],
)
def test_bad_config_is_a_one_line_config_error(key, value, message):
    """What research.main prints after "error: " for a bad --config.KEY=VALUE: the config check's
    one-line ConfigError, on the 4 CPU devices the command above runs with."""
    from configs import lm
    from research.train.config import ConfigError, parse

    c = lm.get_config("smoke")
    c.update_from_flattened_dict({key: value})
    with pytest.raises(ConfigError) as e:
        parse(c, num_devices=4, platform="cpu")
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_a_tensor_axis_that_does_not_divide_what_it_splits_is_a_config_error(data_dir, tmp_path):
    """Over mesh.tensor=4, a vocabulary of 385 tokens, 6 heads or d_ff 66 would be replicated
    on every device (for the heads, head_dim split instead) without a word: one line, checked on
    the model the run builds (a pretrained init's sizes, the tokenizer's vocabulary), before
    anything compiles; tensor=2 divides the smoke model."""
    import jax

    from configs import lm
    from research.models import ModelConfig
    from research.train import loop, sharding
    from research.train.config import ConfigError, parse

    mesh = sharding.make_mesh({"data": 1, "tensor": 4}, jax.devices()[:4])
    base = dict(vocab_size=384, d_model=32, num_heads=4, num_layers=1, d_ff=64, max_length=8)
    for change, message in (
        ({"vocab_size": 385}, "the vocabulary's 385 tokens is not divisible by mesh.tensor=4; "
         "the embeddings and logits would be replicated (pad the vocabulary to a multiple)"),
        ({"num_heads": 6, "d_model": 48}, "model.num_heads=6 is not divisible by mesh.tensor=4; "
         "head_dim would take the axis"),
        ({"d_ff": 66}, "model.d_ff=66 is not divisible by mesh.tensor=4; the feed-forward would "
         "be replicated"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as e:
            sharding.check_tensor_axis(ModelConfig(**{**base, **change}), mesh)
        assert str(e.value) == message
    sharding.check_tensor_axis(ModelConfig(**base), mesh)
    # The loop checks the model it built, before compiling: the smoke LM's 2 heads over 4.
    c = lm.get_config("smoke")
    c.data.data_dir = str(data_dir)
    c.mesh.update(data=-1, tensor=4)
    with pytest.raises(ConfigError, match="model.num_heads=2 is not divisible by mesh.tensor=4"):
        loop.train_and_evaluate(parse(c), str(tmp_path / "wd"))


def test_a_batch_shard_across_processes_is_a_config_error():
    """Two processes of 2 devices with mesh.tensor=4: every device would hold the whole batch
    while each process fed its own half (the run trained on a wrong, half-size batch, exit 0).
    Refused in one line; tensor=2 within each process is fine."""
    from configs import lm
    from research.train.config import ConfigError, _check_devices, parse

    c = lm.get_config("smoke")
    run = parse(c, num_devices=4, platform="cpu")
    for tensor, ok in ((2, True), (4, False)):
        mesh = run.mesh.__class__(data=-1, fsdp=1, tensor=tensor)
        if ok:
            _check_devices(run.train, mesh, run.data, 4, processes=2)
            continue
        with pytest.raises(ConfigError) as e:
            _check_devices(run.train, mesh, run.data, 4, processes=2)
        assert str(e.value) == (
            "mesh data x fsdp = 1 x 1 is not a multiple of the process count (2): each process "
            "feeds its own rows, so every batch shard's devices must be in one process; keep "
            "mesh.tensor within a process's 2 devices"
        )


def test_cudnn_softmax_with_packed_documents_is_a_config_error():
    """jax.nn.dot_product_attention takes no segment ids: refused when the config is parsed (as
    on a GPU), naming the implementations that separate documents; fine without packing."""
    from configs import lm
    from research.train.config import ConfigError, parse

    c = lm.get_config("smoke")
    c.update_from_flattened_dict({"model.softmax_implementation": "cudnn"})
    # jax's cuDNN attention takes 16-bit inputs only (it failed while tracing, on the GPU)
    with pytest.raises(ConfigError, match=r"^model.softmax_implementation='cudnn' needs model"):
        parse(c, num_devices=4, platform="gpu")
    c.model.dtype = "bfloat16"
    parse(c, num_devices=4, platform="gpu")
    c.data.document_boundaries = True
    with pytest.raises(ConfigError) as e:
        parse(c, num_devices=4, platform="gpu")
    assert str(e.value).startswith("model.softmax_implementation='cudnn' cannot separate packed")
    assert "'blockwise'" in str(e.value) and "\n" not in str(e.value)


def test_non_causal_feature_map_is_a_config_error():
    from configs import lm
    from research.train.config import ConfigError
    from research.train.config import parse as validate

    c = lm.get_config("smoke")
    c.model.update(attention="linear", feature_map="softmax")
    with pytest.raises(ConfigError, match=r"model.feature_map='softmax' \(Efficient Attention\)"):
        validate(c)
    c.model.feature_map = "elu"
    validate(c)


def test_missing_config_file_and_unusable_workdir_are_one_line_errors(
    tmp_path, monkeypatch, capsys
):
    """A missing config file, with an override (it then fails while absl parses the flags, which
    the override needs a process of its own for) and without; a --workdir that is a file or lies
    under one. The command's exit code: the first case; the others' lines in-process."""
    from absl import flags, logging

    from research import cli
    from research import main as entry

    verbosity = logging.get_verbosity()

    missing = ["--config=configs/no_such_config.py", f"--workdir={tmp_path / 'w'}"]
    r = subprocess.run(
        [sys.executable, "-m", "research.main", *missing, "--config.batch_size=4"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    prefix = "error: --config: [Errno 2] No such file or directory: 'configs/"
    assert r.stderr.strip().splitlines()[-1].startswith(prefix)
    monkeypatch.chdir(ROOT)
    try:  # without an override the error is deferred to the config's first use
        cli.parse_flags(["research.main", *missing])
        with pytest.raises(SystemExit) as e:
            cli.loaded_config(entry._CONFIG)
    finally:
        flags.FLAGS.unparse_flags()
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith(prefix), lines
    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    for workdir, message in [
        (a_file, "exists and is not a directory"),
        (a_file / "sub", f"{a_file} is not a directory"),
    ]:
        try:  # the command's main(), which checks --workdir before anything else starts
            cli.parse_flags(
                ["research.main", "--config=configs/lm.py:smoke", f"--workdir={workdir}"]
            )
            with pytest.raises(SystemExit) as e:
                entry.main(["research.main"])
        finally:
            flags.FLAGS.unparse_flags()
            logging.set_verbosity(verbosity)  # main() sets absl logging to WARNING
        assert e.value.code == 2
        assert capsys.readouterr().err == f"error: --workdir={workdir}: {message}\n"
    assert a_file.read_text() == "kept"


def test_resuming_with_a_differently_shaped_model_is_refused(reference, data_dir, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(reference[0], wd)
    before = {p.relative_to(wd): p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    r = _run(wd, data_dir, "--config.num_train_steps=28", "--config.model.d_model=64")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint 24 in {wd}/checkpoints was saved by a different model or optimizer "
        "(params/embed/token/embedding: saved (384, 32), this config (384, 64)); use another "
        "--workdir, or the config that wrote it"
    )
    after = {p.relative_to(wd): p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    assert after == before  # nothing saved, nothing deleted


def test_load_trained_restores_the_checkpoint_parameters(reference):
    """load_trained (parameters only, partial Orbax restore) equals the whole saved state read
    back by Orbax without any target, at the newest step and at an older one."""
    import numpy as np
    import orbax.checkpoint as ocp
    from flax import nnx

    from research.train import load_trained

    wd = reference[0]
    for step in (None, 20):
        t = load_trained(wd, step=step)
        assert t.step == (24 if step is None else 20) and t.config.task == "lm"
        assert type(t.model).__name__ == "DecoderLM" and t.vocab.vocab_size() == 384
        saved = ocp.StandardCheckpointer().restore(wd / "checkpoints" / str(t.step) / "state")
        got = _flat(nnx.to_pure_dict(nnx.state(t.model, nnx.Param)))
        want = _flat(saved["params"])  # Orbax keeps list indices as strings: compare by path
        assert got.keys() == want.keys() and len(got) > 10
        for k in got:
            np.testing.assert_array_equal(got[k], want[k])


def test_reading_a_checkpoint_into_another_shape_names_it_before_any_read(reference):
    """The checkpoint's parameters into a model of another d_ff: one ValueError naming the first
    parameter that differs and both shapes, and no read left behind. (Orbax's own check failed
    mid-restore, with an unnamed "Requested shape: (80,) ...", and dropped the reads it had
    started: 29 unraisable exceptions here, 34 in one suite run.)"""
    import dataclasses
    import gc

    from flax import nnx

    from research import tasks
    from research.models import params as params_io
    from research.train import load_trained

    wd = reference[0]
    t = load_trained(wd)
    mcfg = dataclasses.replace(t.model.cfg, d_ff=t.model.cfg.d_ff + 16)
    other = tasks.get(t.config.task).build_model(t.config, mcfg, rngs=nnx.Rngs(0))
    seen, hook = [], sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with pytest.raises(ValueError) as e:
            params_io.read_checkpoint(wd / "checkpoints", 24, model=other)
        gc.collect()
        time.sleep(0.5)  # a late read's callback would land here
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert str(e.value) == "params/layers/0/ffn/wi/bias: saved (64,), this model (80,)"
    assert seen == []


def _flat(tree) -> dict:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): x for path, x in leaves}


def test_generate_cli_continues_a_prompt_from_a_copied_workdir(reference, tmp_path):
    """The workdir alone (tokenizer and model.json inside it) is enough: a copy elsewhere
    decodes, and the CLI prints what models.generate gives on the loaded model."""
    import numpy as np

    from research.sampling import generate
    from research.train import load_trained

    copy = tmp_path / "copied"
    shutil.copytree(reference[0], copy)
    prompt = "def f(x):"
    cmd = [
        sys.executable,
        "-m",
        "research.generate",
        f"--workdir={copy}",
        f"--prompt={prompt}",
        "--max_new_tokens=8",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    t = load_trained(copy)
    ids = np.asarray([t.vocab.encode(prompt)], np.int32)
    out = generate(t.model, ids, max_new_tokens=8, stop_tokens=(3,), pad_id=0)
    expected = t.vocab.decode([int(i) for i in np.asarray(out[0]) if int(i) not in (0, 3)])
    assert r.stdout == expected + "\n"
    for args, message in [
        ([f"--workdir={tmp_path / 'none'}", "--prompt=x"], "does not exist"),
        ([f"--workdir={copy}", "--prompt=x", "--step=5"], "step=5: "),
    ]:
        bad = subprocess.run(
            [sys.executable, "-m", "research.generate", *args],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        assert message in bad.stderr.strip().splitlines()[-1]


def _steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _files(workdir) -> dict:
    return {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}


def test_ctrl_c_saves_stops_and_resumes(data_dir, tmp_path):
    """Ctrl-C is a preemption: save at the end of the step, one line, exit 0; no evaluation ran
    yet, so the summary says so (no nan); the only checkpoint is the one Ctrl-C asked for."""
    from tests.preemption import signal_after_metrics

    long = [
        "--config.num_train_steps=100000",
        "--config.eval_every_steps=100000",
        "--config.checkpoint_every_steps=100000",
    ]
    cmd = _cmd(tmp_path, data_dir, *long)
    code, out, err = signal_after_metrics(
        cmd, tmp_path / "metrics.jsonl", 5, signal.SIGINT, cwd=ROOT, env=_env()
    )
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted (Ctrl-C): saved at step "), out
    assert "no evaluation ran" in last and "nan" not in last
    step = int(last.split("at step ")[1].split()[0])
    assert _steps(tmp_path) == [step]
    r = _run(
        tmp_path,
        data_dir,
        *long[1:],
        f"--config.num_train_steps={step + 2}",
        "--allow_config_change",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from step {step} in {tmp_path}" in r.stdout
    assert (
        f"config changed since checkpoint {step}: num_train_steps 100000 -> {step + 2}" in r.stdout
    )
    assert f"done at step {step + 2} (2 steps this run, resumed from {step})" in r.stdout


def test_a_data_state_of_other_shards_is_refused_not_skipped(reference, data_dir, tmp_path):
    """With --allow_config_change a different data.shards still cannot take the saved iterator
    state: one line, exit 2, nothing written (never a silent fresh start)."""
    wd = tmp_path / "wd"
    shutil.copytree(reference[0], wd)
    before = _files(wd)
    r = _run(wd, data_dir, "--config.data.shards=2", "--allow_config_change")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: checkpoint 24 in {wd}/checkpoints: the saved data state has "
        "1 logical shards, this run 2"
    ), last
    assert _files(wd) == before


def test_configs_saved_before_a_new_default_are_unchanged():
    from research.train.loop import config_changes

    assert config_changes({"data": {"shards": 0}}, {"data": {"shards": 1}}) == {}
    assert config_changes({"data": {"shards": 0}}, {"data": {"shards": 2}}) == {
        "data.shards": (0, 2)
    }
    # Saved before model.scan_layers existed: unrolled, the default.
    assert config_changes({"model": {}}, {"model": {"scan_layers": False}}) == {}
    assert config_changes({"model": {}}, {"model": {"scan_layers": True}}) == {
        "model.scan_layers": ("absent", True)
    }
    # Any key added later reads as its declared default in a run saved without it.
    assert config_changes({"data": {}}, {"data": {"document_boundaries": False}}) == {}
    assert config_changes({"model": {}}, {"model": {"qkv_conv": 4, "gla_gate_rank": 16}}) == {}
    assert config_changes({"data": {}}, {"data": {"mqar_variant": "zoology"}}) == {
        "data.mqar_variant": ("absent", "zoology")
    }


def test_resuming_with_a_changed_config(reference, data_dir, tmp_path):
    """A change that alters the training is refused (exit 2, one line naming it, nothing
    written); a schedule-only change resumes and is reported."""
    wd = tmp_path / "wd"
    shutil.copytree(reference[0], wd)
    before = _files(wd)
    r = _run(wd, data_dir, "--config.num_train_steps=80", "--config.optimizer.learning_rate=0.01")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint 24 in {wd}/checkpoints was saved with another config "
        "(num_train_steps 24 -> 80, optimizer.learning_rate 0.003 -> 0.01), which changes the "
        "training; use the config that wrote it, another --workdir, or --allow_config_change "
        "to resume anyway"
    )
    assert _files(wd) == before  # nothing saved, nothing deleted
    same_data = reference[0].parent / "data"  # the reference's: only the schedule changes
    r = _run(wd, same_data, "--config.num_train_steps=24", "--config.eval_every_steps=3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from step 24" in r.stdout
    assert "config changed since checkpoint 24: eval_every_steps 6 -> 3" in r.stdout
    assert "done at step 24 (0 steps this run, resumed from 24); no evaluation ran" in r.stdout


def test_safe_config_changes():
    from research.train.loop import _is_safe, config_changes

    saved = {
        "num_train_steps": 300,
        "mesh": {"data": -1, "fsdp": 1},
        "data": {"shards": 0},
        "model": {"kinds": ["a", "b"]},
    }
    new = {
        "num_train_steps": 300,
        "mesh": {"data": 2, "fsdp": 2},
        "data": {"shards": 2},
        "model": {"kinds": ("a", "b")},
        "eval_steps": 4,
    }
    changes = config_changes(saved, new)  # a tuple equals its JSON list
    assert changes == {
        "data.shards": (0, 2),
        "eval_steps": ("absent", 4),
        "mesh.data": (-1, 2),
        "mesh.fsdp": (1, 2),
    }
    assert [k for k in changes if not _is_safe(k)] == ["data.shards"]


def test_summary_without_evaluation_says_so():
    from research.main import summary_line
    from research.train.loop import Summary

    line = summary_line(Summary(5, 5, 5.25, {}, 300.0, preempted=True, signal="SIGINT"))
    assert line == (
        "interrupted (Ctrl-C): saved at step 5 (5 steps this run, resumed from 0); "
        "train loss 5.2500; no evaluation ran; 300 tokens/s"
    )
    ev = {"loss": 5.0, "accuracy": 0.5, "perplexity": 148.41, "tokens": 8.0}
    assert "eval loss 5.0000, accuracy 0.5000, perplexity 148.41;" in summary_line(
        Summary(12, 12, 5.1, ev, 300.0)
    )
    per_source = {**ev, "accuracy/daily": 0.25, "accuracy/inews": 0.125}
    assert "accuracy 0.5000 (daily 0.2500, inews 0.1250), perplexity" in summary_line(
        Summary(12, 12, 5.1, per_source, 300.0)
    )
    hup = summary_line(
        Summary(1, 8, 5.1, {}, 300.0, preempted=True, resumed_from=7, signal="SIGHUP")
    )
    assert hup.startswith("stopped by SIGHUP (terminal closed): saved at step 8 (1 step this run")
    other = summary_line(Summary(1, 8, 5.1, {}, 300.0, preempted=True))
    assert other.startswith("stopped (another process was signalled): saved at step 8")
    # a signal during the last step's evaluation or save: the run finished, nothing to resume
    late = Summary(1, 8, 5.1, {}, 300.0, preempted=True, signal="SIGTERM")
    assert summary_line(late, total_steps=8).startswith(
        "done at step 8, SIGTERM after its last step (1 step this run"
    )
    assert summary_line(late, total_steps=9).startswith("stopped by SIGTERM: saved at step 8")


def test_a_classifier_summary_shows_accuracy_and_examples_per_second():
    """Perplexity and tokens/s mean nothing for a classifier: accuracy and rows per second."""
    from research import tasks
    from research.main import summary_line
    from research.train.loop import Summary

    assert not tasks.get("classify").predicts_tokens and tasks.get("lm").predicts_tokens
    ev = {"loss": 0.5, "accuracy": 0.75, "perplexity": 1.65, "tokens": 8.0}
    line = summary_line(Summary(3, 3, 0.6, ev, 900.0, examples_per_second=7.5), tokens=False)
    assert line == (
        "done at step 3 (3 steps this run, resumed from 0); train loss 0.6000; "
        "eval loss 0.5000, accuracy 0.7500; 7.5 examples/s"
    )


def test_checkpoints_only_where_the_schedule_asks(data_dir, tmp_path):
    """No step-1 checkpoint (Orbax's initial save): exactly every 4 steps, and the last step
    although it is not a multiple of 4 (ceil(14 / 4) = 4 saves, what PET's selection counts)."""
    r = _run(
        tmp_path,
        data_dir,
        "--config.num_train_steps=14",
        "--config.checkpoint_every_steps=4",
        "--config.keep_checkpoints=10",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert _steps(tmp_path) == [4, 8, 12, 14]


def test_scanned_layers_train_resume_exactly_and_decode(data_dir, tmp_path):
    """A model.scan_layers run checkpoints stacked layers, resumes bitwise from an older
    checkpoint, loads for decoding, and refuses to resume as unrolled (one line, exit 2, the
    checkpoint untouched)."""
    import jax.numpy as jnp
    import numpy as np

    from research.sampling import generate
    from research.train import load_trained

    scan = "--config.model.scan_layers=True"
    r = _run(tmp_path, data_dir, "--config.num_train_steps=12", scan)
    assert r.returncode == 0, r.stderr[-3000:]
    first = _train_losses(tmp_path)
    assert _steps(tmp_path) == [4, 8, 12]
    shutil.rmtree(tmp_path / "checkpoints" / "12")  # as if preempted after step 8's save
    r = _run(tmp_path, data_dir, "--config.num_train_steps=12", scan)
    assert r.returncode == 0 and "resumed from step 8" in r.stdout, r.stderr[-3000:]
    assert _train_losses(tmp_path) == first  # steps 9-12 again, bit for bit
    t = load_trained(tmp_path, scan_layers=None)  # as trained
    assert t.model.cfg.scan_layers and t.model.layers.attn.q.kernel.get_value().shape[0] == 2
    ids = np.asarray([t.vocab.encode("def f(x):")], np.int32)
    out = generate(t.model, ids, max_new_tokens=4, stop_tokens=(3,), pad_id=0)
    assert np.asarray(out).shape == (1, 4)
    # By default unrolled for decoding: the same parameters, so the same tokens.
    unrolled = load_trained(tmp_path).model
    assert not unrolled.cfg.scan_layers and len(unrolled.layers) == 2
    again = generate(unrolled, ids, max_new_tokens=4, stop_tokens=(3,), pad_id=0)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))
    logits = [m(jnp.asarray(ids)) for m in (t.model, unrolled)]
    np.testing.assert_allclose(*logits, rtol=1e-6, atol=1e-6)
    before = _files(tmp_path)
    bad = _run(tmp_path, data_dir, "--config.num_train_steps=14", "--allow_config_change")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint 12 in {tmp_path}/checkpoints was saved by a different model or "
        "optimizer (params/layers/0/attn/k/bias: saved absent, this config (32,)); it holds "
        "stacked layers: resume it with model.scan_layers=True; use another --workdir, or the "
        "config that wrote it"
    )
    assert _files(tmp_path) == before


def test_evaluation_stops_on_every_process_when_one_runs_out():
    from research.train.evaluation import batches_everywhere

    # One process alone: up to the limit, or to the end of its batches.
    assert list(batches_everywhere(iter(range(5)), 3)) == [0, 1, 2]
    assert list(batches_everywhere(iter(range(2)), 3)) == [0, 1]
    # Another process holds 2 batches: this one stops after 2 too, though it has 5.
    other = iter([True, True, False])
    got = list(batches_everywhere(iter(range(5)), 10, all_have=lambda have: have and next(other)))
    assert got == [0, 1]


def test_evaluation_reads_the_first_eval_steps_batches_and_says_when_the_split_holds_fewer(caplog):
    """evaluate's loss is the token-weighted mean over the batches it read (NumPy), "batches"
    counts them, and a split shorter than eval_steps is read whole with one warning."""
    import jax

    from research.train.evaluation import evaluate

    rng = np.random.default_rng(0)
    split = [
        {"loss": rng.uniform(0, 3, (2, 4)).astype(np.float32), "w": rng.integers(0, 2, (2, 4))}
        for _ in range(3)
    ]
    split = [{k: v.astype(np.float32) for k, v in b.items()} for b in split]

    def eval_step(state, batch):
        return {
            "loss_sum": (batch["loss"] * batch["w"]).sum(),
            "weight_sum": batch["w"].sum(),
        }

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for eval_steps, read in ((2, 2), (5, 3)):
        caplog.clear()
        got = evaluate(
            eval_step,
            None,
            lambda train: iter(split),
            eval_steps,
            sharding,
            lambda state, pairs: {},
        )
        used = split[:read]
        want = sum((b["loss"] * b["w"]).sum() for b in used) / sum(b["w"].sum() for b in used)
        assert got["batches"] == read and got["loss"] == pytest.approx(want, rel=1e-6)
        warned = [r for r in caplog.records if "fewer than eval_steps" in r.getMessage()]
        assert len(warned) == (read < eval_steps)


def test_a_run_trained_with_accelerator_kernels_loads_with_the_xla_forms_here(reference, tmp_path):
    """A workdir whose model.json names cuDNN's softmax (trained on a GPU) loads on this CPU
    with the XLA form: the same logits as the run's own model. runnable_here maps the TPU flash
    kernel (blockwise from 8k positions) and the Pallas linear kernels likewise."""
    import numpy as np

    from research.models.config import runnable_here
    from research.train import load_trained

    want = load_trained(reference[0])
    ids = np.asarray([want.vocab.encode("def f(x): return x")], np.int32)
    copy = tmp_path / "gpu_run"
    shutil.copytree(reference[0], copy)
    saved = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**saved, "softmax_implementation": "cudnn"}))
    got = load_trained(copy)
    assert got.model.cfg.softmax_implementation == "xla"
    np.testing.assert_array_equal(got.model(ids), want.model(ids))
    long = runnable_here(
        want.model.cfg.replace(softmax_implementation="tpu_flash", max_length=8192)
    )
    assert long.softmax_implementation == "blockwise"  # no dense 8k x 8k scores
    gla = runnable_here(want.model.cfg.replace(attention="gla", linear_implementation="pallas"))
    assert gla.linear_implementation == "xla"


def test_relative_and_tilde_workdirs_train_save_and_decode_in_one_place(data_dir, tmp_path):
    """--workdir=rel/run from another directory trains, saves (Orbax wants absolute paths: the
    first save crashed) and decodes with research.generate from there; --workdir=~/run puts
    the lock and the run together under $HOME (the run went to a literal ./~ directory)."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    env = {**_env(), "HOME": str(home)}
    common = [
        f"--config={ROOT / 'configs/lm.py'}:smoke",
        f"--config.data.data_dir={data_dir}",
        "--config.num_train_steps=4",
    ]
    for workdir, where in (("rel/run", cwd / "rel/run"), ("~/run", home / "run")):
        cmd = [sys.executable, "-m", "research.main", *common, f"--workdir={workdir}"]
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (where / "checkpoints" / "4").is_dir() and (where / "model.json").is_file()
    assert not (cwd / "~").exists()
    cmd = [sys.executable, "-m", "research.generate", "--workdir=rel/run", "--prompt=def"]
    r = subprocess.run(
        [*cmd, "--max_new_tokens=2"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_a_refused_config_leaves_no_new_workdir(data_dir, tmp_path):
    wd = tmp_path / "new" / "run"
    r = _run(wd, data_dir, "--config.num_train_steps=0")
    assert r.returncode == 2 and "num_train_steps=0" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists()
