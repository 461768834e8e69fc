#!/usr/bin/env bash
# Builds a CUDA-enabled `atso` for scripts/gpu-check.sh on a machine with no network beyond the
# package registries, and without CUDA: .gpu/atso (stripped) and .gpu/atso.xz (to carry to a GPU
# machine). Features: ATSO_GPU_FEATURES, by default "cuda,vulkan" (one binary measures both GPU
# backends in one call; "cuda" alone builds burn-cuda only).
#
# Why the LLVM step: burn-cuda's cubecl-cuda always compiles cubecl-llvm, whose build goes through
# tracel-llvm-bundler 23.1.0-4. That build script downloads an LLVM 23 bundle from outside the
# registries, unless it finds one installed at
#   ${XDG_DATA_HOME:-~/.local/share}/tracel/tracel-llvm-23.1.0-4
# marked by the file `.tracel-llvm-installed`. It then links with that folder's
# `bin/llvm-config --link-static`. The Python package registry carries a relocatable static LLVM
# 23.1.1 (mlc-llvm-static, with NVPTX in mlc-llvm-static-extra-targets), which the bundler accepts
# there. This script downloads the two wheels with pip, unpacks them and links the bundler's
# folder to them. A bundle already installed there (a real folder, e.g. from a machine with
# network) is used as it is.
#
# burn-cuda loads the CUDA driver and NVRTC at run time, so nothing of CUDA is needed to build;
# CUDARC_CUDA_VERSION names the toolkit version to bind (13.0 matches the driver of the GPU
# machines used here). The build uses its own target folder (ATSO_CUDA_TARGET_DIR), never the CPU
# build's CARGO_TARGET_DIR, so it cannot trigger a rebuild of the CPU tree.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${ATSO_CUDA_TARGET_DIR:-$HOME/.cache/atso-bench/target-cuda}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
version=23.1.1.post0
llvm_home="${ATSO_LLVM_HOME:-$HOME/.cache/mlc-llvm-$version}"
sdk="$llvm_home/mlc_llvm_static/static"
prefix="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4"

if [ -d "$prefix" ] && [ ! -L "$prefix" ]; then
  echo "build-cuda: using the LLVM bundle already installed at $prefix"
else
  if [ ! -x "$sdk/bin/llvm-config" ]; then
    echo "build-cuda: downloading mlc-llvm-static $version (static LLVM 23.1.1) with pip"
    if ! python3 -m pip download --quiet --no-deps -d "$llvm_home/wheels" \
      "mlc-llvm-static==$version" "mlc-llvm-static-extra-targets==$version"; then
      echo "build-cuda: pip could not download mlc-llvm-static==$version; see README, Backends, for the bundle a machine with network installs" >&2
      exit 1
    fi
    for wheel in "$llvm_home"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$llvm_home"; done
    chmod +x "$sdk"/bin/*   # zip extraction drops the permission bits
  fi
  if ! "$sdk/bin/llvm-config" --targets-built | grep -qw NVPTX; then
    echo "build-cuda: $sdk/bin/llvm-config lists no NVPTX target; the extra-targets wheel is missing" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$prefix")"
  ln -sfn "$sdk" "$prefix"
  touch "$sdk/.tracel-llvm-installed"
  echo "build-cuda: $prefix -> $sdk (LLVM $("$sdk/bin/llvm-config" --version))"
fi

start=$(date +%s)
cargo build --release --features "${ATSO_GPU_FEATURES:-cuda,vulkan}"
echo "build-cuda: cargo build took $(( $(date +%s) - start )) s (target folder $CARGO_TARGET_DIR)"
mkdir -p .gpu
cp "$CARGO_TARGET_DIR/release/atso" .gpu/atso
strip .gpu/atso
xz -9 -T0 -c .gpu/atso > .gpu/atso.xz
ls -la .gpu/atso .gpu/atso.xz
