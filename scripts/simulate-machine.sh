#!/usr/bin/env bash
# Runs a command as if on a CPU with another cache geometry, to measure how much CPU results
# move between machines (docs/methods.md, "Reproducibility across machines").
#
# The CPU backend's GEMM (the `gemm` crate) sizes its blocking, and so the order in which it sums
# products, from the cache geometry it reads in /sys/devices/system/cpu/cpu*/cache. This script
# gives the command a private mount namespace in which that tree describes the chosen CPU; nothing
# else about the machine changes. Needs root (unshare -m, mount --bind).
#
#   scripts/simulate-machine.sh <profile> <command...>
#
# Profiles (data-cache geometry of real CPU families: L1d size/ways, L2, L3):
#   zen4     32K/8,  1024K/8,  32768K/16   AMD EPYC 9004 (Genoa)
#   zen3     32K/8,   512K/8,  32768K/16   AMD EPYC 7003 (Milan)
#   icelake  48K/12, 1280K/20, 55296K/12   Intel Xeon 3rd gen (Ice Lake-SP)
#   sapphire 48K/12, 2048K/16, 107520K/15  Intel Xeon 4th gen (Sapphire Rapids)
#   skylake  32K/8,  1024K/16, 39424K/11   Intel Xeon 1st/2nd gen (Skylake/Cascade Lake-SP)
set -euo pipefail
profile=${1:?profile}
shift
command=("$@")
case "$profile" in
  zen4) l1=32K; w1=8; l2=1024K; w2=8; l3=32768K; w3=16 ;;
  zen3) l1=32K; w1=8; l2=512K; w2=8; l3=32768K; w3=16 ;;
  icelake) l1=48K; w1=12; l2=1280K; w2=20; l3=55296K; w3=12 ;;
  sapphire) l1=48K; w1=12; l2=2048K; w2=16; l3=107520K; w3=15 ;;
  skylake) l1=32K; w1=8; l2=1024K; w2=16; l3=39424K; w3=11 ;;
  *) echo "unknown profile $profile" >&2; exit 2 ;;
esac
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
cpus=$(nproc --all)
for ((c = 0; c < cpus; c++)); do
  for spec in "0 1 Data $l1 $w1" "1 1 Instruction 32K 8" "2 2 Unified $l2 $w2" "3 3 Unified $l3 $w3"; do
    set -- $spec
    d=$fake/cpu$c/cache/index$1
    mkdir -p "$d"
    echo "$2" >"$d/level"; echo "$3" >"$d/type"; echo "$4" >"$d/size"; echo "$5" >"$d/ways_of_associativity"
    echo 64 >"$d/coherency_line_size"
    if [ "$1" = 3 ]; then echo "0-$((cpus - 1))" >"$d/shared_cpu_list"; else echo "$c" >"$d/shared_cpu_list"; fi
  done
done
unshare -m bash -c 'mount --bind "$0" /sys/devices/system/cpu && exec "$@"' "$fake" "${command[@]}"
