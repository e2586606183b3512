#!/usr/bin/env bash
# Runs scripts/pytorch_baseline.py in the project's .venv. The tch backend's setup installs torch
# without its dependencies (enough for libtorch); Python's `import torch` also needs cuDNN, cuBLAS
# and the other CUDA wheels, so this installs torch 2.11.0 with its dependencies (~3 GB more,
# once), plus xxhash (the split) and safetensors (the weights file).
# Usage: scripts/pytorch-baseline.sh [--policies fc6,conv5] [--steps 300] [--rust runs/experiment/experiment.json]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pip ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch, xxhash, safetensors, PIL" 2>/dev/null; then
  .venv/bin/pip install --quiet torch==2.11.0 xxhash safetensors pillow numpy
fi
exec .venv/bin/python scripts/pytorch_baseline.py "$@"
