#!/usr/bin/env bash
# Builds the GPU bundle here (no GPU needed) for a GPU machine that has an NVIDIA driver and a
# Python with torch 2.11.0+cu130, but no Rust toolchain and no registry access:
#   target/gpu-bundle/bundle.tar.xz   one stripped `alexnet` with candle on CUDA, tch and burn on
#                                     the GPU through Vulkan; the benches binary; a photo subset;
#                                     AlexNet's conv weights; libvulkan.so.1; a libcuda stub (used
#                                     only where no driver is, for the CPU dry run)
#   target/gpu-bundle/gpu-run.sh      unpacks it and runs the checks (scripts/gpu-run.sh)
#   target/gpu-bundle/MANIFEST.txt    every file with its size
# tch links against the libtorch of PyPI's torch 2.11.0 (the cu130 build, scripts/setup-libtorch.sh),
# the same version as the GPU machine's Python, whose torch/lib gpu-run.sh puts on LD_LIBRARY_PATH;
# libtorch does not travel. burn's CUDA runtime needs LLVM 23 from tracel's GitHub releases at
# build time (cubecl-cuda → cubecl-llvm → tracel-llvm-bundler; Debian has LLVM ≤ 19), so burn
# reaches the GPU through wgpu/Vulkan, whose ICD the NVIDIA driver provides.
# Usage: scripts/gpu-bundle.sh   (PER_CLASS=80 photos per class; the archive must stay ≤ 60 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
per_class=${PER_CLASS:-80}
out=$root/target/gpu-bundle
limit=$((60 * 1024 * 1024))
photos=$root/../shared/data/flower_photos
home="${ALEXNET_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/alexnet-rs}"
weights="${ALEXNET_WEIGHTS:-$home/weights/alexnet-imagenet-conv.safetensors}"
test -d "$photos" || { echo "$photos not found beside the repository" >&2; exit 1; }

source scripts/setup-libtorch.sh >/dev/null
source scripts/cuda-env.sh
[ -s "$weights" ] || cargo run --quiet -p alexnet-cli -- weights fetch --out "$weights"

# Its own target folder (other features, stripped): the CPU build in target/release stays as is.
export CARGO_TARGET_DIR=$root/target/gpu
export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_BENCH_DEBUG=false CARGO_PROFILE_BENCH_STRIP=symbols
echo "== building alexnet (candle cuda, tch, burn vulkan) and the benches into $CARGO_TARGET_DIR"
cargo build --release -p alexnet-cli --features cuda,tch,burn-vulkan
bench=$(cargo bench -p alexnet-benches --features cuda,tch,vulkan --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "backends":
        print(m["executable"])')
[ -x "$bench" ] || { echo "benches binary not found" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,lib/stub,weights,data/flowers}
cp "$CARGO_TARGET_DIR/release/alexnet" "$stage/bin/alexnet"
cp "$bench" "$stage/bin/alexnet-benches"
cp "$CUDA_STUB/libcuda.so.1" "$stage/lib/stub/"
cp "$weights" "$stage/weights/alexnet-imagenet-conv.safetensors"
cp scripts/pytorch_baseline.py scripts/gpu_summary.py scripts/gpu-run.sh "$stage/"

# The Vulkan loader (Debian's libvulkan1) for burn; the GPU machine's driver provides the ICD.
( cd "$stage" && apt-get download libvulkan1 >/dev/null 2>&1 && dpkg-deb -x libvulkan1_*.deb vk && rm -f libvulkan1_*.deb ) || true
vk=$(ls "$stage"/vk/usr/lib/*/libvulkan.so.1.* 2>/dev/null | head -1 || true)
if [ -n "$vk" ]; then cp "$vk" "$stage/lib/libvulkan.so.1"; else echo "warning: no libvulkan1 package: burn on the GPU needs the machine's own Vulkan loader" >&2; fi
rm -rf "$stage/vk"

# The photo subset: per class the PER_CLASS photos with the smallest xxh3-64 of their relative
# path, the hash the split buckets (so the subset is an unbiased sample, the same every time).
[ -x .venv/bin/python ] && .venv/bin/python -c "import xxhash" 2>/dev/null || .venv/bin/pip install --quiet xxhash
.venv/bin/python - "$photos" "$stage/data/flowers" "$per_class" <<'EOF'
import shutil, sys, xxhash
from pathlib import Path
src, dst, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for c in sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")):
    files = [f for f in c.iterdir() if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png")]
    files.sort(key=lambda f: xxhash.xxh3_64_intdigest(f"{c.name}/{f.name}".encode()))
    (dst / c.name).mkdir(parents=True)
    for f in files[:n]:
        shutil.copy2(f, dst / c.name / f.name)
EOF
cp "$photos/LICENSE.txt" "$stage/data/flowers/" 2>/dev/null || true

# Sizes before packing, then the archive.
(
  cd "$stage"
  echo "# alexnet-rs GPU bundle, $(date -u +%Y-%m-%dT%H:%MZ), git $(git -C "$root" rev-parse --short HEAD)"
  echo "# bytes  path"
  find . -type f ! -path './data/flowers/*/*' -printf '%s  %P\n' | sort -k2
  for c in data/flowers/*/; do printf '%s  %s (%s photos)\n' "$(du -sb "$c" | cut -f1)" "${c%/}" "$(ls "$c" | wc -l)"; done
) >"$stage/MANIFEST.txt"
mkdir -p "$out"
rm -f "$out/bundle.tar.xz.tmp"
# One xz stream with a dictionary larger than a binary: the benches binary shares most of its
# code with alexnet, and a window that spans both stores it once (decompression needs 256 MiB).
(cd "$stage" && tar -cf - bin lib weights MANIFEST.txt ./*.py ./*.sh data) | xz -6 --lzma2=preset=6,dict=256MiB >"$out/bundle.tar.xz.tmp"
mv "$out/bundle.tar.xz.tmp" "$out/bundle.tar.xz"
cp scripts/gpu-run.sh "$out/gpu-run.sh"
size=$(stat -c %s "$out/bundle.tar.xz")
{ cat "$stage/MANIFEST.txt"; echo "$size  bundle.tar.xz (xz, compressed)"; } >"$out/MANIFEST.txt"
cat "$out/MANIFEST.txt"
if [ "$size" -gt "$limit" ]; then
  echo "bundle.tar.xz is $((size / 1048576)) MiB, over 60 MiB: lower PER_CLASS" >&2
  exit 1
fi
echo "bundle: $out ($((size / 1048576)) MiB). CPU dry run: cp -r $out /tmp/b && /tmp/b/gpu-run.sh --device cpu /tmp/b-out"
echo "on the GPU machine: target/gpu-bundle/gpu-run.sh \$OUT  (device tool: carry target/gpu-bundle)"
