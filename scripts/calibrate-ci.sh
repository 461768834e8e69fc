#!/usr/bin/env bash
# Measures how far experiments/ci.toml's cell means move between machines, to calibrate the
# tolerances of experiments/references/ci.toml (docs/methods.md, "Reproducibility").
#
#   scripts/calibrate-ci.sh OUT [ATSO_BINARY]
#
# Runs the CI experiment as CI does (two single-threaded runs at a time) on this machine and under
# scripts/simulate-machine.sh for every other CPU profile, plus once with two threads per run,
# then prints per cell the mean Dice under each and the largest deviation from this machine.
# Needs root (for the simulated machines) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/calibrate-ci.sh OUT [ATSO_BINARY]}
bin=${2:-${CARGO_TARGET_DIR:-$HOME/.cache/atso-bench/target}/release/atso}
mkdir -p "$out"
run() { # name, then the command prefix
  local name=$1; shift
  if [ ! -f "$out/$name/ci/report.csv" ]; then
    "$@" "$bin" sweep experiments/ci.toml --results "$out/$name" --data-base "$out" --jobs "${JOBS:-2}" --threads "${THREADS:-1}" >"$out/$name.log" 2>&1
    "$bin" report "$out/$name/ci" >>"$out/$name.log" 2>&1
  fi
}
run native env
for profile in zen3 icelake sapphire skylake; do
  run "$profile" scripts/simulate-machine.sh "$profile"
done
JOBS=1 THREADS=2 run native-2threads env
python3 - "$out" <<'PY'
import csv, sys, os
out = sys.argv[1]
names = ["native", "zen3", "icelake", "sapphire", "skylake", "native-2threads"]
means = {}
for name in names:
    with open(os.path.join(out, name, "ci", "report.csv")) as f:
        for row in csv.DictReader(f):
            if row["metric"] == "dice_mean":
                means.setdefault(row["method"], {})[name] = float(row["mean"])
print(f"{'method':18}" + "".join(f"{n:>16}" for n in names) + f"{'max |dev|':>12}")
for method, by in means.items():
    dev = max(abs(v - by["native"]) for v in by.values())
    print(f"{method:18}" + "".join(f"{by.get(n, float('nan')):16.4f}" for n in names) + f"{dev:12.4f}")
PY
