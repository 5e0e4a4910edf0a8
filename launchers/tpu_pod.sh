#!/usr/bin/env bash
# Runs `python -m MODULE ARGS...` on every host of a TPU pod slice at once.
# usage: TPU_NAME=... ZONE=... launchers/tpu_pod.sh experiments.llm_judge --workdir /tmp/run
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
module=$1; shift
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd ~/genrm-jax && GENRM_JAX_MULTIHOST=1 python3 -m $module$args"
