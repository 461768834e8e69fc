#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from the repository root after
# scripts/build-cuda.sh: (1) the same tiny sweep on flex and on cuda, both must succeed;
# (2) `atso bench` with flex as the in-run reference for cuda. Writes logs to $OUT (or ./gpu-out).
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
bin=.gpu/atso
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
work=$(mktemp -d)
cp experiments/gpu-smoke.toml "$work/"
status=0
for backend in flex cuda; do
  (cd "$work" && RUST_LOG=warn timeout 240 "$OLDPWD/$bin" sweep gpu-smoke.toml --backend "$backend" --results "results-$backend") \
    >"$out/sweep-$backend.log" 2>&1 || status=1
  tail -3 "$out/sweep-$backend.log"
  cp "$work/results-$backend/gpu-smoke/runs.csv" "$out/runs-$backend.csv" 2>/dev/null || true
done
RUST_LOG=warn timeout 240 "$bin" bench --backends flex,cuda --steps 5 --warmup 2 2>&1 | tee "$out/bench.md" || status=1
exit $status
