#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: prints the device, runs the conformance suites on CUDA
# (candle built with `--features cuda` by scripts/build-cuda.sh; tch against a CUDA libtorch),
# and the CUDA benches (extraction images/s, cached-head samples/s, …) next to the CPU ones.
# Expects a torch 2.11 (cu130) Python environment for tch: TORCH_LIB=<site-packages>/torch/lib.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
export ALEXNET_BENCH_CUDA=1 ALEXNET_TEST_CUDA=1
if [ -n "${TORCH_LIB:-}" ]; then
  export LIBTORCH="$(dirname "$TORCH_LIB")" LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
fi
echo "== candle conformance on CUDA =="
cargo test --release -p backend-candle --features cuda --test conformance 2>&1 | grep -E "^test |test result"
if [ -n "${LIBTORCH:-}" ]; then
  echo "== tch conformance on CUDA =="
  cargo test --release -p backend-tch --features cuda --test conformance 2>&1 | grep -E "^test |test result"
fi
echo "== benches (CPU and CUDA) =="
features=cuda; [ -n "${LIBTORCH:-}" ] && features="cuda,tch"
cargo bench -p alexnet-benches --features "$features" -- --sample-size 10 --warm-up-time 1 --measurement-time 3 alexnet 2>&1 \
  | grep -E "^alexnet/|thrpt:"
