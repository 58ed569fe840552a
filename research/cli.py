"""What every command-line entry point shares: one-line errors, absl parsing without tracebacks."""

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
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
