#!/usr/bin/env bash
# The kernels' AVX-512 path, run and compared bit for bit on an emulated AVX-512 CPU, on a machine
# that has none.
#
# Why: the kernels take AVX-512 at run time wherever the CPU has it (the Intel Xeons of most labs
# and clouds), so it is the path many users run; on an AVX2-only machine its tests can only print
# `SKIPPED Avx512`. Debian's Bochs 2.7 emulates a Skylake-X (AVX-512 F, CD, BW, DQ, VL). This
# script boots Debian's cloud kernel in it with an initramfs that holds the release unit-test
# binaries, and runs there all of atso-kernels' unit tests (the micro-kernels, elementwise passes,
# convolutions and max-pool gradient, each path against its definition bit for bit) and the
# harness's `kernel_paths` tests (a whole U-Net training step on the AVX-512, AVX2 and portable
# paths, compared bit for bit) and `fused_loss_is_bitwise_burns` (the fused loss against the
# burn ops loss.rs writes it as). It checks bits, not speed: an emulator's timings
# mean nothing (scripts/isa-check.sh times real AVX-512 hardware).
#
# Usage: scripts/emulate-avx512.sh [--sweep] [OUT]   (OUT defaults to
#        $CARGO_TARGET_DIR/avx512-emulated, or target/avx512-emulated; no spaces in it)
#   --sweep  also runs the CI experiment cut to its first seed and SWEEP_STEPS training steps
#            (default 12) per method, every method, one thread, with the release `atso` in the
#            guest (everything on AVX-512: the project's kernels and flex's own) and on this
#            machine, and passes when the two sweeps' cases.csv and curves.csv (every test case's
#            scores, every recorded loss) agree value for value: whole runs, not only the kernels,
#            give the same bits on a CPU with AVX-512 as on this one. About 14 minutes more.
# Needs: the Debian packages below (installed with apt-get when missing and run as root; a
#        static busybox, from busybox-static, which replaces Debian's dynamic `busybox` package),
#        one linux-image-*-cloud-amd64 package (fetched with apt-get download, kept in OUT), and
#        the release unit-test binaries (cargo builds them if they are stale).
# Writes: OUT/serial-<part>.log (the emulated machine's console: its CPU flags, the tests' output)
#        and OUT/summary.txt.
# Exit status: 0 when the guest's kernels saw AVX-512 and every part's tests ran and passed with
#        none skipped; 1 when a test failed or was skipped, a part ran no test, or the tests did
#        not finish; 2 when the emulator could not be set up or its guest never started.
#
# Bochs 2.7's quirks, each met on the guest kernel's command line (found by booting it):
#  - its CPUID gives the XSAVES/XSAVEC (compacted) area the standard area's size, so Linux finds
#    an "XSAVE consistency problem" and turns AVX off: `clearcpuid=xsaves,xsavec` makes Linux use
#    the standard format, whose sizes are right;
#  - its models list PKRU among the XSAVE features but give it no size: `clearcpuid=pku,ospke`;
#  - its Tiger Lake model advertises APERF/MPERF, registers Bochs does not have:
#    `clearcpuid=aperfmperf` (kept for every model).
#  Its Ice Lake and Tiger Lake models hang early in the guest's boot, and the generic model has
#  no CPUID leaf 7 (no AVX2); Debian's build starts in its debugger (`-rc` answers `c`), and its
#  text display needs a terminal (`script` gives it one).
set -uo pipefail
sweep=0
if [ "${1:-}" = "--sweep" ]; then sweep=1; shift; fi
out="${1:-}"
if [ -n "$out" ]; then  # relative to where the script was called from
  mkdir -p "$out" && out=$(cd "$out" && pwd) || { echo "emulate-avx512: cannot make $out" >&2; exit 2; }
fi
cd "$(dirname "$0")/.."
repo=$(pwd)
target="${CARGO_TARGET_DIR:-$repo/target}"
out="${out:-$target/avx512-emulated}"
case "$out" in *[[:space:]]*) echo "emulate-avx512: OUT must not contain spaces: $out" >&2; exit 2 ;; esac
mkdir -p "$out" && out=$(cd "$out" && pwd) || { echo "emulate-avx512: cannot make $out" >&2; exit 2; }
work="$out/work"
setup_failed() { echo "emulate-avx512: $*" | tee "$out/summary.txt" >&2; exit 2; }

# 1. The emulator and the tools that make its boot disc; a static busybox for the guest.
packages=(bochs bochs-term bochsbios vgabios isolinux syslinux-common xorriso)
static_busybox() { [ -x /bin/busybox ] && grep -q "not a dynamic executable" <<<"$(ldd /bin/busybox 2>&1)"; }
static_busybox || packages+=(busybox-static)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || setup_failed "missing Debian packages: ${missing[*]} (apt-get install them)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$out/apt.log" 2>&1 || setup_failed "apt-get could not install ${missing[*]} (see $out/apt.log)"
fi
static_busybox || setup_failed "/bin/busybox is not a static executable (install busybox-static)"

# 2. The guest's kernel: Debian's cloud image (the smallest package with a serial console).
mkdir -p "$work"
kernel_package() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
kernel_package=$(kernel_package)
if [ -z "$kernel_package" ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >>"$out/apt.log" 2>&1 && kernel_package=$(kernel_package)
fi
[ -n "$kernel_package" ] || setup_failed "apt-cache knows no linux-image-cloud-amd64 (run apt-get update)"
if ! ls "$work/$kernel_package"_*.deb >/dev/null 2>&1; then
  (cd "$work" && apt-get download "$kernel_package" >"$out/apt-download.log" 2>&1) \
    || setup_failed "apt-get download $kernel_package failed (see $out/apt-download.log)"
fi
rm -rf "$work/kernel" && dpkg-deb -x "$(ls "$work/$kernel_package"_*.deb | head -1)" "$work/kernel" \
  || setup_failed "could not unpack $kernel_package"
vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-* 2>/dev/null | head -1)
[ -n "$vmlinuz" ] || setup_failed "$kernel_package holds no boot/vmlinuz-*"

# 3. The unit-test binaries, as the test command builds them (all paths compiled in).
binaries=$(env -u ATSO_PORTABLE_ONLY cargo test --release --workspace --lib --no-run --message-format=json 2>"$out/cargo.log" \
  | python3 scripts/test-executables.py atso_kernels atso_harness)
kernels_tests=$(awk '$1 == "atso_kernels" {print $2}' <<<"$binaries")
harness_tests=$(awk '$1 == "atso_harness" {print $2}' <<<"$binaries")
[ -x "$kernels_tests" ] && [ -x "$harness_tests" ] || setup_failed "cargo built no unit-test binaries (see $out/cargo.log)"
atso="$target/release/atso"
if [ $sweep = 1 ]; then
  env -u ATSO_PORTABLE_ONLY cargo build --release >>"$out/cargo.log" 2>&1 && [ -x "$atso" ] \
    || setup_failed "cargo could not build the release atso (see $out/cargo.log)"
  # The CI experiment cut to its first seed and a few steps per method, checked as TOML.
  python3 - experiments/ci.toml "$work/short-sweep.toml" "${SWEEP_STEPS:-12}" <<'PY' || setup_failed "could not cut experiments/ci.toml"
import re, sys, tomllib
text = open(sys.argv[1]).read()
steps = int(sys.argv[3])
cut = re.sub(r"(?m)^seeds = \[(\d+)[^\]\n]*\]$", r"seeds = [\1]", text)
cut = re.sub(r"(?m)^iterations = \d+$", f"iterations = {steps}", cut)
config, whole = tomllib.loads(cut), tomllib.loads(text)
assert len(config["seeds"]) == 1 and config["budget"]["iterations"] == steps, "one seed, the steps"
assert config["methods"] == whole["methods"] and config.get("datasets"), "every method, the datasets"
open(sys.argv[2], "w").write(cut)
PY
fi

# 4. The initramfs: busybox, the binaries and the libraries they load, and an init that prints
#    the CPU's flags, runs the part of the tests its command line names, and powers off.
root="$work/rootfs"
rm -rf "$root" && mkdir -p "$root"/{bin,proc,sys,dev,tmp,tests}
cp /bin/busybox "$root/bin/" && for tool in sh mount poweroff cat grep tr sleep tail; do ln -s busybox "$root/bin/$tool"; done
strip -o "$root/tests/kernels" "$kernels_tests" && strip -o "$root/tests/harness" "$harness_tests"
executables=("$kernels_tests" "$harness_tests")
if [ $sweep = 1 ]; then
  strip -o "$root/tests/atso" "$atso" && cp "$work/short-sweep.toml" "$root/tests/" && executables+=("$atso")
fi
for lib in $(ldd "${executables[@]}" | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
done
cat > "$root/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "=== guest cpu: $(grep -m1 'model name' /proc/cpuinfo | tr -s '\t ' ' ')"
echo "=== guest SIMD flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma)' | tr '\n' ' ')"
part=none
for arg in $(cat /proc/cmdline); do
  case $arg in
    atso_part=*) part=${arg#atso_part=} ;;
    atso_isa=*) export ATSO_KERNEL_ISA=${arg#atso_isa=} ;;
  esac
done
echo "=== ATSO_KERNEL_ISA=${ATSO_KERNEL_ISA:-auto}"
cd /tmp
case $part in
  kernels) /tests/kernels --test-threads 1 --nocapture ;;
  harness) /tests/harness --test-threads 1 --nocapture kernel_paths fused_loss_is_bitwise_burns ;;
  sweep) /tests/atso sweep /tests/short-sweep.toml --jobs 1 --threads 1 --results res --ignore-memory-estimate > sweep.log 2>&1
         code=$?
         grep -E '^(ok|FAILED) ' sweep.log; tail -n 1 sweep.log
         for table in cases curves; do echo "=== begin $table.csv"; cat res/*/$table.csv; echo "=== end $table.csv"; done
         (exit $code) ;;
  *) echo "=== no part named $part"; false ;;
esac
echo "=== exit status $?"
sleep 1
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initrd.gz") \
  || setup_failed "could not pack the initramfs"

# 5. One boot disc and one emulated machine per part (Bochs uses one core, so two run at once).
guest_args="console=ttyS0,115200 nosmp mitigations=off tsc=reliable clearcpuid=xsaves,xsavec,pku,ospke,aperfmperf"
echo c > "$work/debugger-commands"
boot() {
  local part=$1 isa=${2:-auto} disc="$work/disc-$1" limit=900
  [ "$part" = sweep ] && limit=3600
  rm -rf "$disc" && mkdir -p "$disc/isolinux"
  cp "$vmlinuz" "$disc/vmlinuz" && cp "$work/initrd.gz" "$disc/initrd.gz"
  cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$disc/isolinux/"
  printf 'default guest\nprompt 0\ntimeout 0\nlabel guest\n  kernel /vmlinuz\n  append initrd=/initrd.gz %s atso_part=%s atso_isa=%s\n' \
    "$guest_args" "$part" "$isa" > "$disc/isolinux/isolinux.cfg"
  xorriso -as mkisofs -quiet -o "$work/$part.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table "$disc" >"$out/xorriso-$part.log" 2>&1 || return 2
  cat > "$work/bochsrc-$part" <<EOF
megs: 2048
cpu: model=corei7_skylake_x, count=1, ips=200000000
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
ata0-master: type=cdrom, path=$work/$part.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$out/serial-$part.log
display_library: term
log: $out/bochs-$part.log
panic: action=fatal
info: action=ignore
clock: sync=none, time0=local
EOF
  rm -f "$out/serial-$part.log"
  TERM=vt100 timeout "$limit" script -qfec "bochs -q -f $work/bochsrc-$part -rc $work/debugger-commands" /dev/null \
    >"$out/bochs-$part.screen" 2>&1 </dev/null
  [ $? = 124 ] && echo "$limit" > "$work/timed-out-$part"
  return 0
}
rm -f "$work"/timed-out-*
start=$(date +%s)
boot kernels & first=$!
boot harness & second=$!
wait $first; a=$?; wait $second; b=$?
[ $a -eq 0 ] && [ $b -eq 0 ] || setup_failed "could not make a boot disc (see $out/xorriso-*.log)"
parts=(kernels harness)
if [ $sweep = 1 ]; then
  # The short sweep in the guest (on its only core), and here on one thread as there.
  boot sweep auto & first=$!
  rm -rf "$out/here" && mkdir -p "$out/here"
  (cd "$out/here" && "$atso" sweep "$work/short-sweep.toml" --jobs 1 --threads 1 --results res \
    --ignore-memory-estimate >"$out/here.log" 2>&1) || setup_failed "the sweep on this machine failed (see $out/here.log)"
  wait $first || setup_failed "could not make a boot disc (see $out/xorriso-sweep.log)"
  parts+=(sweep)
fi

# Two runs' tables, each from a guest's console (printed between markers) or a results folder
# here, compared value for value; a run's id carries the time it started and its commit may be
# unknown in the guest. Prints "identical" or where they part, and fails unless identical.
compare_runs() {
  python3 - "$1" "$2" <<'PY'
import csv, glob, io, os, re, sys
def table(source, name):
    if os.path.isdir(source):
        found = glob.glob(f"{source}/res/*/{name}.csv")
        text = open(found[0]).read() if found else ""
    else:
        console = open(source, errors="replace").read().replace("\r", "")
        m = re.search(rf"=== begin {name}\.csv\n(.*?)=== end {name}\.csv", console, re.S)
        text = m.group(1) if m else ""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        row["run_id"] = re.sub(r"_\d{8}T[\d.]+$", "", row["run_id"])
        row.pop("git_commit", None)
        rows.append(row)
    return rows
notes, same = [], True
for name, label, key in (("cases", "case", ("case_id", "class")), ("curves", "step", ("step",))):
    a, b = table(sys.argv[1], name), table(sys.argv[2], name)
    cells = sum(x[k] != y.get(k) for x, y in zip(a, b) for k in x)
    equal = bool(a) and len(a) == len(b) and cells == 0
    same &= equal
    note = f"{name}.csv {'identical' if equal else 'DIFFERS'} ({len(a)} and {len(b)} rows"
    if cells:
        first = next(x for x, y in zip(a, b) if x != y)
        note += f"; {cells} values differ, from {label} " + " ".join(first[k] for k in key)
    notes.append(note + ")")
print("passed: " * same + ", ".join(notes))
sys.exit(0 if same else 1)
PY
}

# 6. The verdict, from the consoles.
failed=0
summary="emulated AVX-512 check of commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(( $(date +%s) - start )) s
bochs $(dpkg-query -W -f '${Version}' bochs), model corei7_skylake_x, guest kernel $kernel_package"
for part in "${parts[@]}"; do
  log="$out/serial-$part.log"
  grep -q '=== guest cpu' "$log" 2>/dev/null \
    || setup_failed "the $part guest never started (see $out/bochs-$part.log and $out/bochs-$part.screen)"
  flags=$(grep -m1 '=== guest SIMD flags' "$log" | tr -d '\r')
  result=$(grep -m1 '^test result:' "$log" | tr -d '\r')
  skipped=$(grep -c 'SKIPPED' "$log")
  verdict=passed
  if ! grep -qw avx512f <<<"$flags"; then
    verdict="failed: the guest has no AVX-512 ($flags)"
  elif ! grep -q '=== exit status 0' "$log"; then
    if [ -f "$work/timed-out-$part" ]; then
      verdict="failed: not finished within $(cat "$work/timed-out-$part") s"
    else
      failures=$(tr -d '\r' < "$log" | grep -E '^    [a-z0-9_]+::[a-z0-9_:]+$' | sed 's/^ *//' | sort -u | paste -sd, -)
      verdict="failed: ${failures:-see $log}"
    fi
  elif [ "$skipped" != 0 ]; then
    verdict="failed: $skipped path(s) SKIPPED"
  elif [ "$part" = sweep ]; then
    verdict=$(compare_runs "$out/here" "$log") || verdict="failed: $verdict"
    verdict="${verdict/passed: /passed: against the sweep run here, }"
    result="$(tr -d '\r' < "$log" | grep -c '^ok ') runs ok, $(tr -d '\r' < "$log" | grep -c '^FAILED ') failed in the guest"
  elif ! grep -qE '^test result: ok\. [1-9][0-9]* passed' <<<"$result"; then
    verdict="failed: no test ran"
  elif [ "$part" = harness ] && ! { grep -q 'a_unet_training_step_gives_the_same_bits_on_every_isa' "$log" \
    && grep -q 'fused_loss_is_bitwise_burns' "$log"; }; then
    verdict="failed: the U-Net step or the fused loss test did not run"
  fi
  [ "$verdict" = passed ] || [ "${verdict#passed:}" != "$verdict" ] || failed=1
  summary+="
$part: $verdict; ${result:-no test result}"
done
summary+="
${flags#=== }"
echo "$summary"
echo "$summary" > "$out/summary.txt" || failed=1
exit $failed
