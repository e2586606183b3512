#!/usr/bin/env bash
# Installs libtorch for the tch backend from PyPI's torch 2.11.0 wheel (its Linux build is the
# CUDA 13.0 one; on CPU it needs only the CUDA runtime and CUPTI libraries) into .venv, without
# torch's other dependencies (~1.3 GB, tens of seconds), and exports LIBTORCH and LD_LIBRARY_PATH.
# Source it (`source scripts/setup-libtorch.sh`) to get the exports in your shell; it does not
# change your shell's options.
_alexnet_setup_libtorch() {
  local root venv py nv
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  venv="$root/.venv"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" || { echo "python3 -m venv failed" >&2; return 1; }
  py=$(ls -d "$venv"/lib/python3*/site-packages | head -1)
  if [ ! -f "$py/torch/lib/libtorch_cpu.so" ]; then
    "$venv/bin/pip" install --quiet --no-deps torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 \
      || { echo "pip install torch==2.11.0 failed: is PyPI reachable?" >&2; return 1; }
  fi
  export LIBTORCH="$py/torch"
  nv=$(find "$py/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')
  export LD_LIBRARY_PATH="$LIBTORCH/lib:${nv}${LD_LIBRARY_PATH:-}"
  echo "export LIBTORCH=$LIBTORCH"
  echo "export LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}
_alexnet_setup_libtorch
