//! End-to-end tests through the `atso` binary: tiny sweeps on generated phantom data, with real
//! NIfTI files, real parquet tables and a real git checkout for provenance.

mod common;
use common::{atso, stderr};

use atso_harness::data::msd;
use atso_harness::data::phantom::{self, PhantomSpec};
use polars::prelude::*;
use std::path::Path;

/// A git repository whose one commit holds `files`, as a user's checkout would be.
fn git_checkout(dir: &Path, files: &[(&str, &str)]) -> String {
    let repo = git2::Repository::init(dir).unwrap();
    std::fs::write(dir.join(".gitignore"), "results/\ndata/\n").unwrap();
    let mut index = repo.index().unwrap();
    index.add_path(Path::new(".gitignore")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
        index.add_path(Path::new(name)).unwrap();
    }
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("ci", "ci@example.invalid").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap().to_string()
}

const TINY: &str = r#"
name = "tiny"
labeled_ratios = [0.34, 1.0]
seeds = [0, 1]

[budget]
iterations = 4
batch_size = 4
resolution = 32
eval_batch_size = 16

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
"#;

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap()
}

#[test]
fn loader_round_trip_returns_what_the_generator_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PhantomSpec {
        cases: 3,
        size: 24,
        slices: 5,
        seed: 11,
        ..PhantomSpec::default()
    };
    phantom::write_msd(dir.path(), &spec).unwrap();
    let index = msd::read_index(dir.path()).unwrap();
    assert_eq!(index.classes, phantom::CLASSES);
    assert_eq!(index.entries.len(), 3);
    for (case, entry) in index.entries.iter().enumerate() {
        let (image, label) = msd::load_case(entry, index.classes.len()).unwrap();
        let (expected_image, expected_label) = phantom::generate_case(&spec, case);
        assert_eq!(image.dims, [24, 24, 5]);
        assert_eq!(label.data, expected_label.data, "labels of {}", entry.id);
        // Images are stored as int16 Hounsfield units: equal up to rounding.
        let worst = image
            .data
            .iter()
            .zip(&expected_image.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 0.5, "HU differ by {worst} in {}", entry.id);
        assert!((image.spacing[2] - expected_image.spacing[2]).abs() < 1e-6);
    }
}

#[test]
fn tiny_sweep_records_provenance_and_renders_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let commit = git_checkout(dir.path(), &[("tiny.toml", TINY)]);
    let output = atso(dir.path(), &["sweep", "tiny.toml"]);
    assert!(output.status.success(), "sweep failed: {}", stderr(&output));

    let results = dir.path().join("results/tiny");
    let runs = read_parquet(&results.join("runs.parquet"));
    assert_eq!(runs.height(), 4);
    assert!(results.join("runs.csv").is_file());
    let column = |name: &str| runs.column(name).unwrap().clone();
    assert!(column("status").str().unwrap().iter().all(|s| s == Some("ok")));
    assert!(column("git_commit").str().unwrap().iter().all(|c| c == Some(commit.as_str())));
    assert!(column("git_branch").str().unwrap().iter().all(|b| b.is_some()));
    assert_eq!(column("git_dirty").bool().unwrap().iter().collect::<Vec<_>>(), vec![Some(false); 4]);
    assert!(column("dice_mean")
        .f64()
        .unwrap()
        .iter()
        .all(|d| d.is_some_and(|d| (0.0..=1.0).contains(&d))));
    assert!(column("iterations_used").u64().unwrap().iter().all(|i| i == Some(4)));
    let names: Vec<String> = runs.get_column_names().iter().map(|n| n.to_string()).collect();
    let position = |name: &str| names.iter().position(|n| n == name).unwrap();
    assert!(
        position("dice_liver") < position("dice_pancreas") && position("dice_pancreas") < position("dice_lesion"),
        "per-class columns follow the dataset's class order: {names:?}"
    );
    for name in [
        "dice_liver",
        "dice_pancreas",
        "config_hash",
        "version",
        "started_at",
        "finished_at",
        "wall_seconds",
        "backend",
    ] {
        assert_eq!(column(name).null_count(), 0, "column {name} has nulls");
    }
    // Split files exist and name disjoint case sets.
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("splits/phantom_r0.34_s0.json")).unwrap()).unwrap();
    assert!(!split["labeled"].as_array().unwrap().is_empty() && !split["test"].as_array().unwrap().is_empty());
    let cases = read_parquet(&results.join("cases.parquet"));
    assert!(cases.height() > 0);

    let output = atso(dir.path(), &["report", "results/tiny"]);
    assert!(output.status.success(), "report failed: {}", stderr(&output));
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(
        report.contains("| supervised |") && report.contains("34% labeled") && report.contains("n=2"),
        "{report}"
    );
    for ext in ["png", "svg"] {
        for figure in ["dice_vs_ratio", "curves", "cases"] {
            let plot = results.join(format!("{figure}_phantom.{ext}"));
            assert!(std::fs::metadata(&plot).unwrap().len() > 1000, "{} is too small", plot.display());
        }
    }
    // Every test case's preview slice is kept once per dataset, and each run's prediction of it.
    let test_cases = split["test"].as_array().unwrap();
    for case in test_cases {
        let case = case.as_str().unwrap();
        let image = results.join(format!("previews/data/phantom/{case}.image.png"));
        let truth = results.join(format!("previews/data/phantom/{case}.truth.png"));
        assert!(image.is_file() && truth.is_file(), "{}", image.display());
    }
    let run_ids = column("run_id");
    for run_id in run_ids.str().unwrap().iter().flatten() {
        let kept = std::fs::read_dir(results.join("previews").join(run_id)).unwrap().count();
        assert_eq!(kept, test_cases.len(), "previews of {run_id}");
    }

    // A second sweep of the same file skips what is recorded and loses nothing.
    let output = atso(dir.path(), &["sweep", "tiny.toml"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("4 already recorded"));
    assert_eq!(read_parquet(&results.join("runs.parquet")).height(), 4);
}

#[test]
fn outside_a_checkout_the_commit_is_unknown_and_failed_runs_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    if git2::Repository::discover(dir.path()).is_ok() {
        return; // the temp dir sits inside a checkout on this machine; nothing to test
    }
    // At 100 % labeled ATSO has no unlabeled case to pseudo-label: its runs fail, recorded.
    let text = TINY.replace("labeled_ratios = [0.34, 1.0]", "labeled_ratios = [1.0]") + "\n[[methods]]\nkind = \"atso\"\n";
    std::fs::write(dir.path().join("tiny.toml"), text).unwrap();
    let output = atso(dir.path(), &["sweep", "tiny.toml"]);
    assert_eq!(output.status.code(), Some(3), "some runs failed: exit code 3; {}", stderr(&output));
    let runs = read_parquet(&dir.path().join("results/tiny/runs.parquet"));
    assert_eq!(runs.height(), 4);
    let status: Vec<_> = runs
        .column("status")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect();
    assert_eq!(status, ["ok", "ok", "failed", "failed"]);
    let errors: Vec<_> = runs.column("error").unwrap().str().unwrap().iter().collect();
    assert!(errors[2].unwrap().contains("unlabeled cases"), "{:?}", errors[2]);
    assert!(runs
        .column("git_commit")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .all(|c| c == Some("unknown")));

    // The report still renders: a table for what worked, the failures listed with their errors.
    let output = atso(dir.path(), &["report", "results/tiny"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let results = dir.path().join("results/tiny");
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(report.contains("## Failed runs") && report.contains("unlabeled cases"), "{report}");
    assert!(results.join("dice_vs_ratio_phantom.png").is_file());
}

#[test]
fn bad_experiment_files_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            TINY.replace("seeds = [0, 1]", "seeds = [0, 1]\nseedz = [2]"),
            vec!["unknown.toml", "seedz"],
        ),
        (
            "ratio.toml",
            TINY.replace("[0.34, 1.0]", "[0.34, 1.5]"),
            vec!["ratio.toml", "labeled_ratios", "1.5", "(0, 1]"],
        ),
        (
            "nodata.toml",
            TINY.split("[[datasets]]").next().unwrap().to_string() + "[[methods]]\nkind = \"supervised\"\n",
            vec!["nodata.toml", "datasets"],
        ),
        (
            "method.toml",
            TINY.replace("kind = \"supervised\"", "kind = \"supervised\"\nlr = 0.1"),
            vec!["method.toml", "lr"],
        ),
    ];
    for (name, text, needles) in cases {
        std::fs::write(dir.path().join(name), text).unwrap();
        let output = atso(dir.path(), &["sweep", name]);
        assert_eq!(output.status.code(), Some(1), "{name} should be rejected");
        let message = stderr(&output);
        for needle in needles {
            assert!(message.contains(needle), "{name}: error lacks '{needle}': {message}");
        }
        assert!(
            !dir.path().join("results").exists(),
            "{name}: nothing may be written for an invalid file"
        );
    }
}

const ALL_METHODS: &str = r#"
name = "methods"
labeled_ratios = [0.4]
seeds = [7]

[budget]
iterations = 12
batch_size = 4
resolution = 32
eval_batch_size = 16

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
kind = "fully-supervised"

[[methods]]
kind = "atso"

[[methods]]
kind = "atso"
label = "atso-base-soft"
init = "base"
pseudo_labels = "soft"
confidence_threshold = 0.6

[[methods]]
kind = "self-training"

[[methods]]
kind = "mean-teacher"

[[methods]]
kind = "atso"
label = "atso-ensemble"
final = "ensemble"
"#;

fn records(results: &Path) -> Vec<atso_harness::records::RunRecord> {
    atso_harness::records::load_all(results).unwrap()
}

#[test]
fn every_method_records_a_row_on_one_budget_and_staged_methods_record_stages() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("methods.toml"), ALL_METHODS).unwrap();
    let output = atso(dir.path(), &["sweep", "methods.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let results = dir.path().join("results/methods");
    let runs = read_parquet(&results.join("runs.parquet"));
    let methods: Vec<String> = runs
        .column("method")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|m| m.unwrap().to_string())
        .collect();
    // Rows are ordered by start time, and parallel runs start together: compare as sets.
    let mut methods = methods;
    methods.sort();
    let mut expected = [
        "supervised",
        "fully-supervised",
        "atso",
        "atso-base-soft",
        "self-training",
        "mean-teacher",
        "atso-ensemble",
    ];
    expected.sort();
    assert_eq!(methods, expected);
    assert!(runs.column("status").unwrap().str().unwrap().iter().all(|s| s == Some("ok")));
    // The same optimiser-step budget for every method, as used.
    assert!(runs.column("iterations_used").unwrap().u64().unwrap().iter().all(|i| i == Some(12)));
    // Each run's peak resident memory, measured on its own (Linux resets the mark per run).
    if cfg!(target_os = "linux") {
        let peaks = runs.column("peak_rss_mib").unwrap().f64().unwrap().clone();
        assert!(peaks.iter().all(|p| p.is_some_and(|p| p > 1.0 && p < 64.0 * 1024.0)), "{peaks:?}");
    }
    let names = runs.column("method").unwrap().str().unwrap();
    let all_settings = runs.column("method_settings").unwrap().str().unwrap();
    let settings: std::collections::HashMap<String, serde_json::Value> = names
        .iter()
        .zip(all_settings.iter())
        .map(|(m, s)| (m.unwrap().to_string(), serde_json::from_str(s.unwrap()).unwrap()))
        .collect();
    assert_eq!(settings["atso"]["stage_steps"], serde_json::json!([2, 2, 2, 1]));
    assert_eq!(settings["atso"]["supervised_steps"], 5);
    assert!(settings["mean-teacher"]["schedule"]["warmup"].as_f64().unwrap() > 0.0);
    assert_eq!(settings["atso"]["init"], "base", "ATSO restarts each student from M0 by default");
    assert_eq!(
        settings["self-training"]["init"], "teacher",
        "naive self-training continues from its teacher"
    );
    assert_eq!(settings["atso-ensemble"]["final"], "ensemble");
    assert_eq!(settings["atso-ensemble"]["ensemble_members"], 2);
    // Mean teacher says whether its consistency term did anything.
    let diagnostics: Vec<String> = runs
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .filter(|n| n.starts_with("diag_"))
        .collect();
    assert!(diagnostics.contains(&"diag_consistency_weight_mean".to_string()), "{diagnostics:?}");

    let stages = read_parquet(&results.join("stages.parquet"));
    let staged: Vec<String> = stages
        .column("method")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|m| m.unwrap().to_string())
        .collect();
    assert_eq!(staged.iter().filter(|m| *m == "atso").count(), 4);
    for column in ["first_step_loss_self", "first_step_loss_cross", "pseudo_label_dice_all", "lr_first"] {
        assert_eq!(stages.column(column).unwrap().null_count(), 0, "{column}");
    }
    // Every stage restarts its learning-rate schedule.
    assert!(stages.column("lr_first").unwrap().f64().unwrap().iter().all(|lr| lr == Some(0.01)));
    assert_eq!(staged.iter().filter(|m| *m == "self-training").count(), 4);
    assert_eq!(stages.column("first_step_pseudo_loss").unwrap().null_count(), 0);
    assert!(stages
        .column("flip_rate")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .all(|f| f.is_some_and(|f| (0.0..=1.0).contains(&f))));
    assert!(stages
        .column("pseudo_label_dice")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .any(|d| d.is_some()));
    // Per-class pseudo-label and validation Dice, whose mean over the classes that have one is
    // the recorded mean.
    for (mean_column, prefix) in [("pseudo_label_dice", "pseudo_label_dice_"), ("validation_dice", "validation_dice_")] {
        let per_class: Vec<Vec<Option<f64>>> = atso_harness::data::phantom::CLASSES[1..]
            .iter()
            .map(|class| {
                let column = stages.column(&format!("{prefix}{class}")).unwrap();
                column.f64().unwrap().iter().collect()
            })
            .collect();
        let means: Vec<Option<f64>> = stages.column(mean_column).unwrap().f64().unwrap().iter().collect();
        for (row, mean) in means.iter().enumerate() {
            let present: Vec<f64> = per_class.iter().filter_map(|c| c[row]).collect();
            assert!(!present.is_empty(), "{prefix}*: stage row {row} has no class");
            let of_classes = present.iter().sum::<f64>() / present.len() as f64;
            assert!(
                (of_classes - mean.unwrap()).abs() < 1e-12,
                "{mean_column}, row {row}: {of_classes} vs {mean:?}"
            );
        }
    }

    let output = atso(dir.path(), &["report", "results/methods"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(
        report.contains("lazy learning per stage, 40% labeled") && report.contains("| self-training stage 4 * |"),
        "{report}"
    );
    assert!(std::fs::metadata(results.join("lazy_learning_phantom.png")).unwrap().len() > 1000);
}

#[test]
fn ledger_shows_atso_never_trains_on_self_made_labels_and_self_training_does() {
    let dir = tempfile::tempdir().unwrap();
    let text = ALL_METHODS.to_string()
        + "\n[[methods]]\nkind = \"atso\"\nlabel = \"atso-teacher\"\ninit = \"teacher\"\n"
        + "\n[[methods]]\nkind = \"atso\"\nlabel = \"atso-own\"\nrelabel = \"own\"\n";
    std::fs::write(dir.path().join("methods.toml"), text).unwrap();
    let output = atso(dir.path(), &["sweep", "methods.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    for record in records(&dir.path().join("results/methods")) {
        let self_labeled = atso_harness::staged::self_labeled_stages(&record.ledger);
        let flagged: Vec<usize> = record
            .stages
            .iter()
            .filter(|s| s.labels_self_made || s.student_exposed)
            .map(|s| s.stage)
            .collect();
        assert_eq!(flagged, self_labeled, "{}: stage records and ledger audit agree", record.method);
        match record.method.as_str() {
            "atso" | "atso-base-soft" | "atso-ensemble" => {
                assert!(!record.ledger.is_empty());
                assert!(
                    self_labeled.is_empty(),
                    "{}: stages {self_labeled:?} trained on labels their own lineage made",
                    record.method
                );
                // Every student restarts from M0 (the default init = base).
                for event in record
                    .ledger
                    .iter()
                    .filter(|e| e.event == atso_harness::records::LedgerEvent::Train)
                {
                    assert!(event.labels_from_stage < event.stage);
                    assert_eq!(event.init_from_stage, Some(0));
                }
            }
            // From round 2 a teacher lineage has already fitted U_k's older labels.
            "atso-teacher" => assert_eq!(self_labeled, [3, 4], "{:?}", record.ledger),
            // Asynchrony removed: round 2 trains on labels its own stage-1 model made.
            "atso-own" => assert_eq!(self_labeled, [3, 4], "{:?}", record.ledger),
            "self-training" => assert_eq!(
                self_labeled,
                [2, 3, 4],
                "generations 2.. train on labels of the model that just trained on all of U"
            ),
            _ => assert!(record.ledger.is_empty()),
        }
    }
}

#[test]
fn same_seed_gives_the_same_split_and_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let text = ALL_METHODS.split("[[methods]]").next().unwrap().to_string() + "[[methods]]\nkind = \"atso\"\nsubsets = 3\n";
    std::fs::write(dir.path().join("methods.toml"), &text).unwrap();
    assert!(atso(dir.path(), &["sweep", "methods.toml"]).status.success());
    let split_path = dir.path().join("results/methods/splits/phantom_r0.4_s7.json");
    let split = std::fs::read_to_string(&split_path).unwrap();
    // --rerun runs it again; the split file is checked against the existing one, not replaced.
    assert!(atso(dir.path(), &["sweep", "methods.toml", "--rerun"]).status.success());
    assert_eq!(std::fs::read_to_string(&split_path).unwrap(), split);
    let records = records(&dir.path().join("results/methods"));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].ledger, records[1].ledger);
    assert_eq!(
        records[0]
            .ledger
            .iter()
            .filter(|e| e.event == atso_harness::records::LedgerEvent::Label && e.stage == 0)
            .count(),
        3
    );
    assert_ne!(records[0].run_id, records[1].run_id);
}

#[test]
fn every_shipped_experiment_file_is_valid() {
    let dir = common::checkout().join("experiments");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let experiment = atso_harness::config::Experiment::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(!atso_harness::runner::expand(&experiment).is_empty());
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "expected the quickstart, ablation, paper-scale and GPU smoke files, found {checked}"
    );
}

#[test]
fn saved_predictions_reopen_on_the_image_grid_and_reproduce_the_recorded_dice_and_asd() {
    let dir = tempfile::tempdir().unwrap();
    let text = TINY
        .replace("labeled_ratios = [0.34, 1.0]", "labeled_ratios = [0.5]")
        .replace("seeds = [0, 1]", "seeds = [0]")
        + "\n[output]\nsave_predictions = true\n[optimizer]\nlr = 0.05\n";
    // Trained long enough to predict the organs, so surface distances are measured, not only
    // penalised.
    let text = text.replace("iterations = 4", "iterations = 200");
    std::fs::write(dir.path().join("tiny.toml"), text).unwrap();
    let output = atso(dir.path(), &["sweep", "tiny.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let results = dir.path().join("results/tiny");
    let record = records(&results).pop().unwrap();
    let predictions = results.join(record.predictions_dir.as_deref().expect("predictions recorded"));
    assert_eq!(record.cases.len(), record.n_test);
    let mut measured = 0;
    for scores in &record.cases {
        let path = predictions.join(format!("{}.nii.gz", scores.case_id));
        let (predicted, header) = atso_harness::data::nifti::read_with_header(&path).unwrap();
        let image = dir.path().join(format!("data/phantom/imagesTr/{}.nii.gz", scores.case_id));
        let (image, image_header) = atso_harness::data::nifti::read_with_header(&image).unwrap();
        let truth = atso_harness::data::nifti::read(&dir.path().join(format!("data/phantom/labelsTr/{}.nii.gz", scores.case_id))).unwrap();
        assert_eq!(predicted.dims, image.dims, "{}: prediction on the image grid", scores.case_id);
        assert_eq!(predicted.spacing, image.spacing);
        assert_eq!(header.sform(), image_header.sform(), "{}: the image's geometry", scores.case_id);
        assert_eq!(header.transform_codes(), image_header.transform_codes());
        // Dice recomputed here, independently of the harness's metrics: 2|P∩T| / (|P| + |T|),
        // a class absent from the truth is skipped (the MONAI rule the run used).
        for (i, class) in (1..record.class_names.len()).enumerate() {
            let c = class as f32;
            let p = predicted.data.iter().filter(|&&v| v == c).count();
            let t = truth.data.iter().filter(|&&v| v == c).count();
            let both = predicted.data.iter().zip(&truth.data).filter(|(a, b)| **a == c && **b == c).count();
            let recomputed = (t > 0).then(|| 2.0 * both as f64 / (p + t) as f64);
            let recorded = scores.of(&atso_harness::metric_registry::DICE)[i];
            match (recorded, recomputed) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{} class {class}: {a} vs {b}", scores.case_id),
                (a, b) => assert_eq!(a, b, "{} class {class}", scores.case_id),
            }
            // ASD recomputed by brute force (medpy's asd(prediction, truth)): the mean over the
            // prediction's surface voxels of the distance to the nearest truth surface voxel; a
            // missed class costs the volume's diagonal, an absent one has none.
            let dims = truth.dims;
            let spacing = truth.spacing.map(f64::from);
            let (p_surface, t_surface) = (
                surface_points(&predicted.data, c, dims, spacing),
                surface_points(&truth.data, c, dims, spacing),
            );
            let recomputed = match (t_surface.is_empty(), p_surface.is_empty()) {
                (true, _) => None,
                (false, true) => Some(dims.iter().zip(spacing).map(|(&n, s)| (n as f64 * s).powi(2)).sum::<f64>().sqrt()),
                (false, false) => {
                    let nearest = |a: &[f64; 3]| {
                        t_surface
                            .iter()
                            .map(|b| (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt())
                            .fold(f64::INFINITY, f64::min)
                    };
                    Some(p_surface.iter().map(nearest).sum::<f64>() / p_surface.len() as f64)
                }
            };
            let recorded = scores.of(&atso_harness::metric_registry::ASD)[i];
            match (recorded, recomputed) {
                (Some(a), Some(b)) => {
                    assert!((a - b).abs() < 1e-9, "{} class {class} ASD: {a} vs {b}", scores.case_id);
                    measured += usize::from(!p_surface.is_empty());
                }
                (a, b) => assert_eq!(a, b, "{} class {class} ASD", scores.case_id),
            }
        }
    }
    assert!(measured > 0, "no case had a measured ASD to compare: {:?}", record.cases);
    // The runs table and the report carry ASD beside HD95.
    let runs = read_parquet(&results.join("runs.parquet"));
    assert!(runs.column("asd_mean").unwrap().f64().unwrap().get(0).is_some_and(|v| v >= 0.0));
    let output = atso(dir.path(), &["report", "results/tiny"]);
    assert!(output.status.success(), "report failed: {}", stderr(&output));
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(report.contains("ASD (mm, lower is better)"), "{report}");
}

/// Positions (mm) of the voxels of `class` that have a 6-neighbour outside it or lie on the
/// volume's border (scipy's erosion with a zero border, as medpy uses it).
fn surface_points(data: &[f32], class: f32, dims: [usize; 3], spacing: [f64; 3]) -> Vec<[f64; 3]> {
    let at = |x: isize, y: isize, z: isize| {
        let inside = (0..dims[0] as isize).contains(&x) && (0..dims[1] as isize).contains(&y) && (0..dims[2] as isize).contains(&z);
        inside && data[x as usize + dims[0] * (y as usize + dims[1] * z as usize)] == class
    };
    let mut points = Vec::new();
    for z in 0..dims[2] as isize {
        for y in 0..dims[1] as isize {
            for x in 0..dims[0] as isize {
                let neighbours = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)];
                if at(x, y, z) && neighbours.iter().any(|(dx, dy, dz)| !at(x + dx, y + dy, z + dz)) {
                    points.push([x as f64 * spacing[0], y as f64 * spacing[1], z as f64 * spacing[2]]);
                }
            }
        }
    }
    points
}

const M0_CONTROL: &str = r#"
name = "m0"
labeled_ratios = [0.5]
seeds = [3]

[budget]
iterations = 40
batch_size = 4
resolution = 32
eval_batch_size = 16

[model]
channels = [4, 8]
dropout = [0.0, 0.1]

[[datasets]]
name = "phantom"
format = "phantom"
path = "data/phantom"
phantom = { cases = 10, size = 32, slices = 6, seed = 3 }

[[methods]]
kind = "atso"
supervised_fraction = 0.4

[[methods]]
kind = "supervised"
label = "supervised-m0"
budget_fraction = 0.4
"#;

/// Every run's training curve lands in curves.parquet with its phases, and supervised-only with
/// `budget_fraction` is ATSO's M0 step for step: the two curves agree to the bit over M0's
/// steps (same seed, pool and schedule), which is what makes it a fair control for "did the
/// stages after M0 help".
#[test]
fn curves_are_recorded_and_budget_fraction_reproduces_atsos_m0() {
    let dir = tempfile::tempdir().unwrap();
    git_checkout(dir.path(), &[("m0.toml", M0_CONTROL)]);
    let output = atso(dir.path(), &["sweep", "m0.toml"]);
    assert!(output.status.success(), "sweep failed: {}", stderr(&output));
    let results = dir.path().join("results/m0");
    let curves = read_parquet(&results.join("curves.parquet"));
    assert!(results.join("curves.csv").is_file());
    let method = curves.column("method").unwrap().str().unwrap().clone();
    let phase = curves.column("phase_name").unwrap().str().unwrap().clone();
    let step = curves.column("step").unwrap().u64().unwrap().clone();
    let loss = curves.column("loss").unwrap().f64().unwrap().clone();
    let lr = curves.column("lr").unwrap().f64().unwrap().clone();
    let points = |label: &str| -> Vec<(String, u64, u64, u64)> {
        (0..curves.height())
            .filter(|&i| method.get(i) == Some(label))
            .map(|i| {
                (
                    phase.get(i).unwrap().to_string(),
                    step.get(i).unwrap(),
                    loss.get(i).unwrap().to_bits(),
                    lr.get(i).unwrap().to_bits(),
                )
            })
            .collect()
    };
    let atso = points("atso");
    let control = points("supervised-m0");
    // 40 steps: M0 16, then four stages of 6; a point every step (a hundredth of 40, at least 1).
    let phases: Vec<&str> = atso.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(phases.iter().filter(|p| **p == "M0").count(), 16, "{phases:?}");
    for stage in 1..=4 {
        assert_eq!(phases.iter().filter(|p| **p == format!("stage {stage}")).count(), 6, "{phases:?}");
    }
    assert_eq!(control.len(), 16, "the control trains M0's 16 steps");
    let m0: Vec<(u64, u64, u64)> = atso.iter().filter(|p| p.0 == "M0").map(|p| (p.1, p.2, p.3)).collect();
    let control: Vec<(u64, u64, u64)> = control.iter().map(|p| (p.1, p.2, p.3)).collect();
    assert_eq!(m0, control, "supervised-m0's curve is ATSO's M0, bit for bit");
    // The stages report the supervised and pseudo-label parts of their loss.
    let names: Vec<String> = curves.get_column_names().iter().map(|n| n.to_string()).collect();
    assert!(
        names.contains(&"part_supervised".to_string()) && names.contains(&"part_pseudo_label".to_string()),
        "{names:?}"
    );
    let runs = read_parquet(&results.join("runs.parquet"));
    let used = runs.column("iterations_used").unwrap().u64().unwrap().clone();
    let labels = runs.column("method").unwrap().str().unwrap().clone();
    for i in 0..runs.height() {
        let expected = if labels.get(i) == Some("supervised-m0") { 16 } else { 40 };
        assert_eq!(used.get(i), Some(expected), "iterations_used of {:?}", labels.get(i));
    }
}

/// `[output] tensorboard = true` writes each run's curve as a TensorBoard event file that
/// TensorBoard's own reader (the `tensorboard` Python package's EventFileLoader, which migrates
/// simple values to the scalar plugin's tensors as TensorBoard shows them) reads back with the
/// values the curve holds.
#[test]
fn tensorboard_event_files_read_back_in_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let text = TINY
        .replace("labeled_ratios = [0.34, 1.0]", "labeled_ratios = [0.5]")
        .replace("seeds = [0, 1]", "seeds = [0]")
        + "\n[output]\ntensorboard = true\n";
    std::fs::write(dir.path().join("tiny.toml"), text).unwrap();
    let output = atso(dir.path(), &["sweep", "tiny.toml"]);
    assert!(output.status.success(), "sweep failed: {}", stderr(&output));
    let results = dir.path().join("results/tiny");
    let record: serde_json::Value = {
        let path = std::fs::read_dir(results.join("records")).unwrap().next().unwrap().unwrap().path();
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let run_id = record["run_id"].as_str().unwrap();
    let folder = results.join("tensorboard").join(run_id);
    let file = std::fs::read_dir(&folder).unwrap().next().unwrap().unwrap().path();
    // The curve's (step, loss) as recorded, as f32 as TensorBoard keeps them.
    let curve: Vec<(i64, f32)> = record["curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["step"].as_i64().unwrap(), p["loss"].as_f64().unwrap() as f32))
        .collect();
    assert_eq!(curve.len(), 4, "a 4-step run records a point per step");
    let ours: Vec<(i64, f32)> = atso_harness::tensorboard::read(&file)
        .unwrap()
        .iter()
        .filter_map(|e| e.scalars.iter().find(|(t, _)| t == "train/loss").map(|(_, v)| (e.step, *v)))
        .collect();
    assert_eq!(ours, curve, "the project's reader");
    let script = format!(
        "from tensorboard.backend.event_processing.event_file_loader import EventFileLoader\n\
         from tensorboard.util import tensor_util\n\
         for e in EventFileLoader({:?}).Load():\n\
         \x20   for v in e.summary.value:\n\
         \x20       if v.tag == 'train/loss': print(e.step, repr(float(tensor_util.make_ndarray(v.tensor))))\n",
        file.display().to_string()
    );
    let python = std::process::Command::new("python3").args(["-c", &script]).output();
    match python {
        Ok(out) if out.status.success() => {
            let theirs: Vec<(i64, f32)> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| {
                    let (step, value) = l.split_once(' ').unwrap();
                    (step.parse().unwrap(), value.parse::<f32>().unwrap())
                })
                .collect();
            assert_eq!(theirs, curve, "TensorBoard's reader");
        }
        Ok(out) => common::skip_unless_required(
            "ATSO_REQUIRE_TENSORBOARD",
            &format!(
                "the tensorboard Python package could not read the file: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(err) => common::skip_unless_required("ATSO_REQUIRE_TENSORBOARD", &format!("python3 not runnable: {err}")),
    }
}
