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
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache  # architecture contracts in pyproject.toml
# Four workers on two cores: the suite is compile-bound and waits on subprocesses, gloo and disk,
# so two workers left a core partly idle (cold suite, 2-core VM: 23m58s with 2 workers, 18m55s
# with 3). SEQLAB_TEST_WORKERS overrides it.
exec .venv/bin/python -m pytest -n "${SEQLAB_TEST_WORKERS:-4}" "$@"
