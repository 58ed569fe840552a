#!/usr/bin/env bash
# Creates .venv if missing, installs seqlab, and runs the default experiment (linear vs softmax
# attention, configs/compare_attention.py) on data built locally. Extra arguments go to
# research.main, for example: ./launch/run.sh --config.widths=32,64 --workdir=/tmp/cmp
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/bootstrap.sh
ensure_venv ""
exec .venv/bin/python -m research.main --config=configs/compare_attention.py \
    --workdir=/tmp/seqlab/compare_attention "$@"
