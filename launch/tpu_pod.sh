#!/usr/bin/env bash
# Runs one config on every host of a Cloud TPU VM slice (multi-host pod). Each host runs the same
# command; JAX finds the other hosts from the TPU metadata (research.train.distributed).
#
#   REPO=https://github.com/you/seqlab.git TPU_NAME=my-v5e-64 ZONE=us-west4-a \
#     ./launch/tpu_pod.sh --config=configs/lm.py \
#       --workdir=gs://my-bucket/seqlab/lm --config.mesh.fsdp=-1 --config.mesh.data=1 \
#       --config.data.data_dir=/mnt/seqlab-data
#
# Needs: gcloud, a TPU VM slice, REPO (a git URL of this project that every host can clone; each
# host clones or updates ~/seqlab from it), a workdir every host can reach (a GCS bucket) and a
# data_dir every host sees (a bucket mounted with gcsfuse, or NFS): process 0 builds the data.
# Re-running the same command resumes from the newest checkpoint; preemption (SIGTERM) saves.
# Each host makes ~/seqlab/.venv as run.sh does (launch/bootstrap.sh: Python >= 3.11, checked;
# reinstalled only when the project changes) with the tpu extra; TPU_PYTHON names the hosts'
# interpreter (default python3; some TPU VM images have 3.10: install 3.11 and name it).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${REPO:?set REPO to the git URL to clone}"
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d ~/seqlab ] || git clone $(printf '%q' "$REPO") ~/seqlab
  cd ~/seqlab && git pull --ff-only
  source launch/bootstrap.sh
  PYTHON=$(printf '%q' "${TPU_PYTHON:-python3}") SEQLAB_PYTHON_VARIABLE=TPU_PYTHON EXTRAS=tpu \
    ensure_venv ''
  exec .venv/bin/python -m research.main $args
"
