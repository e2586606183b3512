#!/usr/bin/env bash
# Builds the CLI and benches with CUDA (candle's `cuda` feature) on a machine without a GPU or a
# system CUDA toolkit: the CUDA 13 toolkit comes from PyPI, and a link-only libcuda stub stands
# in for the driver library (the real one is loaded at run time on a GPU machine).
# Usage: scripts/build-cuda.sh [extra cargo args]   (CUDA_COMPUTE_CAP defaults to 90: H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-cuda
[ -x $venv/bin/pip ] || python3 -m venv $venv
$venv/bin/pip install --quiet 'cuda-toolkit[nvcc,cudart,nvrtc,cublas,curand,crt,nvvm,cccl]==13.0.2'
cu=$(ls -d $PWD/$venv/lib/python3*/site-packages/nvidia/cu13)
export CUDA_HOME=$cu CUDA_PATH=$cu PATH=$cu/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# Plain lib*.so names for the linker.
for l in cudart cublas cublasLt curand nvrtc; do
  f=$(ls $cu/lib/lib$l.so.* 2>/dev/null | head -1) && [ -e $cu/lib/lib$l.so ] || ln -sf "$f" $cu/lib/lib$l.so
done
# Link-only libcuda.so stub generated from cuda.h's function declarations.
stub=$PWD/target/cuda-stub
mkdir -p $stub
if [ ! -f $stub/libcuda.so ]; then
  grep -oE '^CUresult CUDAAPI [A-Za-z0-9_]+' $cu/include/cuda.h | awk '{print "void " $3 "(void) {}"}' | sort -u > $stub/stub.c
  cc -shared -fPIC -o $stub/libcuda.so $stub/stub.c
fi
export LIBRARY_PATH=$stub:$cu/lib:${LIBRARY_PATH:-}
export RUSTFLAGS="${RUSTFLAGS:-} -L $stub -L $cu/lib"
cargo build --release -p alexnet-cli --features cuda "$@"
cargo bench -p alexnet-benches --features cuda --no-run "$@"
echo "built target/release/alexnet with CUDA; on a GPU machine: scripts/gpu-check.sh"
