#!/usr/bin/env bash
# The kernels' AVX-512 path, run and compared bit for bit on an emulated AVX-512 CPU, on a machine
# that has none.
#
# Why: the kernels take AVX-512 at run time wherever the CPU has it (the Intel Xeons of most labs
# and clouds), so it is the path many users run; on an AVX2-only machine its tests can only print
# `SKIPPED Avx512`. Debian's Bochs 2.7 emulates a Skylake-X (AVX-512 F, CD, BW, DQ, VL). This
# script boots Debian's cloud kernel in it with an initramfs that holds the release unit-test
# binaries, and runs every test that compares the instruction-set paths: the micro-kernels, the
# elementwise passes, the convolutions, the max-pool gradient, a whole U-Net training step (the
# AVX-512 step's bits against the AVX2 and portable steps'), and the fused loss against burn's
# ops. It checks bits, not speed: an emulator's timings mean nothing (scripts/isa-check.sh times
# real AVX-512 hardware).
#
# Usage: scripts/emulate-avx512.sh [--sweep] [OUT]   (from the repository root; OUT defaults to
#        $CARGO_TARGET_DIR/avx512-emulated, or target/avx512-emulated)
#   --sweep  also runs one run of the CI experiment (its first method and seed, one thread) with
#            the release `atso` in the guest and on this machine, and compares the two runs'
#            cases.csv and curves.csv (every test case's scores, the loss every 4 steps) value for
#            value: the records' bits on AVX-512 against this CPU's. About 20 minutes more.
# Needs: the Debian packages below (installed with apt-get when missing and run as root), one
#        linux-image-*-cloud-amd64 package (fetched with apt-get download, kept in OUT), and the
#        release unit-test binaries (cargo builds them if they are stale).
# Writes: OUT/serial-<part>.log (the emulated machine's console: its CPU flags, the tests' output)
#        and OUT/summary.txt.
# Exit status: 0 when the guest's kernels saw AVX-512, every test passed and none was skipped;
#        1 when a test failed or was skipped, or the guest did not finish; 2 when the emulator
#        could not be set up.
#
# Bochs 2.7's quirks, each met on the guest kernel's command line (found by booting it):
#  - its CPUID gives the XSAVES/XSAVEC (compacted) area the standard area's size, so Linux finds
#    an "XSAVE consistency problem" and turns AVX off: `clearcpuid=xsaves,xsavec` makes Linux use
#    the standard format, whose sizes are right;
#  - its models list PKRU among the XSAVE features but give it no size: `clearcpuid=pku,ospke`;
#  - it has no APERF/MPERF registers though its models advertise them: `clearcpuid=aperfmperf`.
#  Its Ice Lake and Tiger Lake models hang early in the guest's boot, and the generic model has
#  no CPUID leaf 7 (no AVX2); Debian's build starts in its debugger (`-rc` answers `c`), and its
#  text display needs a terminal (`script` gives it one).
set -uo pipefail
repo=$(pwd)
target="${CARGO_TARGET_DIR:-$repo/target}"
sweep=0
if [ "${1:-}" = "--sweep" ]; then sweep=1; shift; fi
out="${1:-$target/avx512-emulated}"
mkdir -p "$out" && out=$(cd "$out" && pwd)
work="$out/work"
packages=(bochs bochs-term bochsbios vgabios isolinux syslinux-common xorriso busybox-static)
setup_failed() { echo "emulate-avx512: $*" | tee "$out/summary.txt" >&2; exit 2; }

# 1. The emulator and the tools that make its boot disc.
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || setup_failed "missing Debian packages: ${missing[*]} (apt-get install them)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$out/apt.log" 2>&1 || setup_failed "apt-get could not install ${missing[*]} (see $out/apt.log)"
fi

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
binaries=$(env -u ATSO_PORTABLE_ONLY cargo test --release --workspace --lib --no-run --message-format=json 2>"$out/cargo.log" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("profile", {}).get("test") and m["target"]["name"] in ("atso_kernels", "atso_harness"):
        print(m["target"]["name"], m["executable"])')
kernels_tests=$(awk '$1 == "atso_kernels" {print $2}' <<<"$binaries")
harness_tests=$(awk '$1 == "atso_harness" {print $2}' <<<"$binaries")
[ -x "$kernels_tests" ] && [ -x "$harness_tests" ] || setup_failed "cargo built no unit-test binaries (see $out/cargo.log)"
atso="$target/release/atso"
if [ $sweep = 1 ]; then
  env -u ATSO_PORTABLE_ONLY cargo build --release >>"$out/cargo.log" 2>&1 && [ -x "$atso" ] \
    || setup_failed "cargo could not build the release atso (see $out/cargo.log)"
  # The CI experiment cut to its first method and first seed.
  python3 - experiments/ci.toml > "$work/one-run.toml" <<'PY' || setup_failed "could not cut experiments/ci.toml"
import re, sys
text = open(sys.argv[1]).read()
head, first_method = text.split("[[methods]]")[:2]
print(re.sub(r"(?m)^seeds = \[(\d+).*\]$", r"seeds = [\1]", head) + "[[methods]]" + first_method.rstrip())
PY
fi

# 4. The initramfs: busybox, the binaries and the libraries they load, and an init that prints
#    the CPU's flags, runs the part of the tests its command line names, and powers off.
root="$work/rootfs"
rm -rf "$root" && mkdir -p "$root"/{bin,proc,sys,dev,tmp,tests}
cp /bin/busybox "$root/bin/" && for tool in sh mount poweroff cat grep tr sleep; do ln -s busybox "$root/bin/$tool"; done
strip -o "$root/tests/kernels" "$kernels_tests" && strip -o "$root/tests/harness" "$harness_tests"
executables=("$kernels_tests" "$harness_tests")
if [ $sweep = 1 ]; then
  strip -o "$root/tests/atso" "$atso" && cp "$work/one-run.toml" "$root/tests/" && executables+=("$atso")
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
for arg in $(cat /proc/cmdline); do case $arg in atso_part=*) part=${arg#atso_part=};; esac; done
cd /tmp
case $part in
  kernels) /tests/kernels --test-threads 1 --nocapture ;;
  harness) /tests/harness --test-threads 1 --nocapture kernel_paths fused_loss_is_bitwise_burns ;;
  sweep) /tests/atso sweep /tests/one-run.toml --jobs 1 --threads 1 --results res --ignore-memory-estimate
         code=$?
         for table in cases curves; do echo "=== begin $table.csv"; cat res/*/$table.csv; echo "=== end $table.csv"; done
         (exit $code) ;;
esac
echo "=== exit status $?"
sleep 1
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initrd.gz") \
  || setup_failed "could not pack the initramfs"

# 5. One boot disc and one emulated machine per part, both at once (Bochs uses one core).
guest_args="console=ttyS0,115200 nosmp mitigations=off tsc=reliable clearcpuid=xsaves,xsavec,pku,ospke,aperfmperf"
boot() {
  local part=$1 disc="$work/disc-$1" limit=900
  [ "$part" = sweep ] && limit=3600
  rm -rf "$disc" && mkdir -p "$disc/isolinux"
  cp "$vmlinuz" "$disc/vmlinuz" && cp "$work/initrd.gz" "$disc/initrd.gz"
  cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$disc/isolinux/"
  printf 'default guest\nprompt 0\ntimeout 0\nlabel guest\n  kernel /vmlinuz\n  append initrd=/initrd.gz %s atso_part=%s\n' \
    "$guest_args" "$part" > "$disc/isolinux/isolinux.cfg"
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
  echo c > "$work/debugger-commands"
  rm -f "$out/serial-$part.log"
  TERM=vt100 timeout "$limit" script -qfec "bochs -q -f $work/bochsrc-$part -rc $work/debugger-commands" /dev/null \
    >"$out/bochs-$part.screen" 2>&1 </dev/null
  return 0
}
start=$(date +%s)
boot kernels & first=$!
boot harness & second=$!
wait $first; a=$?; wait $second; b=$?
[ $a -eq 0 ] && [ $b -eq 0 ] || setup_failed "could not make a boot disc (see $out/xorriso-*.log)"
parts=(kernels harness)
if [ $sweep = 1 ]; then
  # The guest's run (its only core) beside the same run here, on one thread each.
  boot sweep & guest=$!
  rm -rf "$out/here" && mkdir -p "$out/here"
  (cd "$out/here" && "$atso" sweep "$work/one-run.toml" --jobs 1 --threads 1 --results res \
    --ignore-memory-estimate >"$out/here.log" 2>&1)
  wait $guest || setup_failed "could not make a boot disc (see $out/xorriso-sweep.log)"
  parts+=(sweep)
fi

# The guest's tables (printed between markers on its console) against this machine's, value for
# value; a run's id carries the time it started and its commit may be unknown in the guest.
compare_runs() {
  python3 - "$1" "$2" <<'PY'
import csv, io, re, sys
console = open(sys.argv[1], errors="replace").read().replace("\r", "")
def rows(text):
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        row["run_id"] = re.sub(r"_\d{8}T[\d.]+$", "", row["run_id"])
        row.pop("git_commit", None)
        out.append(tuple(sorted(row.items())))
    return sorted(out)
notes, same = [], True
for table in ("cases", "curves"):
    m = re.search(rf"=== begin {table}\.csv\n(.*?)=== end {table}\.csv", console, re.S)
    guest = rows(m.group(1)) if m else []
    here = rows(open(f"{sys.argv[2]}/{table}.csv").read())
    equal = bool(guest) and guest == here
    same &= equal
    notes.append(f"{table}.csv {'identical' if equal else 'DIFFERS'} ({len(guest)} rows there, {len(here)} here)")
print("passed: " * same + ", ".join(notes))
sys.exit(0 if same else 1)
PY
}

# 6. The verdict, from the consoles.
{
  echo "emulated AVX-512 check of commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(( $(date +%s) - start )) s"
  echo "bochs $(dpkg-query -W -f '${Version}' bochs), model corei7_skylake_x, guest kernel $kernel_package"
  for part in "${parts[@]}"; do
    log="$out/serial-$part.log"
    flags=$(grep -m1 '=== guest SIMD flags' "$log" 2>/dev/null | tr -d '\r')
    result=$(grep -m1 '^test result:' "$log" 2>/dev/null | tr -d '\r')
    skipped=$(grep -c 'SKIPPED' "$log" 2>/dev/null)
    verdict=passed
    if ! grep -qw avx512f <<<"$flags"; then verdict="failed: the guest has no AVX-512 (${flags:-no console output})"
    elif ! grep -q '=== exit status 0' "$log"; then
      failures=$(tr -d '\r' < "$log" | grep -E '^    [a-z0-9_]+::[a-z0-9_:]+$' | sed 's/^ *//' | sort -u | paste -sd, -)
      verdict="failed: ${failures:-the tests did not finish}"
    elif [ "${skipped:-0}" != 0 ]; then verdict="failed: $skipped path(s) SKIPPED"
    elif [ "$part" = sweep ]; then
      verdict=$(compare_runs "$log" "$out"/here/res/*/) || verdict="failed: $verdict"
      result=$(grep -m1 '^ok ' "$log" | tr -d '\r' | sed -E 's/ +/ /g')
    fi
    echo "$part: $verdict; ${result:-no test result}"
  done
  echo "${flags#=== }"
} | tee "$out/summary.txt"
grep -q ': failed' "$out/summary.txt" && exit 1
exit 0
