"""2 processes x 2 CPU devices (gloo collectives) train exactly like 1 process x 4 devices."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.cpu import cpu_env

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _losses(workdir):
    rows = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def _run(cmd, env):
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def test_default_stream_ignores_the_topology_and_resumes_on_another(tmp_path):
    """The default config (data.shards=1) on 2 processes x 2 devices trains on the batches of 1
    process x 4 devices; a 2 x 2 run preempted by SIGTERM resumes on 1 x 4 (Orbax reshards the
    state, the data state is merged from both processes' files) and the losses of the whole run
    are those of an uninterrupted 1 x 4 run."""
    import signal

    from tests.preemption import signal_after_metrics

    steps = 40
    common = [
        "--config=configs/lm.py:smoke",
        f"--config.data.data_dir={tmp_path / 'data'}",
        f"--config.num_train_steps={steps}",
    ]
    env = cpu_env(4, SEQLAB_PYTHON=sys.executable)
    main = [sys.executable, "-m", "research.main", *common]
    _run([*main, f"--workdir={tmp_path / 'one'}"], env)
    wd = tmp_path / "elastic"
    code, out, err = signal_after_metrics(
        ["./launch/multiprocess_cpu.sh", "2", *common, f"--workdir={wd}"],
        wd / "metrics.jsonl",
        4,
        signal.SIGTERM,
        cwd=ROOT,
        env={**env, "DEVICES_PER_PROCESS": "2"},
    )
    assert code == 0, out[-2000:] + err[-2000:] + (wd / "process_1.log").read_text()[-2000:]
    stopped = int(out.split("stopped by SIGTERM: saved at step ")[1].split()[0])
    assert 1 <= stopped < steps
    data = {p.name for p in (wd / "checkpoints" / str(stopped) / "data").iterdir()}
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= data
    resumed = _run([*main, f"--workdir={wd}"], env)
    assert f"resumed from step {stopped}" in resumed.stdout
    a, b = _losses(tmp_path / "one"), _losses(wd)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    # Same data, same math; only the all-reduce order differs across processes (~1e-7 here).
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)


@pytest.mark.parametrize("target", ["launcher", "group"])
def test_sigterm_saves_both_processes_and_exits_zero(tmp_path, target):
    """SIGTERM to the launcher (it forwards it) or to the launch's whole process group (what
    `timeout`, a job manager or `kill -- -PGID` do; no relay process may die and break the
    training processes' output): both processes save the same step and exit 0, and so does the
    launcher (bash's `wait` returns 143 when the trap interrupts it). The rerun resumes there."""
    import signal

    from tests.preemption import signal_after_metrics

    wd = tmp_path / "wd"
    common = [
        "--config=configs/lm.py:smoke",
        f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.checkpoint_every_steps=100000",
        f"--workdir={wd}",
    ]
    cmd = ["./launch/multiprocess_cpu.sh", "2", *common, "--config.num_train_steps=100000"]
    # SEQLAB_PYTHON: the interpreter running this test; the launcher gives each process 1 device.
    env = cpu_env(1, SEQLAB_PYTHON=sys.executable, DEVICES_PER_PROCESS="1")
    second = []

    def run_a_second_time():  # process 0 holds the workdir's lock for the whole job
        second.append(
            subprocess.run(
                [sys.executable, "-m", "research.main", *common],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        )

    during = run_a_second_time if target == "launcher" else None
    code, out, err = signal_after_metrics(
        cmd,
        wd / "metrics.jsonl",
        3,
        signal.SIGTERM,
        cwd=ROOT,
        env=env,
        group=target == "group",
        during=during,
    )
    log1 = (wd / "process_1.log").read_text()
    assert code == 0, out[-2000:] + err[-2000:] + log1[-2000:]
    assert log1.startswith("=== ") and " launch pid " in log1.splitlines()[0]  # appended
    assert "stopped by SIGTERM: saved at step " in out and "Traceback" not in log1
    assert "Traceback" not in out + err
    step = int(out.split("saved at step ")[1].split()[0])
    ckpts = [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
    assert ckpts == [step]
    data = {p.name for p in (wd / "checkpoints" / str(step) / "data").iterdir()}
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= data
    if second:
        assert second[0].returncode == 2, second[0].stderr[-2000:]
        assert second[0].stderr.startswith(f"error: {wd} is in use by pid "), second[0].stderr
    if target == "group":  # resuming is the same either way; checked once, on one process
        r = _run(
            [
                sys.executable,
                "-m",
                "research.main",
                *common,
                "--allow_config_change",
                f"--config.num_train_steps={step + 1}",
            ],
            cpu_env(2),
        )
        assert f"resumed from step {step}" in r.stdout
        assert f"done at step {step + 1} (1 step this run, resumed from {step})" in r.stdout


@pytest.mark.parametrize("form", ["--workdir=~/run", "--workdir ~/run", "--workdir=gs://b/run"])
def test_the_launcher_finds_the_workdir_for_its_logs_in_every_spelling(tmp_path, form):
    """Process 1's log goes to the workdir research.main writes: "--workdir DIR" and "~/" too
    (they went to /tmp, or to a literal ./~ in the repository); a remote workdir logs to /tmp.
    The processes here are a stand-in interpreter that only exits."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho ran\n")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "SEQLAB_PYTHON": str(fake)}
    r = subprocess.run(
        ["./launch/multiprocess_cpu.sh", "2", *form.split()],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    if "gs://" in form:
        assert not (ROOT / "gs:").exists()
        return
    log = tmp_path / "home" / "run" / "process_1.log"
    assert log.read_text().splitlines()[-1] == "ran"
    assert not (ROOT / "~").exists()


_CHECK_DATA_DIR = """
import sys
from research.data import DataError, shards
from research.train import distributed
distributed.initialize()
try:
    shards.check_shared_data_dir(sys.argv[1], wait_seconds=2)
    print("shared")
except DataError as e:
    print(e)
"""


def test_two_processes_that_do_not_share_data_dir_both_stop_with_one_line(tmp_path):
    """Two real processes (gloo): each given its own folder, as two hosts' local disks (the
    default ~/.cache on a pod), both stop with one line; given one folder, both pass (a host
    reading its own empty folder failed inside tfds with a KeyError)."""
    import os
    import random

    def run(folders):
        env = cpu_env(1, JAX_PLATFORMS="cpu", SEQLAB_NUM_PROCESSES="2")
        env["SEQLAB_COORDINATOR"] = f"127.0.0.1:{random.randint(20000, 40000)}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHECK_DATA_DIR, str(folder)],
                cwd=ROOT,
                env={**env, "SEQLAB_PROCESS_ID": str(i)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, folder in enumerate(folders)
        ]
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
        return [out.strip().splitlines()[-1] for out, _ in outs]

    apart = run([tmp_path / "host0", tmp_path / "host1"])
    for i, line in enumerate(apart):  # each names its own folder
        assert line.startswith(f"data.data_dir={tmp_path / f'host{i}'}: process(es) 1 do not see")
    assert os.listdir(tmp_path / "host0") == []  # the mark is gone
    assert run([tmp_path / "shared"] * 2) == ["shared", "shared"]


def test_a_second_ctrl_c_kills_processes_the_first_could_not_stop(tmp_path):
    """Each signal was forwarded as one more SIGTERM, which a process stuck in a collective or
    a compile never acts on: no way to stop the job. These processes note each SIGTERM and go on;
    each signal is sent once the last was forwarded (bash merges signals still pending)."""
    import os
    import signal
    import time

    stub = tmp_path / "python"  # stands for research.main: writes its pid, notes SIGTERMs
    terms = tmp_path / "terms"
    stub.write_text(
        f"#!/bin/bash\ntrap 'echo $$ >> {terms}' TERM\necho $$ >> {tmp_path / 'pids'}\n"
        "while :; do sleep 0.05; done\n"
    )
    stub.chmod(0o755)
    env = {**os.environ, "SEQLAB_PYTHON": str(stub)}
    cmd = ["bash", "launch/multiprocess_cpu.sh", "2", f"--workdir={tmp_path / 'wd'}"]

    def defaults():  # a suite run in the background (nohup, `&`) ignores SIGHUP and SIGINT
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)

    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=defaults)

    def lines(path, n):  # wait until `path` has n lines
        deadline = time.monotonic() + 30
        while not (path.exists() and len(path.read_text().split()) >= n):
            assert time.monotonic() < deadline, f"{path.name}: fewer than {n} lines"
            time.sleep(0.05)
        return [int(x) for x in path.read_text().split()]

    pids = lines(tmp_path / "pids", 2)
    # SIGTERMs never escalate (`timeout` sends two: to the launcher, then to its group); the
    # first Ctrl-C is forwarded as SIGTERM too
    for i, sig in enumerate((signal.SIGTERM, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)):
        launcher.send_signal(sig)
        lines(terms, 2 * (i + 1))  # both processes were sent SIGTERM
        assert launcher.poll() is None, sig
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(timeout=30) == 128 + signal.SIGKILL
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_under_timeout_the_processes_save_before_they_stop(tmp_path):
    """`timeout` sends SIGTERM twice (the launcher, then its process group): never a reason to
    kill the processes, which save on SIGTERM (here: take 0.5 s to)."""
    import os

    saved = tmp_path / "saved"
    stub = tmp_path / "python"
    stub.write_text(
        f"#!/bin/bash\ntrap 'sleep 0.5; echo $$ >> {saved}; exit 0' TERM\n"
        f"echo $$ >> {tmp_path / 'pids'}\nwhile :; do sleep 0.05; done\n"
    )
    stub.chmod(0o755)
    env = {**os.environ, "SEQLAB_PYTHON": str(stub)}
    cmd = ["timeout", "3", "bash", "launch/multiprocess_cpu.sh", "2", f"--workdir={tmp_path}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, timeout=30)
    assert r.returncode == 124  # timeout's own code: it had to stop the command
    assert sorted(saved.read_text().split()) == sorted((tmp_path / "pids").read_text().split())
