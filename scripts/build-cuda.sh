#!/usr/bin/env bash
# Builds the CLI and benches with CUDA (candle's `cuda` feature) on a machine without a GPU or a
# system CUDA toolkit (scripts/cuda-env.sh: the toolkit from PyPI, a link-only driver stub).
# Usage: scripts/build-cuda.sh [extra cargo args]   (CUDA_COMPUTE_CAP defaults to 90: H100/H200)
# For a GPU machine without Rust, build the bundle instead: scripts/gpu-bundle.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-env.sh
cargo build --release -p alexnet-cli --features cuda "$@"
cargo bench -p alexnet-benches --features cuda --no-run "$@"
echo "built target/release/alexnet with CUDA; on a GPU machine: scripts/gpu-check.sh"
