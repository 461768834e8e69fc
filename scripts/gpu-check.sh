#!/usr/bin/env bash
# The prepared GPU check: on a machine with a GPU, from the repository root, after
# scripts/build-vulkan.sh (or scripts/build-cuda.sh with ATSO_GPU_BACKEND=cuda) built .gpu/atso:
#   scripts/gpu-check.sh OUT
# writes into OUT (six files):
#   gpu.txt            the GPU's description
#   bench.md           `atso bench --phases` of the GPU backend against the CPU in one run
#                      (SSL4MIS U-Net, batch 8 x 1 x 128 x 128): step times, then each training
#                      step's loss / backward / update parts and the CPU seconds per wall second
#                      of the process and its busy threads (where a slow step's time goes)
#   pytorch-cuda.json  PyTorch CUDA on the same network and card, where torch with CUDA is there
#   sweep-GPU.log, runs-GPU.csv
#                      experiments/ci.toml (every method, three seeds) trained on the GPU
#   check-GPU.md       `atso check` of those runs against experiments/references/ci.toml, for
#                      reading, not for the exit status: on a GPU, initial weights and dropout
#                      masks come from the GPU backend's generator, so its runs are new random
#                      draws, and the reference's notes measured redraws moving cell means by up
#                      to 0.18, beyond the 0.12 tolerance for CPUs. A method far outside that
#                      spread, or failed runs, is the signal.
# The GPU compiles and autotunes each new kernel shape on first use, in every process, so first
# runs are slower (docs/benchmarks.md). The timeouts add up to 9 minutes, inside a 10-minute
# device call. Exit status: 0 when every part ran.
set -uo pipefail
out="${1:?usage: scripts/gpu-check.sh OUT}"
mkdir -p "$out"
bin="${ATSO_BIN:-.gpu/atso}"
backend="${ATSO_GPU_BACKEND:-vulkan}"
status=0
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName|apiVersion'; } | tee "$out/gpu.txt"
RUST_LOG=warn timeout 150 "$bin" bench --backends "flex,$backend" --kernels own --threads "$(nproc)" --steps 10 --warmup 3 --phases 2>&1 | tee "$out/bench.md" || status=1
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  timeout 90 python3 benchmarks/pytorch_unet.py --device cuda --steps 10 --warmup 3 --json | tee "$out/pytorch-cuda.json" || status=1
else
  echo "PyTorch with CUDA is not installed here; no PyTorch GPU reference" | tee "$out/pytorch-cuda.txt"
fi
work=$(mktemp -d)
RUST_LOG=warn timeout 270 "$bin" sweep experiments/ci.toml --backend "$backend" --jobs 5 \
  --results "$work/results" --data-base "$work" >"$out/sweep-$backend.log" 2>&1 || status=1
tail -3 "$out/sweep-$backend.log"
cp "$work/results/ci/runs.csv" "$out/runs-$backend.csv" 2>/dev/null || status=1
timeout 30 "$bin" check "$work/results/ci" --reference experiments/references/ci.toml 2>&1 | tee "$out/check-$backend.md"
exit $status
