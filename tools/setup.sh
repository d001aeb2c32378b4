#!/usr/bin/env bash
# Set up mba-dist in ./.venv on a fresh machine.
#   bash tools/setup.sh          CPU machine: torch 2.13 CPU + FBGEMM CPU kernels
#   bash tools/setup.sh --cuda   GPU machine: CUDA torch + fbgemm-gpu
# The CPU path installs tools/fbgemm-gpu-cpu-shim in the same pip command: torchrec requires
# `fbgemm-gpu`, whose CUDA wheel would overwrite the CPU kernels and break `import torchrec`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${1:-}" = "--cuda" ]; then
  .venv/bin/python -m pip install --quiet -e '.[cuda,test,bench]'
else
  .venv/bin/python -m pip install --quiet 'torch==2.13.0' ./tools/fbgemm-gpu-cpu-shim -e '.[cpu,test,bench]'
fi
.venv/bin/python -c "import torchrec, ray, mba_dist; print('mba-dist ready:', mba_dist.__version__)"
