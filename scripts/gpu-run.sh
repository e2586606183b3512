#!/usr/bin/env bash
# Runs the GPU checks from the bundle that scripts/gpu-bundle.sh built, in one call, on a machine
# with no Rust toolchain: unpacks bundle.tar.xz (beside this script) into a fresh folder, then
#   1. prints the GPU (nvidia-smi),
#   2. `alexnet selfcheck` on each backend (the conformance suite against the f64 reference),
#   3. fc6–fc8 training on the bundled photo subset per backend, with and without the feature
#      cache (test accuracy, extraction from JPEGs, cached and uncached samples/s),
#   4. the extraction, cached-step and uncached-step benches at each batch size,
#   5. the same work in the machine's PyTorch (scripts/pytorch_baseline.py) for ratios,
# and writes gpu-run.md (tables), gpu-run.json and every raw output into OUT.
# Needs a Python with torch 2.11 (its torch/lib serves the tch backend; its nvidia/* libraries the
# CUDA runtime), xxhash and safetensors; PYTHON picks it (default python3).
# Usage: gpu-run.sh [--device cuda|cpu] OUT
#   --device cpu: the dry run of the same steps on a machine without a GPU (smaller sizes).
set -uo pipefail
device=cuda
if [ "${1:-}" = "--device" ]; then
  device=${2:?--device needs cuda or cpu}
  shift 2
fi
case "$device" in cuda | cpu) ;; *) echo "--device $device: expected cuda or cpu" >&2; exit 2 ;; esac
out=${1:?usage: gpu-run.sh [--device cuda|cpu] OUT}
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$here/bundle.tar.xz" ] || { echo "$here/bundle.tar.xz not found: build it with scripts/gpu-bundle.sh" >&2; exit 2; }
mkdir -p "$out" && out=$(cd "$out" && pwd)
exec > >(tee -a "$out/log.txt") 2>&1
start=$(date +%s)
stamp() { echo "== [$(($(date +%s) - start)) s] $*"; }

if [ "$device" = cuda ]; then
  steps=${STEPS:-300} nocache_steps=${NOCACHE_STEPS:-100} batches=${BATCHES:-"64 256"} bench_s=3 limit=150
else
  steps=${STEPS:-30} nocache_steps=${NOCACHE_STEPS:-10} batches=${BATCHES:-16} bench_s=2 limit=900
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/alexnet-gpu.XXXXXX")
stamp "unpacking into $work"
tar -xJf "$here/bundle.tar.xz" -C "$work" || exit 1
cat "$work/MANIFEST.txt" | head -3

PY=${PYTHON:-python3}
torch_lib=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
  echo "$PY has no torch: set PYTHON to a Python with torch 2.11" >&2
  exit 1
}
nv=$($PY -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "*", "lib", "*.so*"))})))' 2>/dev/null || true)
export LD_LIBRARY_PATH="$torch_lib:$nv:$work/lib:${LD_LIBRARY_PATH:-}"
# The driver library: the machine's, or (dry run only) the link stub, so the binary loads.
has_driver() {
  ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 ' && return 0
  for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/lib/wsl/lib; do [ -e "$d/libcuda.so.1" ] && return 0; done
  return 1
}
if ! has_driver; then
  [ "$device" = cuda ] && echo "warning: no libcuda.so.1 (NVIDIA driver) found; CUDA backends will fail"
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$work/lib/stub"
fi
# burn reaches the GPU through Vulkan: the driver's ICD, described if the machine lacks the file.
if [ "$device" = cuda ] && ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
  if ldconfig -p 2>/dev/null | grep -q libGLX_nvidia.so.0; then
    mkdir -p "$work/icd.d"
    echo '{"file_format_version": "1.0.0", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3.0"}}' >"$work/icd.d/nvidia_icd.json"
    export VK_ICD_FILENAMES=$work/icd.d/nvidia_icd.json VK_DRIVER_FILES=$work/icd.d/nvidia_icd.json
    echo "no Vulkan ICD file: described libGLX_nvidia.so.0 in $VK_ICD_FILENAMES"
  else
    echo "no NVIDIA Vulkan ICD and no libGLX_nvidia.so.0: burn on the GPU will fail"
  fi
fi
export ALEXNET_HOME=$work/home ALEXNET_WEIGHTS=$work/weights/alexnet-imagenet-conv.safetensors
alexnet=$work/bin/alexnet
data=$work/data/flowers
backends="candle tch burn"

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
nproc
$PY -c 'import torch; print("python torch", torch.__version__, "cuda available:", torch.cuda.is_available())'
"$alexnet" --version || { echo "the alexnet binary does not start (libraries above)" >&2; exit 1; }

for b in $backends; do
  stamp "selfcheck $b on $device"
  timeout $limit "$alexnet" --backend $b --device $device selfcheck --data "$data" --json >"$out/selfcheck-$b.json"
  echo "exit status $?"
done

for b in $backends; do
  stamp "train fc6 on the subset: $b on $device, cached ($steps steps) and uncached ($nocache_steps steps)"
  timeout $limit "$alexnet" --backend $b --device $device train --data "$data" --out "$out/train-$b" \
    --steps $steps --eval-every $((steps / 5)) --cache-dir "$work/cache-$b" 2>&1 | grep -vE '^\s*$' | tail -8
  timeout $limit "$alexnet" --backend $b --device $device train --data "$data" --out "$out/train-$b-nocache" \
    --no-cache --steps $nocache_steps --eval-every $nocache_steps 2>&1 | grep -vE '^\s*$' | tail -4
done

if [ "$device" = cuda ]; then filter='^alexnet/(extract|head_step|full_step)/[a-z]+-(cuda|vulkan)0/'; else filter='^alexnet/(extract|head_step|full_step)/[a-z]+/'; fi
for batch in $batches; do
  stamp "benches at batch $batch"
  crit=$work/criterion-b$batch
  ALEXNET_BENCH_CUDA=$([ "$device" = cuda ] && echo 1 || echo 0) ALEXNET_BENCH_BATCH=$batch CRITERION_HOME=$crit \
    ALEXNET_BENCH_PHOTOS=$data/daisy timeout 300 "$work/bin/alexnet-benches" --bench --warm-up-time 1 \
    --measurement-time $bench_s --sample-size 10 "$filter" 2>&1 | grep -E '^\[|thrpt|Not run|^\|' | head -40
  mkdir -p "$out/bench-b$batch"
  (cd "$crit" && find . -path '*/new/*.json' -exec cp --parents {} "$out/bench-b$batch/" \;)
  cp "$crit/alexnet-summary.md" "$out/bench-b$batch.md" 2>/dev/null
done

stamp "PyTorch on $device: synthetic batches and fc6 on the subset"
timeout 300 $PY "$work/pytorch_baseline.py" --device $device --synthetic "${batches// /,}" --synthetic-seconds $bench_s \
  --out "$out/pytorch-synthetic.json"
timeout 300 $PY "$work/pytorch_baseline.py" --device $device --data "$data" --weights "$ALEXNET_WEIGHTS" \
  --steps $steps --eval-every $((steps / 5)) --no-cache-steps $nocache_steps --out "$out/pytorch-fc6.json" | tail -4

stamp "summary"
$PY "$work/gpu_summary.py" "$out" "$device" && cat "$out/gpu-run.md"
stamp "done in $(($(date +%s) - start)) s"
rm -rf "$work"
