"""What every command-line entry point shares: one-line errors, absl parsing without tracebacks."""

import argparse
import sys

from absl import flags


def fail(message: str, code: int = 2):
    """Print `error: message` to stderr and exit with `code` (2: a user mistake)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv):
    """absl flag parsing (for app.run's flags_parser) that reports a bad flag on one line."""
    try:
        return flags.FLAGS(argv)
    except OSError as e:  # a --config.key=value override applied to a config file that failed
        fail(config_load_error(e))
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


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
