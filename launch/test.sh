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
# Three workers on two cores: two left part of a core idle (tests wait on subprocesses, gloo and
# disk); with three both cores are busy, so a fourth gains nothing reliable and uses more memory.
# Cold suite, fresh clone, whole test.sh: 15m00s on a 2-core Zen 5 VM, 18m45s-19m21s on a Zen 4.
# SEQLAB_TEST_WORKERS overrides it (fewer with less memory).
exec .venv/bin/python -m pytest -n "${SEQLAB_TEST_WORKERS:-3}" "$@"
