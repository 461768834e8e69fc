//! The check CI relies on: experiments/ci.toml runs (two single-threaded runs at a time, as on
//! the two-core CI machines) and `atso check` holds its cell means to
//! experiments/references/ci.toml. A change that moves results fails here with check's table.

mod common;

use std::process::Command;

#[test]
fn the_ci_experiment_stays_within_its_reference() {
    let repo = common::checkout();
    let work = tempfile::tempdir().unwrap();
    let results = work.path().join("results");
    let sweep = Command::new(env!("CARGO_BIN_EXE_atso"))
        .args(["sweep", "experiments/ci.toml", "--jobs", "2", "--threads", "1", "--results"])
        .arg(&results)
        .arg("--data-base")
        .arg(work.path())
        .current_dir(&repo)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        sweep.status.success(),
        "the CI experiment did not run: {}",
        String::from_utf8_lossy(&sweep.stderr)
    );
    let check = Command::new(env!("CARGO_BIN_EXE_atso"))
        .args(["check"])
        .arg(results.join("ci"))
        .args(["--reference", "experiments/references/ci.toml"])
        .current_dir(&repo)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&check.stdout);
    println!("{table}");
    assert!(
        check.status.success(),
        "results left their tolerance (experiments/references/ci.toml):\n{table}{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
