"""A researcher's first commands: each mistake ends in one `error: ...` line and exit code 2,
before anything trains; config files load from any directory; CPU commands print no libtpu noise.
Messages that need no process of their own are checked in-process (`parse_flags`, `load_run`);
the subprocess tests keep the exit code, the one line and the working directory.
"""

import glob
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _error_line(r) -> str:
    """The one line a user mistake prints; fails on a traceback or on more lines."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture
def parse_flags(monkeypatch):
    """research.main's flag parsing (`research.cli.parse_flags`), in-process from the repository
    root; the flags are unparsed afterwards."""
    from absl import flags

    import research.main  # noqa: F401 - defines --config and --workdir
    from research import cli

    monkeypatch.chdir(ROOT)
    yield cli.parse_flags
    flags.FLAGS.unparse_flags()


def _parse_error(parse_flags, capsys, argv) -> str:
    """The one `error: ...` line parse_flags exits 2 with."""
    with pytest.raises(SystemExit) as e:
        parse_flags(["research.main", *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_unknown_preset_prints_the_allowed_ones(tmp_path, parse_flags, capsys):
    argv = ["--config=configs/lm.py:smok", f"--workdir={tmp_path}"]
    assert _parse_error(parse_flags, capsys, argv) == (
        "error: flag --config=configs/lm.py:smok: unknown preset 'smok' for configs/lm.py; "
        "allowed: smoke, 1b, 1b_gdn, 7b"
    )
    # A study's config names its own file and presets (gelu passed its preset on to lm.py's)
    argv = ["--config=configs/gelu.py:1b", f"--workdir={tmp_path}"]
    assert _parse_error(parse_flags, capsys, argv) == (
        "error: flag --config=configs/gelu.py:1b: unknown preset '1b' for configs/gelu.py; "
        "allowed: smoke"
    )


@pytest.mark.parametrize(
    "flag, closest",
    [("--config.num_train_step=10", "--config.num_train_steps"),
     ("--config.model.d_modl=8", "--config.model.d_model")],
)  # fmt: skip
def test_misspelt_override_names_the_flag_and_the_closest_key(tmp_path, flag, closest):
    """In a process of its own: ml_collections takes the --config.KEY overrides from the
    process's arguments when the --config flag is defined, which happens once per process."""
    r = _run(["-m", "research.main", "--config=configs/lm.py:smoke", flag, f"--workdir={tmp_path}"])
    name = flag.split("=")[0]
    assert _error_line(r) == f"error: {name}: no such config key; did you mean {closest}?"


def test_an_override_the_sweep_would_drop_is_refused(tmp_path):
    """compare_attention sets every point's kind: --config.lm.model.attention was silently lost."""
    r = _run(
        [
            "-m",
            "research.main",
            "--config=configs/compare_attention.py:smoke",
            "--config.lm.model.attention=gla",
            f"--workdir={tmp_path}",
        ]
    )
    assert _error_line(r) == (
        "error: --config.lm.model.attention: the compare_attention experiment sets it for every "
        "point, so the override would be lost; use --config.attentions"
    )
    assert not (tmp_path / "runs").exists()


def test_config_file_that_does_not_compile_or_import(tmp_path, parse_flags, capsys):
    (tmp_path / "broken.py").write_text("def get_config(:\n    pass\n")
    (tmp_path / "imports.py").write_text("import no_such_module_xyz\n")
    line = _parse_error(parse_flags, capsys, [f"--config={tmp_path / 'broken.py'}", "--workdir=w"])
    assert line.startswith(f"error: {tmp_path / 'broken.py'}:1: ")
    line = _parse_error(parse_flags, capsys, [f"--config={tmp_path / 'imports.py'}", "--workdir=w"])
    assert line == f"error: {tmp_path / 'imports.py'}:1: No module named 'no_such_module_xyz'"


def test_config_files_load_by_absolute_path_from_any_directory(tmp_path):
    """configs is an installed package: the repository's files and a user's own config file that
    builds on them (`from configs import lm`) load from any working directory."""
    mine = tmp_path / "mine.py"
    mine.write_text(
        "from configs import lm\n\n\n"
        "def get_config(preset=''):\n"
        "    c = lm.get_config('smoke')\n"
        "    c.num_train_steps = 0\n"
        "    return c\n"
    )
    for config in (f"{ROOT / 'configs' / 'lm.py'}:smoke", str(mine)):
        r = _run(
            [
                "-m",
                "research.main",
                f"--config={config}",
                "--config.num_train_steps=0",
                f"--workdir={tmp_path / 'w'}",
            ],
            cwd=tmp_path,
        )
        assert _error_line(r) == "error: num_train_steps=0: must be a positive int"


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed")
@pytest.mark.skipif(
    bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")), reason="a TPU host"
)
def test_cpu_commands_print_no_libtpu_errors(tmp_path):
    """With libtpu installed (the test extra), JAX probes the TPU backend on every start; on a
    machine without TPU chips that must not print libtpu's errors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_"))}
    r = _run(["-c", "import research, jax; print(jax.devices())"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    noise = [x for x in r.stderr.splitlines() if "libtpu" in x or "E0000" in x or "TPU" in x]
    assert not noise, r.stderr


def test_the_suites_cli_runs_compile_with_xlas_default_emitters():
    """tests/conftest.py gives only the test process XLA:CPU's older emitters (they compile its
    eager ops faster); the CLI runs and launchers it starts must compile as users' runs do."""
    from tests.cpu import cpu_env

    assert "fusion_emitters" not in os.environ["XLA_FLAGS"]
    assert "fusion_emitters" not in cpu_env(2)["XLA_FLAGS"]


@pytest.fixture
def absl_verbosity():
    """load_run sets absl logging to WARNING (as the CLIs want); put it back afterwards."""
    from absl import logging

    before = logging.get_verbosity()
    yield
    logging.set_verbosity(before)


def _load_run_error(capsys, workdir, task) -> str:
    """The one `error: ...` line research.cli.load_run exits 2 with, called in-process."""
    from research.cli import load_run

    with pytest.raises(SystemExit) as e:
        load_run(["prog"], str(workdir), None, task)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("task", ["chat", "qagen", None])  # None: research.generate's call
def test_a_missing_workdir_is_named_as_missing(tmp_path, capsys, absl_verbosity, task):
    missing = tmp_path / "no_such_run"
    assert _load_run_error(capsys, missing, task) == f"error: --workdir={missing} does not exist"
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    assert _load_run_error(capsys, afile, task) == f"error: --workdir={afile} is not a directory"


@pytest.mark.parametrize("task", ["chat", "qagen", None])
def test_an_experiment_directory_lists_its_runs(tmp_path, capsys, absl_verbosity, task):
    """An experiment's directory (configs/qagen.py's, a sweep's) holds no model.json; its runs
    do, under runs/. The error names them, in numeric order, and one to pass instead."""
    for name in ("seed10", "seed1", "seed0"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "model.json").write_text("{}")
    (tmp_path / "runs" / "unfinished").mkdir()  # no model.json: not a run to offer
    (tmp_path / "pretrain").mkdir()
    assert _load_run_error(capsys, tmp_path, task) == (
        f"error: --workdir={tmp_path} is an experiment directory; its runs are runs/seed0, "
        f"runs/seed1, runs/seed10: give one, e.g. --workdir={tmp_path}/runs/seed0"
    )


def test_an_unreadable_checkpoint_is_one_line(
    tmp_path, capsys, absl_verbosity, mlm_workdir, monkeypatch
):
    """Truncated checkpoint files: Orbax fails in many threads; the CLIs over a trained run
    print one line naming the file's error (the threads' noise goes to WORKDIR/errors.log)."""
    import logging
    import shutil
    import sys
    import threading

    from research.train import faults

    # divert_noise installs process-wide hooks and log filters: put them back afterwards
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(faults, "_installed", None)
    root = logging.getLogger()
    named = map(logging.getLogger, ("absl", "orbax", "asyncio", "concurrent.futures"))
    for x in (root, *root.handlers, *named):
        monkeypatch.setattr(x, "filters", list(x.filters))
    run = tmp_path / "run"
    shutil.copytree(mlm_workdir, run)
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # OCDBT's data files
            f.write_bytes(b"")
    line = _load_run_error(capsys, run, None)
    assert line.startswith(f"error: {run}: cannot read the run (")
    assert line.endswith(f"; traceback in {run / 'errors.log'}")
    assert "Traceback (most recent call last)" in (run / "errors.log").read_text()


def test_many_runs_are_listed_in_part(tmp_path):
    from research.cli import workdir_error

    for i in range(9):
        (tmp_path / "runs" / f"p{i}").mkdir(parents=True)
        (tmp_path / "runs" / f"p{i}" / "model.json").write_text("{}")
    assert "its runs are runs/p0, runs/p1, runs/p2, runs/p3, runs/p4, runs/p5 and 3 more:" in (
        workdir_error(str(tmp_path))
    )


def test_a_directory_that_is_no_run_still_says_no_model_json(tmp_path, capsys, absl_verbosity):
    assert _load_run_error(capsys, tmp_path, "chat") == (
        f"error: {tmp_path}: no model.json; not a workdir of a seqlab training run"
    )


def test_qagen_help_gives_a_run_of_the_experiment_as_workdir():
    """configs/qagen.py is an experiment (WORKDIR/runs/seedS): --help's --workdir examples must
    be one of its runs, which research.qagen can load, not the experiment's directory."""
    r = _run(["-m", "research.qagen", "--help"])  # absl's --help exits 1 after the usage
    examples = re.findall(r"--workdir=(/tmp/seqlab/\S+)", r.stdout)
    assert examples, r.stdout
    for path in examples:
        assert re.fullmatch(r"/tmp/seqlab/qagen/runs/seed\d+", path), path


def test_an_output_directory_under_a_file_is_refused_before_any_work(tmp_path):
    """--out of the benches and planners (`out_dir`): a file, or a path under one, is a usage
    error at parse time (it was found only when the results were written)."""
    import argparse

    from research.bench import attention, train
    from research.cli import out_dir

    afile = tmp_path / "results.csv"
    afile.write_text("x")
    assert out_dir(str(tmp_path / "new" / "dir")) == str(tmp_path / "new" / "dir")
    for bad in (afile, afile / "sub"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"{afile} is not a directory"):
            out_dir(str(bad))
    for bench in (attention, train):  # their parsers exit 2 before measuring anything
        with pytest.raises(SystemExit) as e:
            bench.main([f"--out={afile}"])
        assert e.value.code == 2


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("train", ["--softmax_implementation=cudnn"], "'cudnn' needs a GPU (cuDNN)"),
        ("chat", ["--d_model=15", "--heads=2"], "d_model (15) must be divisible by num_heads"),
        ("accelerator", ["--memory_budget_gb=-1"], "expected a number > 0, got '-1'"),
    ],
)
def test_bench_model_mistakes_exit_2_before_tracing(module, argv, message, capsys):
    """Each was a traceback (exit 1) from inside tracing, or a crash after the rows ran."""
    import importlib

    import jax

    if module == "train" and jax.default_backend() == "gpu":
        pytest.skip("this host has a GPU, where cuDNN is allowed")

    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"research.bench.{module}").main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_empty_model_json_is_named_not_reported_as_zero(
    tmp_path, capsys, absl_verbosity, mlm_workdir
):
    """json's error is raised `from None` over a StopIteration(0): one_line said "(0)"."""
    import json
    import shutil

    from research.train import faults

    try:
        json.loads("")
    except ValueError as e:
        assert faults.one_line(e) == "Expecting value: line 1 column 1 (char 0)"
    run = tmp_path / "run"
    shutil.copytree(mlm_workdir, run)
    (run / "model.json").write_text("")
    line = _load_run_error(capsys, run, None)
    assert line.startswith(f"error: {run}: cannot read the run (Expecting value"), line


@pytest.mark.parametrize("tool", ["research.generate", "research.chat", "research.qagen"])
def test_a_seed_out_of_range_is_one_line(tool):
    for seed in ("99999999999999999999", "4294967296"):  # a traceback; an alias of seed 0
        r = _run(["-m", tool, "--workdir=/nowhere", f"--seed={seed}"])
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "--seed" in lines[0] and "4294967295" in lines[0], lines[0]


def test_text_that_is_not_utf8_is_one_line(capsys):
    """argv and stdin reach Python with bytes that are not UTF-8 as lone surrogates, which the
    tokenizers refuse with a traceback: refused first, naming the flag."""
    from research.cli import utf8

    assert utf8("déjà vu 中文", "--prompt") == "déjà vu 中文"
    with pytest.raises(SystemExit) as e:
        utf8("de\udcff", "--prompt")
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: --prompt is not UTF-8 text (character 2)\n"


@pytest.mark.parametrize("flag", ["--help", "--helpfull", "-helpxml"])
def test_help_exits_0(parse_flags, capsys, flag):
    """absl prints the help and exits 1, which research.main documents as a non-finite loss."""
    from absl import app

    app.define_help_flags()
    with pytest.raises(SystemExit) as e:
        parse_flags(["research.main", flag])
    out = capsys.readouterr().out  # in-process, --help names this process's main module
    assert e.value.code == 0 and ("--helpfull" if flag == "--help" else "workdir") in out


def test_an_unusable_venv_is_named_with_the_fix(tmp_path):
    """launch/bootstrap.sh with a .venv whose python is too old or has no pip (a venv made
    without python3-venv): one message saying to remove it, exit 2 (every later run failed in
    pip instead, without saying why)."""
    _bootstrap_here(tmp_path, None)  # 'import pip' fails, as in a venv without pip
    cmd = ["bash", "-c", "source launch/bootstrap.sh && ensure_venv ''"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.splitlines()[0] == (
        "error: .venv is unusable: its Python is older than 3.11 or it has no pip."
    )
    assert "rm -rf .venv" in r.stderr
    # The interpreter running the suite (test.sh's .venv) passes the same check.
    check = "import sys, pip; sys.exit(sys.version_info < (3, 11))"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0


def _bootstrap_here(tmp_path, made_in: str | None):
    """A project directory with launch/bootstrap.sh and a .venv whose pyvenv.cfg says it was
    made in `made_in` (None: no pyvenv.cfg); its python fails every check (no pip)."""
    import shutil

    (tmp_path / "launch").mkdir()
    shutil.copy(ROOT / "launch" / "bootstrap.sh", tmp_path / "launch")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    if made_in is not None:
        (tmp_path / ".venv" / "pyvenv.cfg").write_text(
            f"home = /usr/bin\ncommand = /usr/bin/python3 -m venv {made_in}\n"
        )
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)


def _python_3_10(tmp_path):
    """An interpreter that says it is Python 3.10.12 and fails everything else."""
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.10.12"\nexit 1\n')
    old.chmod(0o755)
    return old


def test_a_venv_moved_from_another_directory_is_made_again(tmp_path):
    """Its scripts' interpreter lines name the directory it was made in (test.sh's lint-imports
    ran another checkout's venv, or none). With PYTHON too old to make a new one, the run stops
    at that, the moved venv gone; a venv made here is kept."""
    here = tmp_path / "here"
    here.mkdir()
    _bootstrap_here(here, str(tmp_path / "elsewhere" / ".venv"))
    cmd = ["bash", "-c", "source launch/bootstrap.sh && ensure_venv ''"]
    old = _python_3_10(tmp_path)
    env = {**os.environ, "PYTHON": str(old)}
    r = subprocess.run(cmd, cwd=here, env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines()[0] == (
        f"[seqlab] .venv was made in {tmp_path / 'elsewhere' / '.venv'}; making it again here"
    )
    assert r.returncode == 2 and "needs Python >= 3.11; " in r.stderr and "3.10.12" in r.stderr
    assert not (here / ".venv").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    _bootstrap_here(kept, str(kept / ".venv"))
    r = subprocess.run(cmd, cwd=kept, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "made in" not in r.stdout and ".venv is unusable" in r.stderr
    assert (kept / ".venv" / "bin" / "python").exists()


def test_two_launchers_started_together_install_once(tmp_path):
    """run.sh and test.sh started at once on a fresh clone both created and installed into one
    .venv; now the second waits for the first and finds it installed."""
    _bootstrap_here(tmp_path, str(tmp_path / ".venv"))
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    log = tmp_path / "installs.log"
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.write_text(  # passes the checks; each pip install is logged and takes a second
        f'#!/bin/sh\nif [ "$1" = -m ]; then echo "$PPID $*" >> {log}; sleep 1; fi\nexit 0\n'
    )
    cmd = ["bash", "-c", "source launch/bootstrap.sh && ensure_venv ''"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    said = [p.stdout.read().decode() for p in procs]
    assert sum("waiting for another launcher's install of .venv" in s for s in said) == 1, said
    launchers = {line.split()[0] for line in log.read_text().splitlines()}
    assert len(launchers) == 1, log.read_text()  # one launcher's (pip, then the project)


def test_qagen_num_answers_beyond_one_batchs_reach_is_one_line():
    """--num_answers=100000 decoded batch_size x 100,000 rows together: out of memory after the
    model loaded, with a traceback. Bounded at 256 when the flags are read."""
    r = _run(["-m", "research.qagen", "--workdir=/nowhere", "--num_answers=100000"])
    line = _error_line(r)  # exit 2, one line
    assert "--num_answers" in line and "256" in line, line


def test_generate_refuses_a_sampling_temperature_or_top_p_of_0_before_reading_the_run():
    """--temperature=0 and --top_p=0 passed the flags' bounds and failed in sampling, with
    advice to shorten the prompt."""
    for flag, name in (("--temperature=0", "--temperature=0.0"), ("--top_p=0", "--top_p=0.0")):
        r = _run(["-m", "research.generate", "--workdir=/nowhere", "--prompt=x", flag,
                  "--method=sample"])  # fmt: skip
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: {name}: must be") and "shorten" not in lines[0]


def test_the_tpu_pod_launcher_makes_each_hosts_venv_as_run_sh_does(tmp_path):
    """It made .venv with the hosts' python3 unchecked (3.10 on some TPU VM images failed in pip
    on every rerun) and without bootstrap.sh's repairs. A fake gcloud runs the hosts' command
    here, with a Python 3.10 as the hosts' interpreter: one line, exit 2, no .venv."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    gcloud = bin_dir / "gcloud"  # runs --command locally, as `ssh --worker=all` would per host
    gcloud.write_text(
        '#!/bin/bash\nwhile [ $# -gt 0 ]; do [ "$1" = --command ] && cmd="$2"; shift; done\n'
        'exec bash -c "$cmd"\n'
    )
    old = _python_3_10(tmp_path)
    gcloud.chmod(0o755)
    import shutil

    # The hosts clone REPO: this checkout's commit on a branch (CI's may be detached), with the
    # working tree's bootstrap.sh committed on it.
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "clone", "-q", str(ROOT), str(repo)], check=True)
    shutil.copy(ROOT / "launch" / "bootstrap.sh", repo / "launch" / "bootstrap.sh")
    subprocess.run([*git, "checkout", "-q", "-B", "main"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-am", "wt"], cwd=repo, check=True)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(home),
        "TPU_NAME": "t",
        "ZONE": "z",
        "REPO": str(repo),
        "TPU_PYTHON": str(old),
    }
    cmd = [str(ROOT / "launch" / "tpu_pod.sh"), "--config=configs/lm.py:smoke"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"error: seqlab needs Python >= 3.11; '{old}' is Python 3.10.12." in r.stderr
    assert "Set TPU_PYTHON=/path/to/python3.11 and run again." in r.stderr
    assert (home / "seqlab" / "launch").is_dir() and not (home / "seqlab" / ".venv").exists()
