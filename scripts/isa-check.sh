#!/usr/bin/env bash
# The CPU kernels on a machine whose instruction sets this one lacks (AVX-512 above all), in one
# short call. The development machines differ by session (AVX2 only, or AVX-512); the lent GPU
# machines' hosts have had Intel Xeons with AVX-512. Nothing is built there:
#   scripts/isa-check.sh --build      (here) builds .isa/: the release `atso` and the unit-test
#                                     binaries of atso-kernels and atso-harness, stripped and
#                                     xz-compressed (carry ".isa")
#   scripts/isa-check.sh OUT          (there, from the repository root) writes into OUT:
#     cpu.txt        the CPU, its SIMD flags, what the kernels detect, the commit measured
#     tests.txt      the instruction-set tests on every path the CPU has, printed as they run:
#                    the micro-kernels and elementwise passes against their definitions bit for
#                    bit, the max-pool gradient's paths against its definition, the convolutions
#                    against burn's and a plain one (on the best path), a whole U-Net training
#                    step compared across paths bit for bit (`SKIPPED <isa>` names a path the
#                    CPU lacks), the fused loss against the burn ops loss.rs writes it as, and
#                    the ordered sums against flex's own sum on this CPU's width
#     ci-check.txt   the CI experiment (`atso sweep experiments/ci.toml --jobs 2 --threads 1`,
#                    about a minute) checked with `atso check` against experiments/references/
#                    ci.toml, whose exact values apply on AVX2 and AVX-512 machines: whole runs
#                    on this CPU against the values the reference holds
#     bench-<isa>-<n>.md
#                    `atso bench --threads 2 --kernels own --vs-pytorch --steps 11 --rounds 3` on
#                    two cores (taskset 0,1), with the kernels capped at each SIMD path the CPU has
#                    (ATSO_KERNEL_ISA=avx2, avx512; portable only where there is no other; PyTorch
#                    capped the same way, so an avx2 file stands in for an AVX2-only CPU), twice
#                    per path, the paths alternating; flex and PyTorch (CPU, 2 threads) take turns
#                    three times in each, so each file carries the median of its rounds' ratios
#                    and the share of PyTorch's GEMM rate (single pairs swung from 1.03x to 1.35x
#                    on a noisy host)
# Run natively on a 2-core Intel Xeon with AVX-512, on b9c59ad's binaries: 120 s in all with one
# round per bench file (three files per path), 209 s as it is now; `--build` took 56 s on a warm
# target dir and gives 15 MB of xz-compressed binaries.
# Exit status: 0 when the tests passed and every bench ran; a bench needs python3 with torch
# (without it the bench files say so and the status is 1 even when the tests passed).
set -uo pipefail
repo=$(pwd)
if [ "${1:-}" = "--build" ]; then
  set -e
  mkdir -p .isa
  cargo build --release --workspace
  cargo test --release --workspace --lib --no-run --message-format=json \
    | python3 scripts/test-executables.py atso_kernels atso_harness | while read -r name path; do
    strip -o ".isa/$name-tests" "$path"
  done
  strip -o .isa/atso "${CARGO_TARGET_DIR:-target}/release/atso"
  git rev-parse HEAD > .isa/commit
  for f in .isa/atso .isa/atso_kernels-tests .isa/atso_harness-tests; do
    xz -T2 -6 -f "$f"
  done
  du -ch .isa/*.xz
  exit 0
fi
out="${1:?usage: scripts/isa-check.sh --build | scripts/isa-check.sh OUT}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
for f in atso atso_kernels-tests atso_harness-tests; do
  if [ ! -x ".isa/$f" ] && [ -f ".isa/$f.xz" ]; then
    xz -dc ".isa/$f.xz" > ".isa/$f" && chmod +x ".isa/$f"
  fi
done
status=0
{
  echo "commit measured: $(cat .isa/commit 2>/dev/null || echo unknown)"
  lscpu | grep -E "Model name|^CPU\(s\)|L1d|L2|L3"
  echo "SIMD flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma)' | tr '\n' ' ')"
} > "$out/cpu.txt"
cat "$out/cpu.txt"
# The tests, with output shown (`--nocapture`), one at a time so the forced paths take turns.
filters=(microkernel elementwise isa:: conv_cpu pool_cpu ordered_sum ordered_reductions a_unet_training_step_gives_the_same_bits_on_every_isa fused_loss_is_bitwise_burns)
for t in atso_kernels-tests atso_harness-tests; do
  echo "== $t" >> "$out/tests.txt"
  timeout 240 ".isa/$t" --test-threads 1 --nocapture "${filters[@]}" >> "$out/tests.txt" 2>&1 || status=1
done
tail -n 30 "$out/tests.txt"
# Whole runs: the CI experiment against the reference's exact values.
rm -rf "$out/ci-results" "$out/ci-data"
if timeout 600 taskset -c 0,1 .isa/atso sweep experiments/ci.toml --jobs 2 --threads 1 --results "$out/ci-results" \
  --data-base "$out/ci-data" > "$out/ci-sweep.log" 2>&1; then
  .isa/atso check "$out/ci-results/ci" --reference experiments/references/ci.toml > "$out/ci-check.txt" 2>&1 || status=1
else
  echo "the CI experiment did not run (see ci-sweep.log)" > "$out/ci-check.txt"; status=1
fi
tail -n 3 "$out/ci-check.txt"
# Which paths this CPU has, as the kernels see them (the names `simd` records carry).
isas=(portable avx2)
grep -qw avx512f /proc/cpuinfo && isas+=(avx512)
grep -qw avx2 /proc/cpuinfo || isas=(portable)
for round in 1 2; do
  for isa in "${isas[@]}"; do
    [ "$isa" = portable ] && [ "${#isas[@]}" -gt 1 ] && continue
    ATSO_KERNEL_ISA=$isa timeout 240 taskset -c 0,1 .isa/atso bench --threads 2 --kernels own --vs-pytorch \
      --steps 11 --rounds 3 --pytorch-script "$repo/benchmarks/pytorch_unet.py" > "$out/bench-$isa-$round.md" 2>&1 || status=1
    grep -E "^kernels:|^\| flex|^PyTorch|^GEMM rate|^throughput" "$out/bench-$isa-$round.md" | head -7
  done
done
exit $status
