#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: prints the device, runs the conformance suites on CUDA
# (candle built with `--features cuda` by scripts/build-cuda.sh; tch against a CUDA libtorch),
# burn's through Vulkan where the driver has it, and the CUDA benches (extraction images/s,
# cached-head samples/s, …) next to the CPU ones. UNVERIFIED: no task so far had a GPU machine.
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
echo "== burn conformance on the GPU through Vulkan (burn's CUDA runtime does not build offline) =="
if ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
  cargo test --release -p backend-burn --features vulkan --test conformance 2>&1 | grep -E "^test |test result|panicked"
else
  echo "no NVIDIA Vulkan ICD (nvidia_icd.json) on this machine: skipping burn on the GPU"
fi
echo "== benches (CPU and CUDA) =="
features=cuda; [ -n "${LIBTORCH:-}" ] && features="$features,tch"
ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1 && features="$features,vulkan"
cargo bench -p alexnet-benches --features "$features" -- --sample-size 10 --warm-up-time 1 --measurement-time 3 alexnet 2>&1 \
  | grep -E "^alexnet/|thrpt:"
