#!/usr/bin/env bash
# Builds a Vulkan-enabled `atso` into .gpu/atso for scripts/gpu-check.sh. burn-wgpu's Vulkan
# path compiles shaders to SPIR-V in process and has no LLVM in its tree, so this builds on a
# machine with no network beyond the crate registry; the binary loads the Vulkan driver
# (libvulkan.so.1 and the GPU vendor's ICD) at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
# Its own target folder (ATSO_VULKAN_TARGET_DIR), never the CPU build's CARGO_TARGET_DIR: a
# Vulkan build there would rebuild the CPU tree's dependencies with other features.
export CARGO_TARGET_DIR="${ATSO_VULKAN_TARGET_DIR:-$HOME/.cache/atso-bench/target-vulkan}"
cargo build --release --features vulkan
mkdir -p .gpu
cp "$CARGO_TARGET_DIR/release/atso" .gpu/atso
strip .gpu/atso
xz -9 -T0 -c .gpu/atso > .gpu/atso.xz
ls -la .gpu/atso .gpu/atso.xz
