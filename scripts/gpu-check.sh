#!/usr/bin/env bash
# The prepared GPU check, ONE device call on one card. On a machine with a GPU, from the
# repository root, with .gpu/atso built by scripts/build-cuda.sh (features cuda and vulkan, so one
# binary measures both; carried xz-compressed as .gpu/atso.xz, unpacked here when needed):
#   scripts/gpu-check.sh OUT
# writes into OUT:
#   gpu.txt                 the card, driver and CUDA version; the commit measured
#   bench-ssl4mis.md        `atso bench --phases` of flex (the host's cores), cuda and vulkan, SSL4MIS
#                           U-Net at SSL4MIS size (batch 8 x 1 x 128 x 128): step times, ratios,
#                           each training step's loss / backward / update parts and CPU use
#   bench-paper.md          the same at paper size (batch 24 x 1 x 256 x 256)
#   pytorch-cuda-ssl4mis.json, pytorch-cuda-paper.json
#                           PyTorch CUDA on the same network, card and sizes (benchmarks/
#                           pytorch_unet.py; it reads the loss back every step, as SSL4MIS does)
#   launches.md             kernel launches per training step on cuda and on vulkan: cubecl's
#                           execution log (level "minimal": names only, no timing, no waits) of
#                           two bench runs that differ by 5 training steps, the difference / 5
#   sweep-cuda.log, runs-cuda.csv, check-cuda.md
#                           experiments/ci.toml (every method, three seeds) trained on cuda and
#                           `atso check`ed against experiments/references/ci.toml, for reading, not
#                           for the exit status: on a GPU the initial weights and dropout masks come
#                           from the GPU's generator, so the runs are new random draws whose spread
#                           (up to 0.18 in cell means, the reference's notes) exceeds the CPU
#                           tolerance. A method far outside that, or failed runs, is the signal.
#   cubecl-environment.tar.gz
#                           cubecl's store of autotune results and compiled kernels (burn's
#                           `persistence`; target/environment/ of this checkout). Unpack it into
#                           target/environment/ of the checkout the next call is made from and
#                           carry "target/environment": that call tunes and compiles nothing it
#                           already did.
# Each part has a timeout; together they stay inside a 10-minute call (9 min 5 s at most).
# Exit status: 0 when every part ran.
set -uo pipefail
out="${1:?usage: scripts/gpu-check.sh OUT}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo=$(pwd)
bin="${ATSO_BIN:-.gpu/atso}"
if [ ! -x "$bin" ] && [ -f "$bin.xz" ]; then
  xz -dc "$bin.xz" > "$bin" && chmod +x "$bin"
fi
status=0
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*'
  vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName|apiVersion'
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "host cores $(nproc)"
} | tee "$out/gpu.txt"

bench() { # name batch resolution timeout
  RUST_LOG=warn timeout "$4" "$bin" bench --backends "flex,cuda,vulkan" --kernels own --threads "$(nproc)" \
    --batch-size "$2" --resolution "$3" --steps 10 --chunk 5 --warmup 3 --phases >"$out/bench-$1.md" 2>&1 || status=1
  cat "$out/bench-$1.md"
}
bench ssl4mis 8 128 120
bench paper 24 256 130

if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  for size in "ssl4mis 8 128" "paper 24 256"; do
    set -- $size
    timeout 30 python3 benchmarks/pytorch_unet.py --device cuda --batch-size "$2" --resolution "$3" \
      --steps 10 --warmup 3 --json >"$out/pytorch-cuda-$1.json" 2>&1 || status=1
    cat "$out/pytorch-cuda-$1.json"
  done
else
  echo "PyTorch with CUDA is not installed here; no PyTorch GPU reference" | tee "$out/pytorch-cuda.txt"
fi

# Kernel launches per training step: cubecl logs every kernel it runs ("Executing <name>") at
# profiling level "minimal", which adds no synchronisation. cubecl reads cubecl.toml from the
# working directory, so the two counting runs start in a folder holding one, and keep the
# checkout's store of tuned kernels.
count_dir=$(mktemp -d)
echo "| backend | launches, 5 steps | launches, 10 steps | per training step |" >"$out/launches.md"
echo "|---|---|---|---|" >>"$out/launches.md"
for backend in cuda vulkan; do
  counts=()
  for steps in 5 10; do
    log="$count_dir/$backend-$steps.log"
    cat >"$count_dir/cubecl.toml" <<EOF
[profiling.logger]
level = "minimal"
file = "$log"
append = false

[environment]
path = { directory = "$repo/target/environment" }
EOF
    (cd "$count_dir" && RUST_LOG=warn timeout 25 "$repo/$bin" bench --backends "$backend" --batch-size 8 --resolution 128 \
      --steps "$steps" --chunk 5 --warmup 2 --inference-batches 0 >/dev/null 2>&1) || status=1
    counts+=("$(grep -c 'Executing ' "$log" 2>/dev/null || echo 0)")
  done
  per_step=$(( (counts[1] - counts[0]) / 5 ))
  echo "| $backend | ${counts[0]} | ${counts[1]} | $per_step |" >>"$out/launches.md"
done
rm -f "$count_dir/cubecl.toml"
cat "$out/launches.md"

work=$(mktemp -d)
RUST_LOG=warn timeout 120 "$bin" sweep experiments/ci.toml --backend cuda --jobs 5 \
  --results "$work/results" --data-base "$work" >"$out/sweep-cuda.log" 2>&1 || status=1
tail -3 "$out/sweep-cuda.log"
cp "$work/results/ci/runs.csv" "$out/runs-cuda.csv" 2>/dev/null || status=1
timeout 15 "$bin" check "$work/results/ci" --reference experiments/references/ci.toml 2>&1 | tee "$out/check-cuda.md"

[ -d target/environment ] && tar -czf "$out/cubecl-environment.tar.gz" -C target environment
exit $status
