//! The verbs a CI pipeline and a cluster user script against, through the binary: `status`
//! after a sweep, `check` passing on its own reference and exiting 2 with the failing row named,
//! and a panic inside a run recorded as that run's failure while the sweep goes on (exit 3).
//! `bench --phases` prints where a training step's time goes.

mod common;
use atso_harness::metric_registry::DICE;
use common::{atso, atso_command, stderr};

const TINY: &str = r#"
name = "tiny"
labeled_ratios = [0.4]
seeds = [0]

[budget]
iterations = 150
batch_size = 8
resolution = 32
eval_batch_size = 16

[optimizer]
lr = 0.05

[model]
channels = [8, 16]
dropout = [0.0, 0.0]

[[datasets]]
name = "phantom"
format = "phantom"
path = "data/phantom"
phantom = { cases = 8, size = 32, slices = 6, seed = 5 }

[[methods]]
kind = "supervised"

[[methods]]
kind = "fully-supervised"
"#;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    dir
}

#[test]
fn status_lists_done_runs_and_check_exits_2_naming_the_row_outside_its_tolerance() {
    let dir = setup();
    let before = atso(dir.path(), &["status", "results/tiny", "--experiment", "tiny.toml"]);
    let listing = String::from_utf8_lossy(&before.stdout);
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("missing")).count(),
        2,
        "nothing has run yet: {listing}"
    );

    let sweep = atso(dir.path(), &["sweep", "tiny.toml", "--jobs", "1", "--threads", "1"]);
    assert!(sweep.status.success(), "{}", stderr(&sweep));
    let after = atso(dir.path(), &["status", "results/tiny", "--experiment", "tiny.toml"]);
    assert!(after.status.success(), "{}", stderr(&after));
    let listing = String::from_utf8_lossy(&after.stdout);
    assert_eq!(listing.lines().filter(|l| l.starts_with("done")).count(), 2, "{listing}");
    assert!(!listing.contains("missing"), "{listing}");

    // A reference written from these results passes.
    std::fs::write(dir.path().join("reference.toml"), "").unwrap();
    let update = atso(dir.path(), &["check", "results/tiny", "--reference", "reference.toml", "--update"]);
    assert!(update.status.success(), "{}", stderr(&update));
    let check = atso(dir.path(), &["check", "results/tiny", "--reference", "reference.toml"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        stderr(&check)
    );

    // Moving one expected value outside its tolerance fails with exit 2 and names the row.
    let text = std::fs::read_to_string(dir.path().join("reference.toml")).unwrap();
    let mut reference: toml::Table = toml::from_str(&text).unwrap();
    let values = reference["values"].as_array_mut().unwrap();
    let entry = values
        .iter_mut()
        .find(|v| v["method"].as_str() == Some("supervised"))
        .unwrap()
        .as_table_mut()
        .unwrap();
    let expected = entry["expected"].as_float().unwrap();
    entry.insert("expected".into(), toml::Value::Float(expected + 0.5));
    std::fs::write(dir.path().join("moved.toml"), toml::to_string(&reference).unwrap()).unwrap();
    let moved = atso(dir.path(), &["check", "results/tiny", "--reference", "moved.toml"]);
    assert_eq!(moved.status.code(), Some(2), "{}", stderr(&moved));
    let table = String::from_utf8_lossy(&moved.stdout);
    let failing: Vec<&str> = table.lines().filter(|l| l.contains("FAIL outside tolerance")).collect();
    assert_eq!(failing.len(), 1, "{table}");
    assert!(failing[0].contains("phantom / supervised / 40% / dice_mean"), "{table}");
}

#[test]
fn a_panic_inside_a_run_is_recorded_as_its_failure_and_the_sweep_goes_on() {
    let dir = setup();
    // Both runs panic at step 5: each is recorded as failed, with the panic's message.
    let output = atso_command(dir.path(), &["sweep", "tiny.toml", "--jobs", "1", "--threads", "1"])
        .env("ATSO_TEST_PANIC_AT_STEP", "5")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let records = atso_harness::records::load_all(&dir.path().join("results/tiny")).unwrap();
    assert_eq!(records.len(), 2, "every run recorded, the second after the first failed");
    for record in &records {
        assert_eq!(record.status, atso_harness::records::Status::Failed);
        let error = record.error.as_deref().unwrap_or_default();
        assert!(error.contains("test panic at step 5"), "{error}");
    }
    // A later sweep runs the failed runs again and succeeds.
    let again = atso(dir.path(), &["sweep", "tiny.toml", "--jobs", "1", "--threads", "1"]);
    assert!(again.status.success(), "{}", stderr(&again));
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", stderr(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn compare_sets_the_rows_of_two_commits_side_by_side() {
    let dir = setup();
    std::fs::write(dir.path().join(".gitignore"), "results/\ndata/\n").unwrap();
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-qm", "base"]);
    let base = git(dir.path(), &["rev-parse", "HEAD"]);
    let first = atso(dir.path(), &["sweep", "tiny.toml", "--jobs", "1", "--threads", "1"]);
    assert!(first.status.success(), "{}", stderr(&first));
    // A second commit (no change to the numerics); --rerun-stale records every run again there.
    std::fs::write(dir.path().join("NOTES"), "a change\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-qm", "head"]);
    let head = git(dir.path(), &["rev-parse", "HEAD"]);
    let second = atso(
        dir.path(),
        &["sweep", "tiny.toml", "--jobs", "1", "--threads", "1", "--rerun-stale"],
    );
    assert!(second.status.success(), "{}", stderr(&second));
    let records = atso_harness::records::load_all(&dir.path().join("results/tiny")).unwrap();
    assert_eq!(records.iter().filter(|r| r.git_commit == base).count(), 2);
    assert_eq!(records.iter().filter(|r| r.git_commit == head).count(), 2);

    std::fs::write(dir.path().join("reference.toml"), "").unwrap();
    let update = atso(
        dir.path(),
        &[
            "check",
            "results/tiny",
            "--reference",
            "reference.toml",
            "--update",
            "--allow-mixed",
        ],
    );
    assert!(update.status.success(), "{}", stderr(&update));
    let compare = atso(
        dir.path(),
        &["compare", "results/tiny", "--base", &base, "--reference", "reference.toml"],
    );
    let table = String::from_utf8_lossy(&compare.stdout);
    assert_eq!(compare.status.code(), Some(0), "{table}{}", stderr(&compare));
    // Both configurations appear, with the same numbers at both commits.
    for method in ["supervised", "fully-supervised"] {
        let line = table
            .lines()
            .find(|l| l.contains(&format!("/ {method} /")))
            .unwrap_or_else(|| panic!("{method} missing: {table}"));
        assert!(line.contains("+0.0000") && line.contains("pass"), "{line}");
    }
}

/// `atso bench` as small as a test can afford: flex alone, one thread, the project's kernels, a
/// two-level U-Net on 2 x 32 x 32 images, one warm-up step; `extra` follows.
fn small_bench<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "bench",
        "--backends",
        "flex",
        "--threads",
        "1",
        "--kernels",
        "own",
        "--channels",
        "4,8",
        "--resolution",
        "32",
        "--batch-size",
        "2",
        "--warmup",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

/// `atso bench --layers` times each level's convolution and batch norm alone: one row per level,
/// at the level's channels and resolution, with a rate or time for each pass. (Structure only.)
#[test]
fn bench_layers_time_each_levels_convolution_and_norm() {
    let dir = tempfile::tempdir().unwrap();
    let bench = atso(dir.path(), &small_bench(&["--steps", "2", "--layers"]));
    assert!(bench.status.success(), "{}", stderr(&bench));
    let out = String::from_utf8_lossy(&bench.stdout);
    assert!(out.contains("Layers alone (`--layers`)"), "{out}");
    for (channels, size) in [("4", "32 x 32"), ("8", "16 x 16")] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {channels} | {size} |")))
            .unwrap_or_else(|| panic!("no row for {channels} channels: {out}"));
        let rates: Vec<f64> = row.split('|').skip(3).filter_map(|c| c.trim().parse().ok()).collect();
        assert_eq!(rates.len(), 5, "{row}");
        assert!(rates.iter().all(|&r| r > 0.0 && r.is_finite()), "{row}");
    }
}

/// `atso bench --phases` splits the training step into its parts on each configuration and
/// reads the CPU use of the process, of the thread driving the training and of other busy
/// threads. (Structure only: how fast is the benchmark's to say, not a test's.)
#[test]
fn bench_phases_split_the_training_step() {
    let dir = tempfile::tempdir().unwrap();
    let bench = atso(dir.path(), &small_bench(&["--steps", "3", "--phases"]));
    assert!(bench.status.success(), "{}", stderr(&bench));
    let out = String::from_utf8_lossy(&bench.stdout);
    let row = out
        .lines()
        .skip_while(|l| !l.starts_with("Training step parts"))
        .find(|l| l.starts_with("| flex"))
        .unwrap_or_else(|| panic!("no parts row for flex: {out}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 9, "{row}");
    let number = |i: usize| cells[i].parse::<f64>().unwrap_or_else(|_| panic!("cell {i} of {row}"));
    let (loss, backward, update, sum) = (number(1), number(2), number(3), number(4));
    assert!(loss >= 0.0 && backward >= 0.0 && update >= 0.0, "{row}");
    assert!((loss + backward + update - sum).abs() < 0.15, "the parts' sum is their sum: {row}");
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(number(6) >= 0.0 && number(7) >= 0.0, "CPU use was read: {row}");
    }
}

/// `atso bench --vs-pytorch --rounds 3` takes turns with the PyTorch script three times and
/// prints each further round and the medians of the rounds' ratios, and the training rate as a
/// share of PyTorch's GEMM rate. A stand-in script answers with times that differ per call, so
/// the medians can only come from all three calls.
#[test]
fn bench_rounds_take_turns_with_pytorch_and_report_medians() {
    let dir = tempfile::tempdir().unwrap();
    let (script, calls) = (dir.path().join("stand_in.py"), dir.path().join("calls"));
    let stand_in = r#"
import json, pathlib, sys
calls = pathlib.Path(sys.argv[0]).with_name("calls")
n = int(calls.read_text()) if calls.exists() else 0
calls.write_text(str(n + 1))
train = [1.0, 3.0, 2.0][n % 3]
print(json.dumps({"version": "stand-in", "threads": 1, "train_seconds": train, "inference_seconds": train / 2, "gemm_gflops": 1.0}))
"#;
    std::fs::write(&script, stand_in).unwrap();
    let script_arg = script.to_string_lossy().into_owned();
    let extra = ["--steps", "2", "--vs-pytorch", "--rounds", "3", "--pytorch-script", &script_arg];
    let bench = atso(dir.path(), &small_bench(&extra));
    assert!(bench.status.success(), "{}", stderr(&bench));
    let out = String::from_utf8_lossy(&bench.stdout);
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "3", "three PyTorch calls: {out}");
    // The two take turns going first: PyTorch in even rounds, atso in odd ones.
    for (round, first) in [("round 2:", "PyTorch first;"), ("round 3:", "atso first;")] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(round) && l.contains(first) && l.contains("PyTorch train")),
            "{round} missing or not with {first}: {out}"
        );
    }
    let summary = out
        .lines()
        .find(|l| l.starts_with("throughput, atso (flex (1 thread)) / PyTorch:"))
        .unwrap_or_else(|| panic!("no summary: {out}"));
    assert!(summary.contains("(medians of 3 alternating rounds;"), "{summary}");
    // PyTorch's GEMM rate is the second reference: the share is atso's training GFLOP/s over it,
    // a median over the rounds (1 GFLOP/s here, so the share is the rate itself; the table's
    // rate is the first round's, so only its magnitude is compared).
    let row = out
        .lines()
        .find(|l| l.starts_with("| flex (1 thread) |"))
        .unwrap_or_else(|| panic!("no row: {out}"));
    let train_gflops: f64 = row.split('|').nth(4).unwrap().trim().parse().unwrap();
    let gemm = out
        .lines()
        .find_map(|l| l.strip_prefix("GEMM rate, PyTorch (1 threads): 1.0 GFLOP/s (median of 3 rounds); atso trains at "))
        .unwrap_or_else(|| panic!("no PyTorch GEMM line: {out}"));
    let share: f64 = gemm.split_whitespace().next().unwrap().parse().unwrap();
    assert!(gemm.contains("of it (median; "), "{gemm}");
    assert!(
        share > 0.2 * train_gflops && share < 5.0 * train_gflops,
        "{share} vs {train_gflops}"
    );
}

/// With the project's kernels capped below what the CPU has, `--vs-pytorch` caps PyTorch's CPU
/// code the same way (`--pytorch-isa same`, the default) and its line says so; `native` leaves
/// it alone. A stand-in script reports the variables it was given.
#[test]
fn bench_caps_pytorch_where_the_kernels_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stand_in.py");
    let stand_in = r#"
import json, os
caps = {n: os.environ[n] for n in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if n in os.environ}
print(json.dumps({"version": "stand-in", "threads": 1, "train_seconds": 1.0, "inference_seconds": 0.5,
                  "cpu_capability": caps.get("ATEN_CPU_CAPABILITY", "NATIVE"), "isa_caps": caps}))
"#;
    std::fs::write(&script, stand_in).unwrap();
    let script_arg = script.to_string_lossy().into_owned();
    let pytorch_line = |pytorch_isa: &str| {
        let extra = [
            "--steps",
            "1",
            "--vs-pytorch",
            "--pytorch-isa",
            pytorch_isa,
            "--pytorch-script",
            &script_arg,
        ];
        let mut command = atso_command(dir.path(), &small_bench(&extra));
        for name in ["ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"] {
            command.env_remove(name);
        }
        let bench = command.env("ATSO_KERNEL_ISA", "portable").output().unwrap();
        assert!(bench.status.success(), "{}", stderr(&bench));
        let out = String::from_utf8_lossy(&bench.stdout).into_owned();
        out.lines()
            .find(|l| l.starts_with("PyTorch stand-in on `cpu` (1 threads"))
            .unwrap_or_else(|| panic!("no PyTorch line: {out}"))
            .to_string()
    };
    let native = pytorch_line("native");
    assert!(native.contains("(1 threads, ATen NATIVE): train step"), "{native}");
    let same = pytorch_line("same");
    if atso_harness::kernels::isa::detected() > atso_harness::kernels::isa::Isa::Portable {
        assert!(
            same.contains("ATen default, capped: ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41)"),
            "{same}"
        );
    } else {
        assert_eq!(same, native, "nothing to cap on a CPU without AVX2");
    }
}

/// `ATSO_KERNEL_ISA=portable` runs the portable kernels on a CPU with AVX2; the record says so
/// in `simd`, and every number equals the default path's (the two give the same bits).
#[test]
fn the_portable_kernels_can_be_forced_and_give_the_default_paths_numbers() {
    let dir = setup();
    let run = |results: &str, isa: &str| {
        let output = atso_command(dir.path(), &["sweep", "tiny.toml", "--jobs", "1", "--results", results])
            .env("ATSO_KERNEL_ISA", isa)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        atso_harness::records::load_all(&dir.path().join(results).join("tiny")).unwrap()
    };
    let (portable, default) = (run("portable", "portable"), run("default", "auto"));
    assert_eq!(portable.len(), default.len());
    for (p, d) in portable.iter().zip(&default) {
        assert!(p.simd.starts_with("conv portable"), "{}", p.simd);
        assert_eq!(p.method, d.method);
        assert_eq!(
            p.metrics.mean(&DICE).map(f64::to_bits),
            d.metrics.mean(&DICE).map(f64::to_bits),
            "{}",
            p.method
        );
        assert_eq!(serde_json::to_string(&p.cases).unwrap(), serde_json::to_string(&d.cases).unwrap());
    }
}

/// A misspelt `ATSO_KERNEL_ISA` stops the program with one error naming the variable and what it
/// takes, before anything is prepared or recorded (it used to mean `auto` silently).
#[test]
fn an_unknown_kernel_isa_is_refused_before_anything_runs() {
    let dir = setup();
    let output = atso_command(dir.path(), &["sweep", "tiny.toml", "--jobs", "1"])
        .env("ATSO_KERNEL_ISA", "avx-512")
        .output()
        .unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("ATSO_KERNEL_ISA=avx-512") && message.contains("portable, avx2 or avx512"),
        "{message}"
    );
    assert!(!dir.path().join("results").exists(), "nothing prepared or recorded");
}

/// A backend this build lacks is refused once, before anything is prepared or recorded; an
/// unknown one by the argument parser.
#[test]
fn a_backend_not_compiled_in_stops_the_sweep_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    let mut refused = 0;
    for backend in ["cuda", "vulkan"] {
        let output = atso(dir.path(), &["sweep", "tiny.toml", "--backend", backend]);
        let message = stderr(&output);
        if output.status.success() || !message.contains("not compiled into this build") {
            continue; // a GPU build has this backend
        }
        assert_eq!(output.status.code(), Some(1), "{message}");
        assert!(message.contains(&format!("--features {backend}")), "{message}");
        assert!(!dir.path().join("results").exists(), "nothing prepared or recorded");
        refused += 1;
    }
    if refused == 0 {
        eprintln!("SKIPPED the refusal: this build has both GPU backends");
    }
    let output = atso(dir.path(), &["sweep", "tiny.toml", "--backend", "tpu"]);
    assert!(
        !output.status.success() && stderr(&output).contains("unknown backend 'tpu'"),
        "{}",
        stderr(&output)
    );
}
