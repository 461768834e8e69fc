#!/usr/bin/env python3
"""The unit-test executables cargo built, from its `--message-format=json` output on stdin.

Why a file of its own: the scripts that carry the kernels' tests to another machine
(isa-check.sh) or into an emulated one (emulate-avx512.sh) need the same two binaries, and
cargo names them with a hash; one reader keeps them from drifting apart.

Usage: cargo test --release --workspace --lib --no-run --message-format=json \\
         | scripts/test-executables.py atso_kernels atso_harness
prints "<target name> <path>" for each test executable of the named targets.
"""
import json
import sys

wanted = set(sys.argv[1:])
for line in sys.stdin:
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        continue
    if message.get("executable") and message.get("profile", {}).get("test") and message["target"]["name"] in wanted:
        print(message["target"]["name"], message["executable"])
