#!/usr/bin/env bash
# Builds a CUDA-enabled `atso` into .gpu/atso for scripts/gpu-check.sh. burn-cuda loads the CUDA
# driver and NVRTC at run time, so this builds on a machine without CUDA when the toolkit version
# is named (13.0 matches the driver of the GPU machines used here; override CUDARC_CUDA_VERSION).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/atso-bench/target-cuda}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
cargo build --release --features cuda
mkdir -p .gpu
cp "$CARGO_TARGET_DIR/release/atso" .gpu/atso
strip .gpu/atso
ls -la .gpu/atso
