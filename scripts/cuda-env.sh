#!/usr/bin/env bash
# Sourced by the CUDA builds (build-cuda.sh, gpu-bundle.sh): the CUDA 13 toolkit from PyPI into
# .venv-cuda (nvcc for candle's kernels, the runtime libraries to link against) and a link-only
# libcuda stub standing in for the driver library, which a GPU machine provides at run time.
# Exports CUDA_HOME, PATH, CUDA_COMPUTE_CAP (default 90: H100/H200), LIBRARY_PATH, RUSTFLAGS and
# CUDA_STUB (the stub's folder). Needs no GPU.
_alexnet_cuda_env() {
  local root venv cu stub l f
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  venv=$root/.venv-cuda
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" || return 1
  "$venv/bin/pip" install --quiet 'cuda-toolkit[nvcc,cudart,nvrtc,cublas,curand,crt,nvvm,cccl]==13.0.2' || {
    echo "pip install cuda-toolkit==13.0.2 failed: is PyPI reachable?" >&2
    return 1
  }
  cu=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13)
  export CUDA_HOME=$cu CUDA_PATH=$cu PATH=$cu/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  # Plain lib*.so names for the linker (the binaries record the versioned sonames).
  for l in cudart cublas cublasLt curand nvrtc; do
    f=$(ls "$cu"/lib/lib$l.so.* 2>/dev/null | head -1) && [ -e "$cu/lib/lib$l.so" ] || ln -sf "$f" "$cu/lib/lib$l.so"
  done
  # Link-only libcuda stub from cuda.h's declarations, with the driver's soname (libcuda.so.1),
  # so binaries ask for the real driver library, whatever the GPU machine names its files. The
  # header renames most entry points to versioned symbols (#define cuStreamDestroy
  # cuStreamDestroy_v2): those are what objects reference, so the stub defines both names.
  stub=$root/target/cuda-stub
  mkdir -p "$stub"
  if [ ! -f "$stub/libcuda.so.1" ] || ! grep -q cuMemcpyHtoDAsync_v2 "$stub/stub.c" 2>/dev/null; then
    # Every driver-API name in the header (cuXxx, cuXxx_v2, cuXxx_ptsz, …), declared or renamed.
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*' "$cu/include/cuda.h" | sort -u | awk '{print "void " $1 "(void) {}"}' >"$stub/stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so.1" "$stub/stub.c" || return 1
    ln -sf libcuda.so.1 "$stub/libcuda.so"
  fi
  export CUDA_STUB=$stub
  export LIBRARY_PATH=$stub:$cu/lib:${LIBRARY_PATH:-}
  export RUSTFLAGS="${RUSTFLAGS:-} -L $stub -L $cu/lib"
}
_alexnet_cuda_env
