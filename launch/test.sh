#!/usr/bin/env bash
# Creates .venv if missing, installs seqlab with its test extras, lints (ruff, the import-linter
# architecture contracts), and runs the whole suite.
# Extra arguments go to pytest, for example: ./launch/test.sh tests/ops -k linear
# ./launch/test.sh --install-only installs the test extras and stops (PYTHON, EXTRAS: bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/bootstrap.sh
ensure_venv "test"
if [ "${1:-}" = "--install-only" ]; then
  echo "[seqlab] .venv is ready with the test extras"
  exit 0
fi
# The install skips byte-compiling (bootstrap.sh): let the suite's first imports cache their
# bytecode (.venv/ and __pycache__/ are git-ignored), or its hundred processes recompile them.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache  # architecture contracts in pyproject.toml
# Three workers on two cores: the suite is compile-bound but also waits on subprocesses, gloo and
# disk, and two workers left part of a core idle. Cold suite, fresh clone, 2-core Intel Xeon VM,
# whole test.sh: 25m46s with 2 workers, 20m05s with 3; with 4, 18m41s and 20m50s (20 GiB of 24 in
# use), so no reliable gain. SEQLAB_TEST_WORKERS overrides it (fewer with less memory).
exec .venv/bin/python -m pytest -n "${SEQLAB_TEST_WORKERS:-3}" "$@"
