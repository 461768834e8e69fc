//! The aggregation rules and the check, on a small hand-made records folder whose expected
//! numbers are computed by hand below; the paired statistics against scipy fixtures; and the
//! Markdown and LaTeX of a fixed table against stored files.

use atso_reports::check::{self, Expected, Order, Reference};
use atso_reports::{cells, load, report, stats, table};
use atso_schema::records::{self, RunRecord};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A record with the fields these tests vary; everything else fixed.
#[allow(clippy::too_many_arguments)]
fn record(
    run_id: &str,
    method: &str,
    kind: &str,
    seed: u64,
    ok: bool,
    dice: f64,
    cell: &str,
    commit: &str,
    dirty: bool,
    finished: &str,
    case_dice: [f64; 2],
) -> RunRecord {
    let cases = if ok {
        json!([
            {"case_id": "c1", "dice": [case_dice[0]], "iou": [null]},
            {"case_id": "c2", "dice": [case_dice[1]], "iou": [null]},
        ])
    } else {
        json!([])
    };
    let mut value = json!({
        "run_id": run_id, "experiment": "hand", "dataset": "d", "method": method, "method_kind": kind,
        "labeled_ratio": 0.25, "labeled_fraction": 0.25, "seed": seed,
        "status": if ok { "ok" } else { "failed" }, "error": if ok { None } else { Some("boom") },
        "dice_mean": if ok { Some(dice) } else { None }, "iou_mean": null, "val_dice_mean": null,
        "class_dice": [["liver", if ok { Some(dice) } else { None }]],
        "iterations": 10, "iterations_used": 10, "batch_size": 2, "resolution": 16,
        "n_labeled": 1, "n_unlabeled": 3, "n_test": 2, "wall_seconds": 1.0, "backend": "flex", "threads": 1,
        "cpu": "test cpu", "simd": "avx2", "git_commit": commit, "git_dirty": dirty, "git_branch": null,
        "config_hash": format!("{cell}-{seed}"), "cell_hash": cell, "method_settings": "{}",
        "split_file": "", "version": "0", "started_at": finished, "finished_at": finished,
        "class_names": ["background", "liver"],
    });
    value["cases"] = cases;
    serde_json::from_value(value).unwrap()
}

/// The hand-made folder:
/// - supervised (cell S): seeds 0, 1 ok (0.50, 0.70); seed 1 rerun later at 0.60 (the rerun
///   counts); seed 2 failed then succeeded at 0.80 -> values 0.50, 0.60, 0.80: mean 0.6333.
/// - atso (cell A1): seeds 0, 1: 0.60, 0.70 -> mean 0.65; one row from a dirty tree.
/// - atso with an edited setting (cell A2): seed 0: 0.40 -> its own row.
fn folder() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("hand");
    let c = "c0ffee";
    for r in [
        record(
            "s0",
            "supervised",
            "supervised",
            0,
            true,
            0.50,
            "S",
            c,
            false,
            "2026-01-01T00:00:01Z",
            [0.4, 0.6],
        ),
        record(
            "s1",
            "supervised",
            "supervised",
            1,
            true,
            0.70,
            "S",
            c,
            false,
            "2026-01-01T00:00:02Z",
            [0.6, 0.8],
        ),
        record(
            "s1-rerun",
            "supervised",
            "supervised",
            1,
            true,
            0.60,
            "S",
            c,
            false,
            "2026-01-01T00:00:09Z",
            [0.5, 0.7],
        ),
        record(
            "s2-failed",
            "supervised",
            "supervised",
            2,
            false,
            0.0,
            "S",
            c,
            false,
            "2026-01-01T00:00:03Z",
            [0.0, 0.0],
        ),
        record(
            "s2",
            "supervised",
            "supervised",
            2,
            true,
            0.80,
            "S",
            c,
            false,
            "2026-01-01T00:00:04Z",
            [0.7, 0.9],
        ),
        record(
            "a0",
            "atso",
            "atso",
            0,
            true,
            0.60,
            "A1",
            c,
            false,
            "2026-01-01T00:00:05Z",
            [0.5, 0.7],
        ),
        record(
            "a1",
            "atso",
            "atso",
            1,
            true,
            0.70,
            "A1",
            c,
            true,
            "2026-01-01T00:00:06Z",
            [0.65, 0.75],
        ),
        record(
            "a0-edited",
            "atso",
            "atso",
            0,
            true,
            0.40,
            "A2",
            c,
            false,
            "2026-01-01T00:00:07Z",
            [0.3, 0.5],
        ),
    ] {
        records::save(&results, &r).unwrap();
    }
    records::rebuild_tables(&results).unwrap();
    (dir, results)
}

#[test]
fn cells_count_each_seed_once_and_keep_configurations_apart() {
    let (_dir, results) = folder();
    let tables = load::read(&[results]).unwrap();
    let cells = cells::build(&tables.runs, false).unwrap();
    let labels: Vec<&str> = cells.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(labels, ["supervised", "atso [cfg A1]", "atso [cfg A2]"]);
    let supervised = &cells[0];
    let mut values = supervised.values("dice_mean");
    values.sort_by(f64::total_cmp);
    assert_eq!(values, [0.5, 0.6, 0.8], "the rerun replaces seed 1; seed 2's later success counts");
    assert_eq!(supervised.superseded, 1);
    assert!(supervised.failed_seeds.is_empty());
    let s = stats::summarise(&values).unwrap();
    // mean 0.63333, std = sqrt(((0.5-m)^2 + (0.6-m)^2 + (0.8-m)^2) / 2) = 0.152753
    assert!((s.mean - 0.633_333_333).abs() < 1e-9 && (s.std - 0.152_752_523).abs() < 1e-9);
    assert_eq!(cells[1].values("dice_mean"), [0.6, 0.7]);
    assert_eq!(cells[2].values("dice_mean"), [0.4]);
}

#[test]
fn one_configuration_keeps_one_row_label_at_every_ratio() {
    // Folder "evidence": supervised (series SE) and two atso configurations (AE1, AE2: an
    // edited setting under one experiment name) at ratios 0.1 and 0.2. Folder "ablation":
    // supervised (series SA) at 0.2 only. Cell hashes differ per ratio, as real ones do.
    let dir = tempfile::tempdir().unwrap();
    let save = |folder: &str, method: &str, ratio: f64, series: &str| {
        let cell = format!("{series}-{ratio}");
        let id = format!("{folder}-{cell}");
        let mut r = record(
            &id,
            method,
            method,
            0,
            true,
            0.5,
            &cell,
            "c0ffee",
            false,
            "2026-01-01T00:00:01Z",
            [0.5, 0.5],
        );
        r.experiment = folder.into();
        r.labeled_ratio = ratio;
        r.series_hash = series.into();
        records::save(&dir.path().join(folder), &r).unwrap();
    };
    for ratio in [0.1, 0.2] {
        save("evidence", "supervised", ratio, "SE");
        save("evidence", "atso", ratio, "AE1");
        save("evidence", "atso", ratio, "AE2");
    }
    save("ablation", "supervised", 0.2, "SA");
    for folder in ["evidence", "ablation"] {
        records::rebuild_tables(&dir.path().join(folder)).unwrap();
    }
    let tables = load::read(&[dir.path().join("evidence"), dir.path().join("ablation")]).unwrap();
    let cells = cells::build(&tables.runs, false).unwrap();
    let mut ratios_per_label: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for cell in &cells {
        ratios_per_label.entry(cell.method.clone()).or_default().push(cell.labeled_ratio);
    }
    let expected: std::collections::BTreeMap<String, Vec<f64>> = [
        ("atso [cfg AE1]", vec![0.1, 0.2]),
        ("atso [cfg AE2]", vec![0.1, 0.2]),
        ("supervised [ablation]", vec![0.2]),
        ("supervised [evidence]", vec![0.1, 0.2]),
    ]
    .into_iter()
    .map(|(l, r)| (l.to_string(), r))
    .collect();
    assert_eq!(ratios_per_label, expected, "one label per configuration, the same at every ratio");
}

#[test]
fn rows_from_two_commits_are_refused_unless_allowed() {
    let (_dir, results) = folder();
    let mut late = record(
        "s3",
        "supervised",
        "supervised",
        3,
        true,
        0.9,
        "S",
        "beefcafe",
        false,
        "2026-01-02T00:00:00Z",
        [0.9, 0.9],
    );
    late.experiment = "hand".into();
    records::save(&results, &late).unwrap();
    records::rebuild_tables(&results).unwrap();
    let tables = load::read(&[results]).unwrap();
    let message = format!("{:#}", cells::build(&tables.runs, false).unwrap_err());
    assert!(
        message.contains("c0ffee") && message.contains("beefcafe") && message.contains("--allow-mixed"),
        "{message}"
    );
    let cells = cells::build(&tables.runs, true).unwrap();
    assert!(cells[0].mixed);
    let table = report::metric_table(&cells, &report::DICE, "t");
    assert!(table.rows[0].entries[0].marks.contains('‡'));
}

#[test]
fn tables_show_provenance_a_dirty_warning_and_paired_notes() {
    let (dir, results) = folder();
    let out = dir.path().join("report");
    let files = atso_reports::render(&[results], &out, &Default::default()).unwrap();
    let text = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(
        text.contains("**Warning:** 1 of 6 runs came from a working tree with uncommitted changes"),
        "{text}"
    );
    assert!(text.contains("commits c0ffee (6)"), "{text}");
    assert!(text.contains("25% labeled (1/4 = 25%)"), "{text}");
    // 63.3 ± 15.3 over three seeds, t(0.975, 2) = 4.3027: [25.4, 101.3], clipped to Dice's range.
    assert!(text.contains("| supervised | 63.3 ± 15.3 <sub>[25.4, 100.0] n=3</sub> |"), "{text}");
    // Paired over (seed, case): atso [cfg A1] vs supervised on seeds 0 and 1.
    assert!(text.contains("atso [cfg A1] − supervised"), "{text}");
    let html = std::fs::read_to_string(&files.html).unwrap();
    assert!(html.contains("<svg") && html.contains("<table>"));
    let csv = std::fs::read_to_string(&files.csv).unwrap();
    assert!(
        csv.lines()
            .any(|l| l.starts_with("d,supervised,supervised,0.25,1,4,dice_mean,3,0.6333")),
        "{csv}"
    );
    assert!(files.latex.iter().any(|p| p.ends_with("all.tex")));
}

fn reference() -> Reference {
    Reference {
        experiment: "hand".into(),
        values: vec![Expected {
            dataset: "d".into(),
            method: "supervised".into(),
            labeled_ratio: 0.25,
            metric: "dice_mean".into(),
            expected: 0.6333,
            abs_tol: Some(0.01),
            rel_tol: None,
            derivation: "hand".into(),
            simd: None,
        }],
        orders: vec![Order {
            dataset: "d".into(),
            labeled_ratio: 0.25,
            metric: "dice_mean".into(),
            method: "supervised".into(),
            at_least_as_good_as: "atso [cfg A2]".into(),
            margin: 0.0,
        }],
        ..Reference::default()
    }
}

#[test]
fn check_passes_on_its_own_reference_and_names_what_fails() {
    let (dir, results) = folder();
    let folders = [results];
    let outcome = check::check(&folders, &reference(), false).unwrap();
    assert!(outcome.passed(), "{}", outcome.table());
    // A fresh reference written by --update passes too.
    let path = dir.path().join("ref.toml");
    let updated = check::update(&folders, &Reference::default(), &["dice_mean".into()], 0.02, false).unwrap();
    check::write_reference(&path, &updated).unwrap();
    let reread = Reference::read(&path).unwrap();
    assert_eq!(reread.values.len(), 3);
    assert_eq!(reread.commit, "c0ffee");
    assert!(check::check(&folders, &reread, false).unwrap().passed());
    // Perturbed: the offending row is named.
    let mut perturbed = reference();
    perturbed.values[0].expected = 0.70;
    let outcome = check::check(&folders, &perturbed, false).unwrap();
    assert!(!outcome.passed());
    let table = outcome.table();
    assert!(
        table.contains("d / supervised / 25% / dice_mean") && table.contains("FAIL outside tolerance"),
        "{table}"
    );
    // Missing: a cell that was never run.
    let mut missing = reference();
    missing.values[0].method = "mean-teacher".into();
    let table = check::check(&folders, &missing, false).unwrap().table();
    assert!(table.contains("missing") && table.contains("FAIL"), "{table}");
    // An expectation for another class of machine does not apply; one for this class does.
    let mut other_machine = reference();
    other_machine.values[0].simd = Some("elementwise x86-64-v2".into());
    other_machine.values[0].expected = 0.99;
    let outcome = check::check(&folders, &other_machine, false).unwrap();
    assert!(outcome.passed());
    assert!(
        outcome
            .table()
            .contains("not applied: 1 expectation(s) for machines whose kernels are \"elementwise x86-64-v2\" (these runs: \"avx2\")"),
        "a skipped expectation is listed, not dropped silently: {}",
        outcome.table()
    );
    let mut this_machine = reference();
    this_machine.values[0].simd = Some("avx2".into());
    this_machine.values[0].expected = 0.99;
    let table = check::check(&folders, &this_machine, false).unwrap().table();
    assert!(table.contains("[avx2]") && table.contains("FAIL"), "{table}");
    // A list of classes applies where any one of them does.
    let mut either_machine = reference();
    either_machine.values[0].simd = Some(check::Machines::AnyOf(vec!["elementwise x86-64-v2".into(), "avx2".into()]));
    either_machine.values[0].expected = 0.99;
    let table = check::check(&folders, &either_machine, false).unwrap().table();
    assert!(
        table.contains("[elementwise x86-64-v2 | avx2]") && table.contains("FAIL"),
        "{table}"
    );
    // A violated order.
    let mut order = reference();
    order.orders[0].method = "atso [cfg A2]".into();
    order.orders[0].at_least_as_good_as = "supervised".into();
    assert!(!check::check(&folders, &order, false).unwrap().passed());
}

#[derive(serde::Deserialize)]
struct Fixtures {
    cases: Vec<Fixture>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    name: String,
    a: Vec<f64>,
    b: Vec<f64>,
    wilcoxon_p: f64,
    mean_difference: f64,
    bootstrap_low: f64,
    bootstrap_high: f64,
}

/// The stored fixtures, found when the tests run (cargo sets `CARGO_MANIFEST_DIR` for them): a
/// path baked in with `env!` named the checkout the binary was compiled in, and a target directory
/// shared between clones handed one clone a test binary compiled in another.
fn fixtures_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests")).join("tests/fixtures")
}

#[test]
fn paired_statistics_match_scipy() {
    let path = fixtures_dir().join("paired.json");
    let fixtures: Fixtures = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(fixtures.cases.len(), 6);
    for case in fixtures.cases {
        let p = stats::paired(&case.a, &case.b).unwrap();
        assert!((p.mean_difference - case.mean_difference).abs() < 1e-12, "{}", case.name);
        assert!(
            (p.p_value - case.wilcoxon_p).abs() < 1e-9,
            "{}: p {} vs scipy {}",
            case.name,
            p.p_value,
            case.wilcoxon_p
        );
        // Bootstrap intervals are Monte Carlo estimates on both sides.
        let spread = (case.bootstrap_high - case.bootstrap_low).abs().max(1e-6);
        assert!(
            (p.ci_low - case.bootstrap_low).abs() < 0.05 * spread && (p.ci_high - case.bootstrap_high).abs() < 0.05 * spread,
            "{}: [{}, {}] vs scipy [{}, {}]",
            case.name,
            p.ci_low,
            p.ci_high,
            case.bootstrap_low,
            case.bootstrap_high
        );
    }
}

fn fixed_table() -> table::Table {
    table::Table {
        title: "phantom: test Dice (%)".into(),
        caption: "Fixed table for format tests".into(),
        corner: "method".into(),
        columns: vec!["10% labeled (1/14 = 7%)".into(), "50% labeled".into()],
        rows: vec![
            table::Row {
                label: "supervised".into(),
                entries: vec![
                    table::Entry {
                        value: "22.7 ± 3.1".into(),
                        detail: "[15.0, 30.4] n=3".into(),
                        best: false,
                        marks: String::new(),
                    },
                    table::Entry::empty(),
                ],
            },
            table::Row {
                label: "atso_k2".into(),
                entries: vec![
                    table::Entry {
                        value: "25.0 ± 2.0".into(),
                        detail: "n=3".into(),
                        best: true,
                        marks: "‡".into(),
                    },
                    table::Entry {
                        value: "48.6 ± 1.0".into(),
                        detail: String::new(),
                        best: true,
                        marks: String::new(),
                    },
                ],
            },
        ],
        notes: vec!["‡ mixed commits & more".into()],
        provenance: vec!["3 runs".into(), "commits abc (3)".into()],
        warnings: vec!["1 of 3 runs came from a dirty tree".into()],
    }
}

#[test]
fn markdown_and_latex_of_a_fixed_table_match_stored_files() {
    let dir = fixtures_dir();
    let table = fixed_table();
    for (name, text) in [
        ("fixed_table.md", table::markdown(&table)),
        ("fixed_table.tex", table::latex(&table)),
    ] {
        let path = dir.join(name);
        if std::env::var_os("ATSO_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} missing (ATSO_BLESS=1 writes it)", path.display()));
        assert_eq!(text, stored, "{name} differs from the stored file");
    }
}

/// A folder of three methods over three seeds, each with two test cases.
fn three_methods(dir: &Path, config: Option<&str>) -> PathBuf {
    let results = dir.join("three");
    let methods = [
        ("supervised", "supervised", "S", 0.5),
        ("atso", "atso", "A", 0.6),
        ("mean-teacher", "mean-teacher", "M", 0.55),
    ];
    for (method, kind, cell, base) in methods {
        for seed in 0..3u64 {
            let dice = base + 0.05 * seed as f64;
            let r = record(
                &format!("{method}-{seed}"),
                method,
                kind,
                seed,
                true,
                dice,
                cell,
                "c0ffee",
                false,
                &format!("2026-01-01T00:00:0{seed}Z"),
                [dice - 0.1, dice + 0.1],
            );
            records::save(&results, &r).unwrap();
        }
    }
    if let Some(text) = config {
        std::fs::create_dir_all(results.join("configs")).unwrap();
        std::fs::write(results.join("configs/abc.toml"), text).unwrap();
    }
    records::rebuild_tables(&results).unwrap();
    results
}

/// The rows of the seed-level comparisons table of a rendered report.
fn seed_level_rows(markdown: &str) -> Vec<String> {
    markdown
        .lines()
        .skip_while(|l| !l.contains("comparisons, seed as the unit"))
        .skip(1)
        .skip_while(|l| !l.starts_with("| 25% labeled"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim().to_string())
        .collect()
}

/// Without a declaration the family is every method against supervised-only and ATSO; an
/// experiment file's `[report] comparisons` replaces it with exactly the declared pairs, and the
/// table says the family was declared.
#[test]
fn declared_comparisons_are_the_family() {
    let dir = tempfile::tempdir().unwrap();
    let default = three_methods(&dir.path().join("a"), None);
    let out = dir.path().join("report-a");
    let files = atso_reports::render(&[default], &out, &Default::default()).unwrap();
    let text = std::fs::read_to_string(&files.markdown).unwrap();
    assert_eq!(
        seed_level_rows(&text),
        [
            "25% labeled: atso − supervised",
            "25% labeled: mean-teacher − supervised",
            "25% labeled: mean-teacher − atso"
        ],
        "{text}"
    );
    let experiment = r#"
name = "three"
labeled_ratios = [0.25]
seeds = [0, 1, 2]
[budget]
iterations = 10
batch_size = 2
resolution = 16
[[datasets]]
name = "d"
format = "phantom"
path = "data/p"
[[methods]]
kind = "supervised"
[[methods]]
kind = "atso"
[[methods]]
kind = "mean-teacher"
[report]
comparisons = [["atso", "mean-teacher"]]
"#;
    let declared = three_methods(&dir.path().join("b"), Some(experiment));
    assert_eq!(
        atso_reports::declared_comparisons(std::slice::from_ref(&declared)),
        [["atso".to_string(), "mean-teacher".to_string()]]
    );
    let out = dir.path().join("report-b");
    let files = atso_reports::render(&[declared], &out, &Default::default()).unwrap();
    let text = std::fs::read_to_string(&files.markdown).unwrap();
    assert_eq!(seed_level_rows(&text), ["25% labeled: atso − mean-teacher"], "{text}");
    assert!(text.contains("the family the experiment file declares"), "{text}");
    // Per-seed differences of 0.6 + 0.05 s against 0.55 + 0.05 s: +5.0 points each seed.
    assert!(text.contains("+5.0, +5.0, +5.0"), "{text}");
}

/// The qualitative figure's rule on a folder without previews: it picks supervised-only's cases
/// at the quartiles of the middle ratio's smallest common seed, and the report draws no figure
/// (and fails on nothing) when the runs kept no previews.
#[test]
fn the_qualitative_rule_picks_its_cases_and_needs_previews_to_draw() {
    let dir = tempfile::tempdir().unwrap();
    let results = three_methods(dir.path(), None);
    let tables = load::read(std::slice::from_ref(&results)).unwrap();
    let cells = cells::build(&tables.runs, false).unwrap();
    let per_case = report::per_case_dice(&tables);
    let choice = atso_reports::qualitative::choose(&cells, &per_case).unwrap();
    assert_eq!((choice.ratio, choice.seed, choice.reference.as_str()), (0.25, 0, "supervised"));
    // supervised, seed 0: c1 0.4, c2 0.6; ranked c1, c2: the 25th percentile is c1, the 50th c2,
    // the 75th c2 again (not repeated).
    let picked: Vec<(&str, u32)> = choice.cases.iter().map(|(c, _, q)| (c.as_str(), *q)).collect();
    assert_eq!(picked, [("c1", 25), ("c2", 50)]);
    assert!(atso_reports::qualitative::build("d", &cells, &per_case).unwrap().is_none());
    let out = dir.path().join("report");
    atso_reports::render(&[results], &out, &Default::default()).unwrap();
    assert!(!out.join("cases_d.png").exists());
}
