"""What every command-line entry point shares: one-line errors, absl parsing without tracebacks."""

import argparse
import pathlib
import re
import sys
import traceback

from absl import flags

from research.ops.checks import file_in_the_way


def fail(message: str, code: int = 2):
    """Print `error: message` to stderr and exit with `code` (2: a user mistake). The exit code
    stands even when stderr cannot take the line (a log file on the disk that filled)."""
    try:
        print(f"error: {message}", file=sys.stderr)
    except OSError:
        pass
    sys.exit(code)


def utf8(text: str, what: str) -> str:
    """`text` as given (Python decodes argv with surrogateescape: bytes that are not UTF-8
    become lone surrogates the tokenizers cannot take); exit 2 naming `what` when it is not
    UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        fail(f"{what} is not UTF-8 text (character {e.start})")
    return text


def seed_flag(help_text: str):
    """--seed: an int in [0, 2**32 - 1] (jax.random.key keeps 32 bits without x64: larger seeds
    alias smaller ones, and past 2**63 - 1 they were a traceback)."""
    return flags.DEFINE_integer("seed", 0, help_text, lower_bound=0, upper_bound=2**32 - 1)


def load_run(argv, workdir: str, step: int | None, task: str | None):
    """The start of a tool over a trained run (research.chat, research.qagen, research.generate):
    absl logging at WARNING unless --verbosity, no positional arguments, --workdir given and a
    run's directory (`workdir_error`), the run loaded and of `task` (None: any; the caller
    checks). Each mistake is one line and exit 2. Returns `research.train.load_trained`'s run."""
    from absl import logging

    from research.config import ConfigError
    from research.train import faults, load_trained

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    if not workdir:
        what = f"a run of configs/{task}.py" if task else "a training run's directory"
        fail(f"--workdir=DIR is required ({what})")
    problem = workdir_error(workdir)
    if problem:
        fail(problem)
    # An unreadable checkpoint fails in many Orbax threads at once: their noise goes to
    # WORKDIR/errors.log, as in research.main, and the reason is the one line below.
    log = faults.divert_noise(workdir)
    try:
        trained = load_trained(workdir, step=step)
    except (ConfigError, FileNotFoundError) as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds: one line each
        where = ""
        if log is not None:
            try:
                with log.open("a") as f:
                    f.write(f"--- research.cli.load_run({workdir})\n{traceback.format_exc()}\n")
                where = f"; traceback in {log}"
            except OSError:
                pass
        fail(f"{workdir}: cannot read the run ({faults.one_line(e)}){where}")
    if task is not None and trained.config.task != task:
        fail(f"{workdir}: task={trained.config.task!r}; research.{task} needs a {task} run")
    return trained


def workdir_error(workdir: str, shown: int = 6) -> str | None:
    """Why `workdir` cannot be a trained run's directory, before anything loads: it does not
    exist, is not a directory, or is an experiment's directory (no model.json, runs under
    runs/: they are named). None otherwise (load_trained checks the rest)."""
    path = pathlib.Path(workdir).expanduser()
    if not path.exists():
        return f"--workdir={workdir} does not exist"
    if not path.is_dir():
        return f"--workdir={workdir} is not a directory"
    if (path / "model.json").is_file() or not (path / "runs").is_dir():
        return None
    runs = sorted(
        (p for p in (path / "runs").iterdir() if (p / "model.json").is_file()),
        key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)],
    )
    if not runs:
        return None
    names = [f"runs/{p.name}" for p in runs]
    listed = ", ".join(names[:shown]) + (
        f" and {len(names) - shown} more" if len(names) > shown else ""
    )
    return (
        f"--workdir={workdir} is an experiment directory; its runs are {listed}: give one, "
        f"e.g. --workdir={workdir.rstrip('/')}/{names[0]}"
    )


# absl's help flags, each with one dash or two
HELP_FLAGS = ("-?",) + tuple(
    d + h for h in ("help", "helpshort", "helpfull", "helpxml") for d in ("-", "--")
)


def parse_flags(argv):
    """absl flag parsing (for app.run's flags_parser) that reports a bad flag on one line."""
    try:
        return flags.FLAGS(argv)
    except SystemExit as e:  # absl's --help and its kin print the help, then exit 1
        if e.code == 1 and any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
            raise SystemExit(0) from None  # 1 is a non-finite loss (research.main's docstring)
        raise
    except OSError as e:  # a --config.key=value override applied to a config file that failed
        fail(config_load_error(e))
    except (SyntaxError, ImportError) as e:  # a config file that does not compile or import
        fail(_source_error(e))
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        # --config.no_such_key=...: ml_collections raises a KeyError ("Did you mean ..."), or,
        # for a top-level key, an AttributeError that wraps one.
        key_error = e.args[0] if isinstance(e, AttributeError) and e.args else e
        if isinstance(key_error, KeyError):
            fail(unknown_key_error(key_error, argv))
        fail(_one_line(e))


def _one_line(e: BaseException) -> str:
    """The first line of `e`'s message. For a config file whose get_config() raised (a bad
    preset, a SyntaxError), ml_collections replaces the message by a traceback: the cause, the
    innermost exception of the chain, takes its place."""
    text = str(e).strip()
    marker = "Error whilst parsing config file:"
    if marker in text:
        cause = e
        while (cause.__cause__ or cause.__context__) is not None:
            cause = cause.__cause__ or cause.__context__
        detail = str(cause).strip().splitlines()
        head = text.split(marker, 1)[0]  # "flag --config=FILE:PRESET: "
        return head + (detail[0] if detail else type(cause).__name__)
    return text.splitlines()[0] if text else type(e).__name__


def _source_error(e: SyntaxError | ImportError) -> str:
    """`FILE:LINE: message` of a config file that does not compile, or of the deepest frame
    (the config file's import line, unless the error is inside the imported module)."""
    if isinstance(e, SyntaxError):
        return f"{e.filename}:{e.lineno}: {e.msg}"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return f"{where}{e}"


def unknown_key_error(e: KeyError, argv) -> str:
    """One line for an override of a config key that does not exist, naming the flag and, when
    ml_collections has one, the closest existing key: `--config.num_train_step: no such config
    key; did you mean --config.num_train_steps?`"""
    message = str(e.args[0]) if e.args else ""
    key = (message.splitlines() or [""])[0].strip("'\"")
    suggestion = re.search(r'Did you mean "([^"]+)"', message)
    for arg in argv[1:]:
        name = arg.split("=", 1)[0].lstrip("-")
        parts = name.split(".")
        if len(parts) > 1 and key in parts[1:]:
            flag = "--" + name
            if suggestion:
                fixed = [suggestion.group(1) if p == key else p for p in parts]
                return f"{flag}: no such config key; did you mean --{'.'.join(fixed)}?"
            return f"{flag}: no such config key"
    hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""
    return f"no such config key {key!r}{hint}"


def config_load_error(e: OSError) -> str:
    """ml_collections' multi-line load failure as one line: its last line holds the cause."""
    return f"--config: {str(e).strip().splitlines()[-1].strip()}"


def loaded_config(holder):
    """The value of a `config_flags.DEFINE_config_file` flag, or None if not given; a file that
    failed to load (ml_collections defers that error to the first access) exits with one line."""
    config = holder.value
    if config is not None:
        try:
            config.keys()
        except OSError as e:
            fail(config_load_error(e))
    return config


# argparse `type`s: a bad value exits 2 with one line naming it, before any work starts.
def int_at_least(low: int):
    """An argparse `type`: an integer >= low, else a one-line usage error naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            shown = repr(text) if value is None else value
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {shown}")
        return value

    return parse


positive_int = int_at_least(1)


def positive_ints(text: str) -> list[int]:
    """An argparse `type`: comma-separated integers >= 1, such as "512,1024"."""
    return [positive_int(x) for x in text.split(",")]


def positive_float(text: str) -> float:
    """An argparse `type`: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def out_dir_error(path: str) -> str | None:
    """Why results cannot be written under `path` (an output directory, made if missing): it,
    or a folder above it, exists and is not a directory. None when it can be."""
    blocked = file_in_the_way(path)
    return None if blocked is None else f"{blocked} is not a directory"


def out_dir(text: str) -> str:
    """An argparse `type` for --out: a directory that exists or can be made, checked before the
    work whose results go there."""
    problem = out_dir_error(text)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write results under {text}: {problem}")
    return text
