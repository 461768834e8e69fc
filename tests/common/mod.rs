//! Helpers the end-to-end test files share: running the `atso` binary in a folder.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The checkout these tests run in, read when they run: cargo sets `CARGO_MANIFEST_DIR` for the
/// test process. `env!` would bake in the checkout the binary was compiled in, and a target
/// directory shared between clones (as CI's is) can hand one clone a test binary another clone
/// compiled, which then read that clone's files, or failed once it was deleted.
pub fn checkout() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"))
}

/// The `atso` binary with `args`, run in `dir`, warnings only.
pub fn atso_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_atso"));
    command.args(args).current_dir(dir).env("RUST_LOG", "warn");
    command
}

/// Runs `atso` to completion.
pub fn atso(dir: &Path, args: &[&str]) -> Output {
    atso_command(dir, args).output().expect("atso runs")
}

/// A run's standard error, for assertion messages.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Skips a test whose prerequisite (a system package, a daemon) is missing, saying why, unless
/// `requirement` is set to 1: `.ci/run` sets it after installing that prerequisite, so in CI a
/// test that could not run fails instead of passing silently.
pub fn skip_unless_required(requirement: &str, reason: &str) {
    if std::env::var(requirement).is_ok_and(|v| v == "1") {
        panic!("{requirement}=1 (.ci/run installed what this test needs), yet: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}
