//! Sweeps that survive kill -9, bad files and each other; and that give the same numbers however
//! they are run (serial, parallel, rerun). Everything goes through the `atso` binary. Each test
//! is one promise, named for it. One promise is checked below the binary: a full disk is
//! reported as "No space left on device", not as the parquet encoder's own words
//! (`fsio::tests::a_full_disk_is_named_as_such_even_behind_the_parquet_encoder`, against
//! /dev/full).

mod common;
use atso_harness::metric_registry::DICE;
use common::{atso, atso_command, stderr};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Three methods, two seeds; a few seconds per run.
const SMALL: &str = r#"
name = "small"
labeled_ratios = [0.4]
seeds = [0, 1]

[budget]
iterations = 40
batch_size = 4
resolution = 32
eval_batch_size = 16

[optimizer]
lr = 0.05

[model]
channels = [4, 8]
dropout = [0.0, 0.1]

[[datasets]]
name = "phantom"
format = "phantom"
path = "data/phantom"
phantom = { cases = 8, size = 32, slices = 6, seed = 3 }

[[methods]]
kind = "supervised"

[[methods]]
kind = "atso"

[[methods]]
kind = "mean-teacher"
"#;

/// (method, seed) -> (dice_mean, per-case Dice) of the ok records of a results folder, and the
/// number of ok records per config hash.
fn outcomes(results: &Path) -> (BTreeMap<(String, u64), String>, BTreeMap<String, usize>) {
    let mut by_run = BTreeMap::new();
    let mut per_hash: BTreeMap<String, usize> = BTreeMap::new();
    for record in atso_harness::records::load_all(results).unwrap() {
        if record.status != atso_harness::records::Status::Ok {
            continue;
        }
        *per_hash.entry(record.config_hash.clone()).or_default() += 1;
        let cases = serde_json::to_string(&record.cases).unwrap();
        by_run.insert(
            (record.method.clone(), record.seed),
            format!("{:?} {cases}", record.metrics.mean(&DICE)),
        );
    }
    (by_run, per_hash)
}

fn setup(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("small.toml"), text).unwrap();
    dir
}

#[test]
fn same_seed_gives_the_same_dice_serially_in_parallel_and_on_rerun() {
    let dir = setup(SMALL);
    let serial = atso(
        dir.path(),
        &["sweep", "small.toml", "--results", "serial", "--jobs", "1", "--threads", "1"],
    );
    assert!(serial.status.success(), "{}", stderr(&serial));
    let parallel = atso(
        dir.path(),
        &["sweep", "small.toml", "--results", "parallel", "--jobs", "2", "--threads", "1"],
    );
    assert!(parallel.status.success(), "{}", stderr(&parallel));
    assert!(String::from_utf8_lossy(&parallel.stderr).contains("2 run(s) in parallel"));
    let rerun = atso(
        dir.path(),
        &[
            "sweep",
            "small.toml",
            "--results",
            "serial",
            "--rerun",
            "--jobs",
            "1",
            "--threads",
            "1",
        ],
    );
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let (serial_runs, serial_hashes) = outcomes(&dir.path().join("serial/small"));
    let (parallel_runs, parallel_hashes) = outcomes(&dir.path().join("parallel/small"));
    assert_eq!(serial_runs.len(), 6);
    assert_eq!(serial_runs, parallel_runs, "a parallel sweep gives a serial sweep's numbers");
    assert!(
        parallel_hashes.values().all(|&n| n == 1),
        "every run exactly once: {parallel_hashes:?}"
    );
    // The rerun added a second row per run with identical numbers (the map keeps the last).
    assert!(serial_hashes.values().all(|&n| n == 2), "{serial_hashes:?}");
    let records = atso_harness::records::load_all(&dir.path().join("serial/small")).unwrap();
    let mut by_hash: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in &records {
        by_hash.entry(r.config_hash.as_str()).or_default().push(format!(
            "{:?} {}",
            r.metrics.mean(&DICE),
            serde_json::to_string(&r.cases).unwrap()
        ));
    }
    for (hash, values) in by_hash {
        assert_eq!(
            values[0], values[1],
            "run {hash} trained twice from one seed gave different results"
        );
    }
}

#[test]
fn unreadable_record_files_do_not_stop_sweeps_or_reports() {
    let dir = setup(SMALL);
    assert!(atso(dir.path(), &["sweep", "small.toml"]).status.success());
    let records = dir.path().join("results/small/records");
    let first = std::fs::read_dir(&records).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(records.join("truncated.json"), &text[..text.len() / 3]).unwrap();
    std::fs::write(records.join("._resource-fork.json"), [0u8, 5, 22, 7, 0, 2]).unwrap();
    // What serde_json made of a NaN before floats were written as strings: null in a float field.
    let with_null = text
        .replacen("\"wall_seconds\": ", "\"wall_seconds\": null, \"_was\": ", 1)
        .replace("\"run_id\": \"", "\"run_id\": \"nan-");
    std::fs::write(records.join("nan-record.json"), with_null).unwrap();
    let again = atso(dir.path(), &["sweep", "small.toml"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("6 already recorded"));
    let report = atso(dir.path(), &["report", "results/small"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let warnings = stderr(&report);
    assert!(warnings.contains("truncated.json"), "the unreadable file is named: {warnings}");
    let markdown = std::fs::read_to_string(dir.path().join("results/small/report.md")).unwrap();
    assert!(markdown.contains("1 record file(s) could not be read"), "{markdown}");
    assert!(
        markdown.contains("1 unreadable record file(s) skipped"),
        "every table's footer says it: {markdown}"
    );
}

#[test]
fn two_concurrent_sweeps_run_every_run_exactly_once() {
    let dir = setup(SMALL);
    let spawn = || {
        atso_command(dir.path(), &["sweep", "small.toml", "--jobs", "1", "--threads", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{}\n{}", stderr(&a), stderr(&b));
    let (runs, per_hash) = outcomes(&dir.path().join("results/small"));
    assert_eq!(runs.len(), 6);
    assert_eq!(per_hash.len(), 6);
    assert!(per_hash.values().all(|&n| n == 1), "a run was done twice: {per_hash:?}");
}

#[test]
fn a_diverging_run_fails_alone_and_the_sweep_goes_on() {
    let text = SMALL.replace("lr = 0.05", "lr = 1e12");
    let dir = setup(&text);
    let output = atso(dir.path(), &["sweep", "small.toml", "--jobs", "1"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let records = atso_harness::records::load_all(&dir.path().join("results/small")).unwrap();
    assert_eq!(records.len(), 6, "every run was attempted");
    for record in records {
        assert_eq!(record.status, atso_harness::records::Status::Failed);
        let error = record.error.unwrap();
        assert!(error.contains("non-finite loss") && error.contains("at step"), "{error}");
        assert_eq!(record.metrics.mean(&DICE), None, "no Dice for a diverged run");
    }
}

/// Waits until `ready` holds (polling), or panics after a minute.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[test]
fn sigkill_mid_run_and_mid_write_then_rerun_gives_the_uninterrupted_table() {
    let text = SMALL.replace("iterations = 40", "iterations = 120");
    let dir = setup(&text);
    let reference = atso(
        dir.path(),
        &["sweep", "small.toml", "--results", "reference", "--jobs", "1", "--threads", "1"],
    );
    assert!(reference.status.success(), "{}", stderr(&reference));

    // Killed in the middle of a run's training.
    let mut child = atso_command(dir.path(), &["sweep", "small.toml", "--jobs", "1", "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let logs = dir.path().join("results/small/logs");
    wait_for("a run halfway through", || {
        files_in(&logs)
            .iter()
            .any(|log| std::fs::read_to_string(log).is_ok_and(|t| t.contains("step 60/120")))
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Killed while a record is being written (between its temporary file and the rename).
    let records = dir.path().join("results/small/records");
    let before = atso_harness::records::load_all(&dir.path().join("results/small")).unwrap().len();
    let mut child = atso_command(dir.path(), &["sweep", "small.toml", "--jobs", "1", "--threads", "1"])
        .env("ATSO_TEST_WRITE_PAUSE_MS", "3000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a record being written", || {
        files_in(&records).iter().any(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
        })
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let after = atso_harness::records::load_all(&dir.path().join("results/small")).unwrap().len();
    assert_eq!(after, before, "a record killed mid-write is absent, not half-written");

    let resumed = atso(dir.path(), &["sweep", "small.toml", "--jobs", "1", "--threads", "1"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let (runs, per_hash) = outcomes(&dir.path().join("results/small"));
    let (expected, _) = outcomes(&dir.path().join("reference/small"));
    assert_eq!(runs, expected, "the resumed sweep's numbers equal an uninterrupted sweep's");
    assert!(per_hash.values().all(|&n| n == 1), "no run recorded twice: {per_hash:?}");
    assert_eq!(per_hash.len(), 6);
    let left: Vec<PathBuf> = files_under(&dir.path().join("results"))
        .into_iter()
        .filter(|p| is_temporary(p))
        .collect();
    assert!(left.is_empty(), "the next sweep removes what the killed write left: {left:?}");
}

fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && [".tmp", ".tmp.png", ".staging"].iter().any(|end| n.ends_with(end)))
}

/// Every file and folder below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in files_in(dir) {
        if path.is_dir() {
            out.extend(files_under(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn names_that_become_paths_are_validated() {
    for (replace, with, needle) in [
        ("name = \"small\"", "name = \"../escape\"", "experiment name"),
        ("name = \"phantom\"", "name = \"a/b\"", "dataset name"),
        ("kind = \"atso\"", "kind = \"atso\"\nlabel = \"..\"", "label"),
    ] {
        let dir = setup(&SMALL.replace(replace, with));
        let output = atso(dir.path(), &["sweep", "small.toml"]);
        assert_eq!(output.status.code(), Some(1));
        assert!(stderr(&output).contains(needle), "{needle}: {}", stderr(&output));
    }
}

#[test]
fn a_run_killed_mid_training_resumes_from_its_checkpoint_to_the_same_dice() {
    let text = SMALL
        .replace("iterations = 40", "iterations = 200")
        .replace("seeds = [0, 1]", "seeds = [0]")
        .replace("[[methods]]\nkind = \"supervised\"\n", "")
        + "\n[checkpoint]\nevery = 25\n";
    let dir = setup(&text);
    let reference = atso(
        dir.path(),
        &["sweep", "small.toml", "--results", "reference", "--jobs", "1", "--threads", "1"],
    );
    assert!(reference.status.success(), "{}", stderr(&reference));
    // The process ends abnormally at global step 160 of each run that started from scratch (a
    // test hook; real SIGKILLs are in the test above): ATSO inside its third fine-tuning stage
    // (steps 140..170, so M0 and two stages load from finished-phase files), mean teacher inside
    // its one phase. Both resume from the step-150 checkpoint. The first sweep dies in ATSO; the
    // second resumes ATSO to the end and dies in mean teacher.
    for dies_in in ["atso", "mean-teacher"] {
        let killed = atso_command(dir.path(), &["sweep", "small.toml", "--jobs", "1", "--threads", "1"])
            .env("ATSO_TEST_ABORT_AT_STEP", "160")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!killed.success(), "the sweep was ended at step 160 of {dies_in}");
    }
    let resumed = atso(dir.path(), &["sweep", "small.toml", "--jobs", "1", "--threads", "1"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let records = atso_harness::records::load_all(&dir.path().join("results/small")).unwrap();
    assert_eq!(records.len(), 2);
    for record in &records {
        let step = record
            .resumed_from_step
            .unwrap_or_else(|| panic!("{} did not resume from a checkpoint", record.method));
        assert_eq!(step, 150, "{}: resumed at the last checkpoint before step 160", record.method);
    }
    let (runs, _) = outcomes(&dir.path().join("results/small"));
    let (expected, _) = outcomes(&dir.path().join("reference/small"));
    assert_eq!(runs, expected, "resumed runs end exactly as uninterrupted ones");
    assert!(
        !dir.path()
            .join("results/small/checkpoints")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "checkpoints are removed once recorded"
    );
}

/// One method, one seed, a few steps: the smallest sweep that writes every kind of file.
fn tiny() -> String {
    SMALL
        .replace("seeds = [0, 1]", "seeds = [0]")
        .replace("iterations = 40", "iterations = 6")
        .replace("[[methods]]\nkind = \"atso\"\n\n[[methods]]\nkind = \"mean-teacher\"\n", "")
}

/// Every file and folder under `root` with a mode other than the one expected, and how many
/// entries were looked at.
#[cfg(unix)]
fn wrong_modes(root: &Path, file: u32, folder: u32) -> (Vec<String>, usize) {
    use std::os::unix::fs::PermissionsExt;
    let mut wrong = Vec::new();
    let mut seen = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in files_in(&dir) {
            let meta = std::fs::symlink_metadata(&entry).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            seen += 1;
            let expected = if meta.is_dir() { folder } else { file };
            if mode != expected {
                wrong.push(format!("{} {mode:o}", entry.display()));
            }
            if meta.is_dir() {
                stack.push(entry);
            }
        }
    }
    (wrong, seen)
}

/// Files get the mode a plain `File::create` gives under the caller's umask (0644 under 022,
/// 0664 under 002), folders `mkdir`'s: records, tables, configs, splits, generated data,
/// previews, plots and the report alike, so a colleague (022) or the group (002) can read them.
#[cfg(unix)]
#[test]
fn every_file_a_sweep_and_a_report_write_takes_the_callers_umask() {
    for umask in [0o022u32, 0o002] {
        let dir = setup(&tiny());
        let script = format!("umask {umask:03o} && \"$0\" sweep small.toml --jobs 1 && \"$0\" report results/small");
        let output = std::process::Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_atso")])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        for (root, at_least) in [("results", 30), ("data", 10)] {
            let (wrong, seen) = wrong_modes(&dir.path().join(root), 0o666 & !umask, 0o777 & !umask);
            assert!(wrong.is_empty(), "umask {umask:03o}: {wrong:#?}");
            assert!(seen >= at_least, "{root}: only {seen} entries looked at");
        }
        assert!(dir.path().join("results/small/report.html").is_file());
    }
}

/// Runs `atso` as another user, in `dir`, with umask 002 (root only: `runuser`).
#[cfg(unix)]
fn atso_as(user: &str, bin: &Path, dir: &Path, args: &str) -> std::process::Output {
    let script = format!(
        "umask 002 && cd '{}' && HOME='{}' '{}' {args}",
        dir.display(),
        dir.display(),
        bin.display()
    );
    std::process::Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", &script])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A lab's shared folder: setgid, group-writable, umask 002. One member sweeps; another member
/// of the group reads every record, reuses every run (nothing is trained twice) and sees every
/// row in the tables. Needs root to make the two users (CI runs as root and requires it).
#[cfg(unix)]
#[test]
fn two_users_of_one_group_share_a_results_folder() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip_unless_required("ATSO_REQUIRE_ROOT", "making two users needs root");
        return;
    }
    let run = |args: &[&str]| std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    run(&["groupadd", "-f", "atsolab"]);
    for user in ["atso-a", "atso-b"] {
        if !run(&["id", user]).status.success() {
            let made = run(&["useradd", "-M", "-N", "-g", "atsolab", "-s", "/bin/sh", user]);
            assert!(made.status.success(), "useradd {user}: {}", stderr(&made));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("atso");
    std::fs::copy(env!("CARGO_BIN_EXE_atso"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lab = dir.path().join("lab");
    std::fs::create_dir(&lab).unwrap();
    assert!(run(&["chgrp", "atsolab", lab.to_str().unwrap()]).status.success());
    std::fs::set_permissions(&lab, std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::write(lab.join("small.toml"), SMALL).unwrap();
    std::fs::set_permissions(lab.join("small.toml"), std::fs::Permissions::from_mode(0o664)).unwrap();

    let a = atso_as("atso-a", &bin, &lab, "sweep small.toml --jobs 1");
    assert!(a.status.success(), "user a: {}", stderr(&a));
    let b = atso_as("atso-b", &bin, &lab, "sweep small.toml --jobs 1");
    let (out, err) = (String::from_utf8_lossy(&b.stdout), stderr(&b));
    assert!(b.status.success(), "user b: {err}");
    assert!(out.contains("6 already recorded"), "user b reuses every run of user a: {out}{err}");
    assert!(!err.contains("unreadable") && !err.contains("Permission denied"), "{err}");
    let report = atso_as("atso-b", &bin, &lab, "report results/small");
    assert!(report.status.success(), "user b's report: {}", stderr(&report));
    let runs = std::fs::read_to_string(lab.join("results/small/runs.csv")).unwrap();
    assert_eq!(runs.lines().count(), 7, "a header and every row: {runs}");
}

/// Budget, model and optimiser values that would crash a run, or train nonsense, are refused
/// when the file is read (exit status 1, the key named), before anything is recorded.
#[test]
fn values_that_would_crash_or_mislead_a_run_are_refused_when_the_file_is_read() {
    for (replace, with, key) in [
        ("resolution = 32", "resolution = 0", "budget.resolution"),
        ("channels = [4, 8]", "channels = [4, 0]", "model.channels"),
        ("lr = 0.05", "lr = -1", "optimizer.lr"),
        ("lr = 0.05", "lr = 0", "optimizer.lr"),
        ("lr = 0.05", "lr = nan", "optimizer.lr"),
        ("lr = 0.05", "lr = inf", "optimizer.lr"),
        ("lr = 0.05", "lr = 0.05\nmomentum = 5", "optimizer.momentum"),
        ("lr = 0.05", "lr = 0.05\nweight_decay = -1", "optimizer.weight_decay"),
        ("lr = 0.05", "lr = 0.05\npoly_power = nan", "optimizer.poly_power"),
        ("labeled_ratios = [0.4]", "labeled_ratios = [0.4, 0.4]", "labeled_ratios"),
        ("seeds = [0, 1]", "seeds = [0, 1, 0]", "seeds"),
        ("kind = \"atso\"", "kind = \"supervised\"", "methods"),
    ] {
        let dir = setup(&SMALL.replace(replace, with));
        let output = atso(dir.path(), &["sweep", "small.toml"]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{with}: {err}");
        assert!(err.contains(key), "{with}: the error names {key}: {err}");
        assert!(!dir.path().join("results/small/records").exists(), "{with}: nothing recorded");
    }
}

/// A run whose estimated memory exceeds what the machine has available is refused before it
/// starts (a million images a batch had been OOM-killed, leaving a claim behind), naming the keys
/// that drive the estimate; `--ignore-memory-estimate` is the way past it.
#[test]
fn a_run_too_big_for_the_machine_is_refused_before_it_starts() {
    let dir = setup(&SMALL.replace("batch_size = 4", "batch_size = 1000000"));
    for jobs in ["1", "2"] {
        let output = atso(dir.path(), &["sweep", "small.toml", "--jobs", jobs]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(
            err.contains("budget.batch_size") && err.contains("--ignore-memory-estimate"),
            "{err}"
        );
    }
    let results = dir.path().join("results/small");
    assert!(files_in(&results.join("records")).is_empty() && files_in(&results.join("claims")).is_empty());
}

/// A dataset that cannot be prepared stops the sweep with one error naming it (exit status 1)
/// before any run starts, serial or parallel, instead of a failed record per run.
#[test]
fn a_broken_dataset_stops_the_sweep_before_anything_trains() {
    let text = SMALL.to_string() + "\n[[datasets]]\nname = \"missing\"\nformat = \"msd\"\npath = \"no/such/task\"\n";
    let dir = setup(&text);
    for jobs in ["1", "2"] {
        let output = atso(dir.path(), &["sweep", "small.toml", "--jobs", jobs]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "--jobs {jobs}: {err}");
        assert!(err.contains("datasets 'missing'") && err.contains("no/such/task"), "{err}");
        assert!(files_in(&dir.path().join("results/small/records")).is_empty(), "nothing trained");
    }
}

/// A staging folder of generated data left by a kill during generation is removed by the next
/// sweep, which generates the data whole.
#[test]
fn a_staging_folder_left_by_a_killed_generation_is_removed_by_the_next_sweep() {
    let dir = setup(SMALL);
    let data = dir.path().join("data");
    let mut child = atso_command(dir.path(), &["sweep", "small.toml", "--jobs", "1"])
        .env("ATSO_TEST_WRITE_PAUSE_MS", "3000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("data being generated", || files_in(&data).iter().any(|p| is_temporary(p)));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!data.join("phantom").exists(), "nothing half-generated in place");
    let output = atso(dir.path(), &["sweep", "small.toml", "--jobs", "1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(files_in(&data), vec![data.join("phantom")], "only the finished data remains");
    // A staging folder of a process that died after another finished the data goes too.
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let left = data.join(format!(".phantom.~4000000000@{}~.abc.staging", host.trim()));
        std::fs::create_dir(&left).unwrap();
        let output = atso(dir.path(), &["sweep", "small.toml", "--jobs", "1"]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(!left.exists(), "removed beside complete data");
    }
}

/// Runs `atso` but gives up (failing the test) if it has not finished within a minute: what a
/// hang looks like from outside.
fn atso_within_a_minute(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut child = atso_command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("atso {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &Path) {
    assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// A FIFO (or device, or socket) where the harness reads files is skipped or refused with a
/// message, never opened: opening a FIFO for reading waits for a writer forever.
#[cfg(unix)]
#[test]
fn a_fifo_in_records_configs_or_given_to_inspect_never_hangs_anything() {
    let dir = setup(
        &SMALL
            .replace("seeds = [0, 1]", "seeds = [0]")
            .replace("iterations = 40", "iterations = 8"),
    );
    assert!(atso(dir.path(), &["sweep", "small.toml"]).status.success());
    let results = dir.path().join("results/small");
    mkfifo(&results.join("records/zz-fifo.json"));
    mkfifo(&results.join("configs/zz-fifo.toml"));
    let status = atso_within_a_minute(dir.path(), &["status", "results/small"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let report = atso_within_a_minute(dir.path(), &["report", "results/small", "--out", "report"]);
    assert!(report.status.success(), "{}", stderr(&report));
    assert!(
        stderr(&report).contains("zz-fifo.json"),
        "the skipped file is named: {}",
        stderr(&report)
    );
    let sweep = atso_within_a_minute(dir.path(), &["sweep", "small.toml"]);
    assert!(sweep.status.success(), "{}", stderr(&sweep));
    mkfifo(&dir.path().join("scan.nii"));
    let inspect = atso_within_a_minute(dir.path(), &["data", "inspect", "scan.nii"]);
    assert_eq!(inspect.status.code(), Some(1));
    let message = stderr(&inspect);
    assert!(message.contains("scan.nii") && message.contains("not a regular file"), "{message}");
}

/// A bit flipped inside a .nii.gz's deflate stream fails its CRC: `data inspect` and a sweep
/// refuse the file, naming it, instead of reading changed voxels.
#[test]
fn a_corrupted_gzip_volume_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let volume = atso_harness::data::volume::Volume::filled([24, 24, 4], [1.0; 3], 0.0);
    let mut volume = volume;
    for (i, v) in volume.data.iter_mut().enumerate() {
        *v = ((i * 7919) % 251) as f32;
    }
    let path = dir.path().join("scan.nii.gz");
    atso_harness::data::nifti::write(&path, &volume, atso_harness::data::nifti::Datatype::F32, 352).unwrap();
    let good = atso(dir.path(), &["data", "inspect", "scan.nii.gz"]);
    assert!(good.status.success(), "{}", stderr(&good));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let bad = atso(dir.path(), &["data", "inspect", "scan.nii.gz"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("scan.nii.gz"), "{}", stderr(&bad));
}

/// A claim file left by a process killed after it recorded its run (before it released the
/// claim) is removed by the next sweep, which finds the run recorded.
#[test]
fn a_claim_whose_run_is_recorded_is_cleared_by_the_next_sweep() {
    let dir = setup(
        &SMALL
            .replace("seeds = [0, 1]", "seeds = [0]")
            .replace("iterations = 40", "iterations = 8"),
    );
    assert!(atso(dir.path(), &["sweep", "small.toml"]).status.success());
    let results = dir.path().join("results/small");
    let record = atso_harness::records::load_all(&results).unwrap().remove(0);
    let claim = results.join("claims").join(format!("{}.claim", record.config_hash));
    std::fs::write(&claim, r#"{"host":"gone","pid":1,"since":"2020-01-01T00:00:00Z","run":"x"}"#).unwrap();
    let output = atso(dir.path(), &["sweep", "small.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!claim.exists(), "the recorded run's leftover claim is gone");
}

/// Tables that lag their records (a rebuild that failed on a full disk, records copied in) are
/// rebuilt by the next sweep even when it has nothing to run.
#[test]
fn tables_older_than_the_newest_record_are_rebuilt_by_a_sweep_with_nothing_to_do() {
    let dir = setup(&SMALL.replace("iterations = 40", "iterations = 8"));
    assert!(atso(dir.path(), &["sweep", "small.toml"]).status.success());
    let results = dir.path().join("results/small");
    let full = std::fs::read_to_string(results.join("runs.csv")).unwrap();
    // As a failed rebuild leaves it: an older table with fewer rows.
    let fewer: Vec<&str> = full.lines().take(2).collect();
    std::fs::write(results.join("runs.csv"), fewer.join("\n") + "\n").unwrap();
    let old = std::process::Command::new("touch")
        .args(["-d", "2000-01-01"])
        .arg(results.join("runs.csv"))
        .status()
        .unwrap();
    assert!(old.success());
    let output = atso(dir.path(), &["sweep", "small.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(results.join("runs.csv")).unwrap().lines().count(),
        full.lines().count()
    );
}

/// Killing a parallel sweep's parent kills its workers: nothing goes on training unwatched.
#[cfg(target_os = "linux")]
#[test]
fn workers_die_with_their_parent() {
    let dir = setup(&SMALL.replace("iterations = 40", "iterations = 100000"));
    let mut parent = atso_command(dir.path(), &["sweep", "small.toml", "--jobs", "2", "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let children_file = format!("/proc/{0}/task/{0}/children", parent.id());
    let workers = || -> Vec<u32> {
        std::fs::read_to_string(&children_file)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    wait_for("two workers", || workers().len() == 2);
    let pids = workers();
    parent.kill().unwrap();
    parent.wait().unwrap();
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    };
    wait_for("the workers to die", || !pids.iter().any(running));
}
