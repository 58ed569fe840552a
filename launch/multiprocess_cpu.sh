#!/usr/bin/env bash
# Runs N local processes of research.main that form one JAX multi-process job on the CPU, the
# way a multi-host pod runs: each process has DEVICES_PER_PROCESS fake CPU devices and they talk
# through gloo collectives via a coordinator on 127.0.0.1.
#
#   ./launch/multiprocess_cpu.sh 2 --config=configs/lm.py:smoke --workdir=/tmp/seqlab/mp
#   DEVICES_PER_PROCESS=4 ./launch/multiprocess_cpu.sh 2 --config=...
#
# The caller's XLA_FLAGS reach every process, with the device count replaced.
#
# Each process runs .venv/bin/python (make it with ./launch/run.sh --install-only);
# SEQLAB_PYTHON=/path/to/python runs another interpreter that has seqlab installed. PYTHON is not
# used here: it names the base interpreter that run.sh and test.sh create .venv with.
#
# The script runs from the repository root: a relative --workdir (or --config) is taken from
# there. Process 0 prints to the terminal; process i appends to WORKDIR/process_i.log (/tmp for a
# remote workdir or none; --workdir=DIR, --workdir DIR and ~/ are understood). Exits with
# the first non-zero exit code of the processes (0 when all saved and stopped on a signal);
# SIGTERM/SIGINT/SIGHUP are forwarded to every process as SIGTERM (preemption; a second Ctrl-C
# kills them, unsaved: a job stuck in a collective or a compile stops). There is no relay
# process between a training process and its output (process 0 writes to this script's stdout
# and stderr, the others straight to their files), so a signal to the whole process group
# (`timeout`, a job manager, `kill -- -PGID`) reaches only processes that save before they stop.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [research.main flags...]" >&2
  exit 2
fi
n="$1"
shift
python="${SEQLAB_PYTHON:-.venv/bin/python}"
if ! command -v "$python" > /dev/null; then
  echo "error: $python not found; create it with ./launch/run.sh --install-only" >&2
  exit 2
fi
port="${SEQLAB_PORT:-$((20000 + RANDOM % 20000))}"
logdir=/tmp
previous=""
for arg in "$@"; do
  case "$arg" in --workdir=*) logdir="${arg#--workdir=}" ;; esac
  [ "$previous" = "--workdir" ] && logdir="$arg"
  previous="$arg"
done
case "$logdir" in
  "~"/*) logdir="$HOME/${logdir#\~/}" ;;
  *://*) logdir=/tmp ;; # a remote workdir (gs://...): the process logs stay local
esac
mkdir -p "$logdir"
# The caller's other XLA flags are kept; the device count is this script's.
xla_flags=""
read -ra caller_flags <<< "${XLA_FLAGS:-}"
# (${a[@]+...}: an empty array under set -u fails on bash < 4.4)
for flag in ${caller_flags[@]+"${caller_flags[@]}"}; do
  case "$flag" in --xla_force_host_platform_device_count=*) ;; *) xla_flags+="$flag " ;; esac
done
xla_flags+="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}"
pids=()
signalled=0
interrupts=0
forward() { # $1: the signal
  signalled=1
  [ "$1" = INT ] && interrupts=$((interrupts + 1))
  if [ "$interrupts" -lt 2 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
  else # a second Ctrl-C aborts at once, unsaved, as it does to research.main (only Ctrl-C:
    # `timeout` sends SIGTERM twice, to this script and then to its group)
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP
for ((i = 0; i < n; i++)); do
  cmd=(env XLA_FLAGS="$xla_flags"
    JAX_PLATFORMS=cpu SEQLAB_COORDINATOR="127.0.0.1:$port" SEQLAB_NUM_PROCESSES="$n"
    SEQLAB_PROCESS_ID="$i" "$python" -m research.main "$@")
  if [ "$i" = 0 ]; then
    "${cmd[@]}" 2>&1 &
  else
    # Appended, after a line naming this launch: a second launch that the workdir's lock will
    # refuse must not empty the running job's log.
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) launch pid $$ ===" >> "$logdir/process_$i.log"
    "${cmd[@]}" >> "$logdir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while true; do
    signalled=0
    code=0
    wait "$pid" || code=$?
    # A trapped signal makes `wait` return 128+signal while the process still runs (saving):
    # wait again for its own exit code (bash keeps it even when the process is gone).
    if [ "$code" -gt 128 ] && [ "$signalled" = 1 ]; then continue; fi
    break
  done
  [ "$status" = 0 ] && status=$code
done
exit "$status"
