#!/usr/bin/env bash
# Set up mba-dist in ./.venv on a fresh machine.
#   bash tools/setup.sh          CPU machine: torch 2.13 CPU + FBGEMM CPU kernels
#   bash tools/setup.sh --cuda   GPU machine: CUDA torch + fbgemm-gpu (PyPI's, built for the
#                                default CUDA of torch 2.13; for another CUDA set e.g.
#                                TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126)
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
  if [ -n "${TORCH_INDEX_URL:-}" ]; then  # torch and FBGEMM of one CUDA, from one index
    .venv/bin/python -m pip install --quiet 'torch>=2.13,<2.14' 'fbgemm-gpu==1.8.0' \
      --index-url "$TORCH_INDEX_URL"
  fi
  .venv/bin/python -m pip install --quiet -e '.[cuda,test,bench]'
else
  .venv/bin/python -m pip install --quiet 'torch==2.13.0' ./tools/fbgemm-gpu-cpu-shim -e '.[cpu,test,bench]'
fi
.venv/bin/python -c "import torchrec, ray, mba_dist; print('mba-dist ready:', mba_dist.__version__)"
