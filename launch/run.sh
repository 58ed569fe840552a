#!/usr/bin/env bash
# Creates .venv if missing, installs seqlab, and runs the default job on data needing no download.
# Arguments are passed to it, for example: ./launch/run.sh --length 8192
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/bootstrap.sh
ensure_venv ""
exec .venv/bin/python -m research.demo "$@"
