#!/usr/bin/env bash
# The prepared GPU check: on a machine with a GPU, from the repository root, after
# scripts/build-vulkan.sh (or scripts/build-cuda.sh with ATSO_GPU_BACKEND=cuda) built .gpu/atso:
#   scripts/gpu-check.sh OUT
# writes into OUT: the GPU's description; `atso bench` of the GPU backend against the CPU in one
# run (SSL4MIS U-Net, batch 8 x 1 x 128 x 128); PyTorch CUDA on the same network and card where
# torch with CUDA is installed; and a small sweep (experiments/gpu-smoke.toml) on the CPU and on
# the GPU, both of which must succeed. Exit status: 0 when every part ran.
set -uo pipefail
out="${1:?usage: scripts/gpu-check.sh OUT}"
mkdir -p "$out"
bin="${ATSO_BIN:-.gpu/atso}"
backend="${ATSO_GPU_BACKEND:-vulkan}"
status=0
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName|apiVersion'; } | tee "$out/gpu.txt"
RUST_LOG=warn timeout 300 "$bin" bench --backends "flex,$backend" --kernels own --threads "$(nproc)" --steps 10 --warmup 3 2>&1 | tee "$out/bench.md" || status=1
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  python3 benchmarks/pytorch_unet.py --device cuda --steps 10 --warmup 3 --json | tee "$out/pytorch-cuda.json" || status=1
else
  echo "PyTorch with CUDA is not installed here; no PyTorch GPU reference" | tee "$out/pytorch-cuda.txt"
fi
work=$(mktemp -d)
cp experiments/gpu-smoke.toml "$work/"
for b in flex "$backend"; do
  (cd "$work" && RUST_LOG=warn timeout 300 "$OLDPWD/$bin" sweep gpu-smoke.toml --backend "$b" --results "results-$b") \
    >"$out/sweep-$b.log" 2>&1 || status=1
  tail -3 "$out/sweep-$b.log"
  cp "$work/results-$b/gpu-smoke/runs.csv" "$out/runs-$b.csv" 2>/dev/null || status=1
done
exit $status
