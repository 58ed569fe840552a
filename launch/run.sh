#!/usr/bin/env bash
# Creates .venv if missing, installs seqlab, and runs the default experiment (linear vs softmax
# attention, configs/compare_attention.py) on data built locally. Extra arguments go to
# research.main, for example: ./launch/run.sh --config.widths=32,64 --workdir=/tmp/cmp
#
#   ./launch/run.sh --install-only        # only create .venv and install seqlab into it
#   EXTRAS=tb ./launch/run.sh --install-only   # with the TensorBoard viewer (optional extras)
#   PYTHON=/path/to/python3.11 ./launch/run.sh # the interpreter that creates .venv
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/bootstrap.sh
ensure_venv ""
if [ "${1:-}" = "--install-only" ]; then
  echo "[seqlab] .venv is ready; run commands with .venv/bin/python or after source .venv/bin/activate"
  exit 0
fi
# XLA:CPU allocates each step's temporaries afresh (37 MiB for the default's softmax model, 72 for
# Gated DeltaNet) and glibc maps a buffer that size anew every time, so the pages were faulted in
# and zeroed 4 KiB at a time on every step. Transparent huge pages for malloc's mappings cut that
# system CPU time from 104 s to 37 s in the default's run: about a tenth faster, results identical
# (docs/training.md, "Huge pages on CPU"). Only an environment variable: other systems ignore it,
# and a hugetlb setting of your own in GLIBC_TUNABLES is kept.
case "${GLIBC_TUNABLES:-}" in
  *glibc.malloc.hugetlb=*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
esac
exec .venv/bin/python -m research.main --config=configs/compare_attention.py \
    --workdir=/tmp/seqlab/compare_attention "$@"
