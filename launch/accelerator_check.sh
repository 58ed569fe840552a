#!/usr/bin/env bash
# Measures the GPU or TPU of this machine in about 10 minutes:
#   1. the kernel and attention tests on the device (not the Pallas interpreter);
#   2. research.bench.accelerator: attention in bf16 at B8 H16 D128 for L = 1k..64k (softmax:
#      cuDNN / Pallas flash and blockwise; plain linear, GLA and Gated DeltaNet: the XLA
#      chunked forms and, on TPU, the Pallas kernels), forward and forward+backward, TFLOP/s and
#      crossover lengths, then a 124M-parameter LM train step with softmax and Gated DeltaNet;
#   3. one CSV and one PNG named after the device, in bench_out/accelerator/ (OUT_DIR=...).
#
#   ./launch/accelerator_check.sh               # creates .venv with jax's CUDA or TPU plugin
#   SEQLAB_PYTHON=python3 ./launch/accelerator_check.sh
#                                               # an interpreter that already has jax for the
#                                               # device and seqlab's dependencies: no installs
# Exits 1 with one line when there is no accelerator; 3 when a device test failed (the
# measurements still ran), 4 when the measurements failed or ran out of time (after both ran).
# Ctrl-C or a job manager's SIGTERM stops the step running (it was left holding the device).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT_DIR:-bench_out/accelerator}"

no_accelerator() {
  rm -f "${TMPDIR:-/tmp}/seqlab-backend.$$"
  echo "accelerator_check: $1; nothing to measure (./launch/test.sh runs the CPU suite)" >&2
  exit 1
}

if [ -n "${SEQLAB_PYTHON:-}" ]; then
  py="$SEQLAB_PYTHON"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
    plugin="cuda"
  elif compgen -G "/dev/accel*" > /dev/null || compgen -G "/dev/vfio/[0-9]*" > /dev/null; then
    plugin="tpu"
  else
    no_accelerator "no GPU (nvidia-smi) and no TPU (/dev/accel*, /dev/vfio) on this machine"
  fi
  source launch/bootstrap.sh
  EXTRAS="$plugin" ensure_venv "test"
  py=".venv/bin/python"
fi

backend="$("$py" -c 'import jax; print(jax.default_backend())' 2> "${TMPDIR:-/tmp}/seqlab-backend.$$" || echo none)"
case "$backend" in
  gpu | tpu) ;;
  *)
    # jax itself failed (a CUDA plugin that did not start, say): say why
    [ "$backend" != none ] || tail -n 5 "${TMPDIR:-/tmp}/seqlab-backend.$$" >&2
    no_accelerator "jax on $py sees no GPU or TPU (backend: $backend)"
    ;;
esac
rm -f "${TMPDIR:-/tmp}/seqlab-backend.$$"
device="$("$py" -c 'import jax; print(jax.devices()[0].device_kind)')"
echo "[accelerator_check] $device ($backend); results in $out/"

# Each step under `timeout`, which puts itself in a process group of its own: a signal to this
# script's group (Ctrl-C, a job manager) missed the step. --foreground keeps it in ours, and the
# trap passes a signal sent to this script alone on to the step.
step=""
stop_step() { # $1: the signal's number; waits for the step to let go of the device
  if [ -n "$step" ]; then
    kill -TERM "$step" 2> /dev/null || true
    wait "$step" || true
  fi
  exit $((128 + $1))
}
trap 'stop_step 1' HUP
trap 'stop_step 2' INT
trap 'stop_step 15' TERM
run_step() {
  timeout --foreground "$@" &
  step=$!
  wait "$step"
}

echo "[accelerator_check] 1/2 kernel and attention tests on the $backend"
tests_ok=1
run_step 180 "$py" -m pytest -q -x -p no:cacheprovider \
  tests/ops/attention/test_pallas.py tests/ops/attention/test_softmax.py \
  tests/ops/attention/test_gated.py tests/ops/attention/test_delta.py || tests_ok=0

echo "[accelerator_check] 2/2 attention kernels and a 124M LM train step (bf16)"
bench=0
run_step 480 "$py" -m research.bench.accelerator --out "$out" --budget_s 400 || bench=$?

if [ "$tests_ok" = 0 ]; then
  echo "[accelerator_check] a device test FAILED (above); the measurements ran" >&2
fi
if [ "$bench" != 0 ]; then
  reason="exit code $bench"
  [ "$bench" = 124 ] && reason="out of time (480 s)"
  echo "[accelerator_check] the measurements FAILED ($reason; above)" >&2
fi
[ "$tests_ok" = 1 ] || exit 3
[ "$bench" = 0 ] || exit 4
