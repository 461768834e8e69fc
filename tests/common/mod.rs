//! Helpers the end-to-end test files share: running the `atso` binary in a folder.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

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
