//! Results records: one JSON file per run (the durable source of truth, never overwritten) and
//! polars tables derived from all of them (`runs.parquet` + `runs.csv`, `cases.parquet` +
//! `cases.csv`, `stages.parquet` + `stages.csv` for methods with stages, and `curves.parquet` +
//! `curves.csv`: every run's training curve).
//!
//! Tables are rebuilt from the JSON records after each run, so a crash mid-sweep never loses rows
//! that were already recorded, and a rerun adds rows instead of replacing them. Records are
//! written whole or not at all (`fsio`); loading skips, with a warning naming it, any file it
//! cannot read (a truncated record from a full disk, a macOS `._x.json`), so one bad file never
//! stops later sweeps or reports. Non-finite numbers round-trip (`json_float`).

use crate::curves::CurvePoint;
use crate::fsio;
use crate::metric_registry as registry;
use crate::scores::{CaseScores, RunMetrics};
use anyhow::{Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
        }
    }
}

/// One fine-tuning stage of a staged method (ATSO, self-training): the lazy-learning measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: usize,
    /// Subset the stage trained on (`all` for synchronous self-training).
    pub trained_subset: String,
    /// Stage whose model produced the pseudo labels trained on (0 = the supervised model).
    pub labels_from_stage: usize,
    /// Stage whose model the student started from (0 = the supervised model).
    #[serde(default)]
    pub init_from_stage: usize,
    /// The labels were made by a model whose lineage had trained on this subset.
    #[serde(default)]
    pub labels_self_made: bool,
    /// The student started from a model whose lineage had trained on this subset.
    #[serde(default)]
    pub student_exposed: bool,
    /// Loss on the pseudo-labeled part of the stage's first training batch (train mode) against
    /// the labels trained on.
    #[serde(with = "crate::json_float::plain")]
    pub first_step_pseudo_loss: f64,
    /// The same images and forward pass, against the student's own predictions.
    #[serde(default = "nan", with = "crate::json_float::plain")]
    pub first_step_loss_self: f64,
    /// The same images and forward pass, against the latest labels made by a model that never
    /// trained on them.
    #[serde(default = "nan", with = "crate::json_float::plain")]
    pub first_step_loss_cross: f64,
    /// Fraction of the trained subset's foreground pixels (predicted foreground before or after)
    /// whose predicted class changed over the stage.
    #[serde(with = "crate::json_float::plain")]
    pub flip_rate: f64,
    /// The same over all pixels.
    #[serde(default = "nan", with = "crate::json_float::plain")]
    pub flip_rate_all_pixels: f64,
    /// Dice of the pseudo labels trained on against the hidden true labels.
    #[serde(with = "crate::json_float::option")]
    pub pseudo_label_dice: Option<f64>,
    /// Dice of the current pseudo labels of all unlabeled cases (the same case set for every
    /// staged method).
    #[serde(default, with = "crate::json_float::option")]
    pub pseudo_label_dice_all: Option<f64>,
    /// `pseudo_label_dice` per scored class, by class name (empty in records written before it
    /// existed): a class the labels lost shows as zero here, and as a third of its Dice off a
    /// three-class mean.
    #[serde(default, with = "crate::json_float::named_option_vec")]
    pub pseudo_label_class_dice: Vec<(String, Option<f64>)>,
    /// Validation Dice after the stage.
    #[serde(with = "crate::json_float::option")]
    pub validation_dice: Option<f64>,
    /// Validation Dice after the stage per scored class, by class name (empty in older records).
    #[serde(default, with = "crate::json_float::named_option_vec")]
    pub validation_class_dice: Vec<(String, Option<f64>)>,
    pub steps: usize,
    #[serde(default = "nan", with = "crate::json_float::plain")]
    pub lr_first: f64,
    #[serde(default = "nan", with = "crate::json_float::plain")]
    pub lr_last: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// What a ledger entry records. Written "label" / "train" in records, as before it was an enum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerEvent {
    /// A model relabeled a subset.
    #[default]
    Label,
    /// A stage trained on a subset.
    Train,
}

/// Which model produced which labels and what each stage trained on (the audit trail).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub stage: usize,
    /// What happened.
    pub event: LedgerEvent,
    pub subset: String,
    /// For "label": the stage whose model produced the labels. For "train": the stage whose
    /// labels were trained on.
    pub labels_from_stage: usize,
    /// For "train": the stage of the model the student started from.
    pub init_from_stage: Option<usize>,
    /// Case ids of the subset.
    #[serde(default)]
    pub cases: Vec<String>,
}

impl LedgerEntry {
    /// The model of stage `by` labeled `subset` (recorded at `stage`).
    pub fn label(stage: usize, subset: &str, by: usize, cases: Vec<String>) -> Self {
        Self {
            stage,
            event: LedgerEvent::Label,
            subset: subset.into(),
            labels_from_stage: by,
            init_from_stage: None,
            cases,
        }
    }

    /// Stage `stage` trained on `subset` with labels of stage `labels_from`, starting from the
    /// model of stage `init_from`.
    pub fn train(stage: usize, subset: &str, labels_from: usize, init_from: usize, cases: Vec<String>) -> Self {
        Self {
            stage,
            event: LedgerEvent::Train,
            subset: subset.into(),
            labels_from_stage: labels_from,
            init_from_stage: Some(init_from),
            cases,
        }
    }
}

/// Everything recorded about one run: one row of `runs.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub experiment: String,
    pub dataset: String,
    /// Display name of the method configuration (e.g. "atso-k3").
    pub method: String,
    /// The method implementation (e.g. "atso").
    pub method_kind: String,
    /// The nominal labeled ratio of the experiment file.
    pub labeled_ratio: f64,
    /// The fraction actually labeled: n_labeled / (n_labeled + n_unlabeled).
    #[serde(default, with = "crate::json_float::option")]
    pub labeled_fraction: Option<f64>,
    pub seed: u64,
    pub status: Status,
    pub error: Option<String>,
    /// Every registered metric (`metric_registry`): its mean under its column (`dice_mean`,
    /// `hd95_mean`, ...) and its values per scored class under its class key (`class_dice`, ...).
    #[serde(flatten)]
    pub metrics: RunMetrics,
    pub iterations: usize,
    pub iterations_used: usize,
    pub batch_size: usize,
    pub resolution: usize,
    pub n_labeled: usize,
    pub n_unlabeled: usize,
    #[serde(default)]
    pub n_validation: usize,
    pub n_test: usize,
    #[serde(with = "crate::json_float::plain")]
    pub wall_seconds: f64,
    /// The process's peak resident memory during the run, in MiB (`memory`; None where the
    /// system does not say, and in records written before it was measured).
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    pub backend: String,
    /// CPU threads the run's kernels used.
    #[serde(default)]
    pub threads: usize,
    /// CPU model, SIMD level and host (floating-point results depend on them: see docs/methods.md).
    #[serde(default)]
    pub cpu: String,
    #[serde(default)]
    pub simd: String,
    #[serde(default)]
    pub host: String,
    pub git_commit: String,
    pub git_dirty: Option<bool>,
    pub git_branch: Option<String>,
    /// Hash of everything that determines the run's result (see `runner::RunSpec`).
    pub config_hash: String,
    /// The same hash without the seed: runs of one configuration cell share it.
    #[serde(default)]
    pub cell_hash: String,
    /// The same hash without the seed and the labeled ratio: one configuration's row in tables.
    #[serde(default)]
    pub series_hash: String,
    /// Hash of the prepared dataset's fingerprint.
    #[serde(default)]
    pub data_fingerprint: String,
    /// The method's settings as used (JSON), including values derived from the budget.
    pub method_settings: String,
    /// Augmentation as used (JSON).
    #[serde(default)]
    pub augmentation: String,
    /// Learning-rate schedule scope ("per-phase" or "run").
    #[serde(default)]
    pub lr_schedule: String,
    /// Empty-class rule of the metrics ("monai" or "strict").
    #[serde(default)]
    pub empty_classes: String,
    /// Named per-run numbers from the method (e.g. mean teacher's consistency weight).
    #[serde(default, with = "crate::json_float::map")]
    pub diagnostics: BTreeMap<String, f64>,
    pub split_file: String,
    /// Folder of the saved native predictions, relative to the results folder.
    #[serde(default)]
    pub predictions_dir: Option<String>,
    pub version: String,
    pub started_at: String,
    pub finished_at: String,
    /// The step a checkpoint let this run resume from, when it was interrupted.
    #[serde(default)]
    pub resumed_from_step: Option<usize>,
    #[serde(default)]
    pub cases: Vec<CaseScores>,
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Index of the first scored class in `class_names`.
    #[serde(default = "one")]
    pub first_class: usize,
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    #[serde(default)]
    pub ledger: Vec<LedgerEntry>,
    /// The training curve (`train::curves`); empty in records written before curves existed.
    #[serde(default)]
    pub curve: Vec<CurvePoint>,
}

fn one() -> usize {
    1
}

/// Column-name suffixes a class name may not take: `dice_<class>` would collide with the runs
/// table's summaries, `pseudo_label_dice_<class>` with the stages table's `pseudo_label_dice_all`.
pub const RESERVED_CLASS_NAMES: [&str; 3] = ["mean", "at_resolution_mean", "all"];

/// Checks a name that becomes part of a path or a column name: letters, digits, '-', '_' and '.'
/// only, not starting with '.' (so never "." or ".." or a hidden file), at most 100 characters.
pub fn validate_name(key: &str, what: &str, name: &str) -> Result<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if name.is_empty() || name.len() > 100 || !ok_chars || name.starts_with('.') {
        anyhow::bail!(
            "{key}: the {what} '{name}' must be 1-100 characters of letters, digits, '-', '_' or '.', not starting with '.' (it names files and folders)"
        );
    }
    Ok(())
}

/// The records folder of an experiment's results directory.
pub fn records_dir(results: &Path) -> PathBuf {
    results.join("records")
}

/// The folder of a dataset's shared preview files (the harness writes them, the report's
/// qualitative figure reads them).
pub fn previews_of_dataset(results: &Path, dataset: &str) -> PathBuf {
    results.join("previews").join("data").join(dataset)
}

/// The folder of a run's predicted previews.
pub fn previews_of_run(results: &Path, run_id: &str) -> PathBuf {
    results.join("previews").join(run_id)
}

/// Writes `record` as `records/<run_id>.json`, whole or not at all; refuses to replace an
/// existing file.
pub fn save(results: &Path, record: &RunRecord) -> Result<PathBuf> {
    let path = records_dir(results).join(format!("{}.json", record.run_id));
    let text = serde_json::to_vec_pretty(record).with_context(|| format!("serialising {}", path.display()))?;
    fsio::write_new(&path, &text)?;
    Ok(path)
}

/// A file in `records/` that could not be read as a run record.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// The readable records of a results folder, and what was skipped.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub records: Vec<RunRecord>,
    pub skipped: Vec<Skipped>,
}

/// Reads every record of a results directory, sorted by start time then run id. Hidden files
/// and non-JSON files are ignored; files that do not parse, and anything that is not a regular
/// file (never opened: a FIFO would block), are skipped with a warning.
pub fn load(results: &Path) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    for path in record_paths(results)? {
        if !fsio::is_regular_file(&path) {
            let reason = "not a regular file (a FIFO, device or socket); not opened".to_string();
            tracing::warn!(file = %path.display(), %reason, "skipping a run record");
            loaded.skipped.push(Skipped { path, reason });
            continue;
        }
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<RunRecord>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(record) => loaded.records.push(record),
            Err(reason) => {
                tracing::warn!(file = %path.display(), %reason, "skipping an unreadable run record");
                loaded.skipped.push(Skipped { path, reason });
            }
        }
    }
    loaded
        .records
        .sort_by(|a, b| (&a.started_at, &a.run_id).cmp(&(&b.started_at, &b.run_id)));
    Ok(loaded)
}

/// The entries of `records/` named as records are (`*.json`, not hidden), whether or not they
/// are regular files (callers check before opening); none when the folder does not exist.
pub fn record_paths(results: &Path) -> Result<Vec<PathBuf>> {
    let dir = records_dir(results);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if !fsio::is_hidden(&path) && path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    Ok(paths)
}

/// The readable records of a results directory (see [`load`]).
pub fn load_all(results: &Path) -> Result<Vec<RunRecord>> {
    Ok(load(results)?.records)
}

/// Named values of a record (per-class Dice, diagnostics...).
type Named = Vec<(String, Option<f64>)>;

/// Named optional columns in first-appearance order: `<prefix><name>` for each name any row has
/// (null where a row lacks it).
fn named_columns<Row>(rows: &[Row], prefix: &str, pick: &dyn Fn(&Row) -> Named) -> Vec<Column> {
    let per_record: Vec<Named> = rows.iter().map(pick).collect();
    let mut names: Vec<&str> = Vec::new();
    for name in per_record.iter().flat_map(|r| r.iter().map(|(n, _)| n.as_str())) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
        .iter()
        .map(|name| {
            let values: Vec<Option<f64>> = per_record
                .iter()
                .map(|r| r.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v))
                .collect();
            Column::new(format!("{prefix}{name}").into(), values)
        })
        .collect()
}

/// The runs table: one row per record, every registered metric's mean under its column and, for
/// the metrics kept per class, `<prefix><class>` columns (`dice_liver`; null where a dataset
/// lacks the class), method diagnostics as `diag_<name>`.
pub fn runs_frame(records: &[RunRecord]) -> Result<DataFrame> {
    let text = |f: &dyn Fn(&RunRecord) -> String| records.iter().map(f).collect::<Vec<_>>();
    let opt_f = |f: &dyn Fn(&RunRecord) -> Option<f64>| records.iter().map(f).collect::<Vec<_>>();
    let int = |f: &dyn Fn(&RunRecord) -> u64| records.iter().map(f).collect::<Vec<_>>();
    let mut columns = vec![
        Column::new("run_id".into(), text(&|r| r.run_id.clone())),
        Column::new("experiment".into(), text(&|r| r.experiment.clone())),
        Column::new("dataset".into(), text(&|r| r.dataset.clone())),
        Column::new("method".into(), text(&|r| r.method.clone())),
        Column::new("method_kind".into(), text(&|r| r.method_kind.clone())),
        Column::new("labeled_ratio".into(), records.iter().map(|r| r.labeled_ratio).collect::<Vec<_>>()),
        Column::new("labeled_fraction".into(), opt_f(&|r| r.labeled_fraction)),
        Column::new("seed".into(), int(&|r| r.seed)),
        Column::new("status".into(), text(&|r| r.status.as_str().to_string())),
        Column::new("error".into(), records.iter().map(|r| r.error.clone()).collect::<Vec<_>>()),
    ];
    for metric in &registry::ALL {
        columns.push(Column::new(metric.column.into(), opt_f(&|r| r.metrics.mean(metric))));
    }
    for metric in &registry::ALL {
        if let Some(prefix) = metric.per_class_prefix {
            columns.extend(named_columns(records, prefix, &|r| r.metrics.classes(metric).to_vec()));
        }
    }
    columns.extend(named_columns(records, "diag_", &|r| {
        r.diagnostics.iter().map(|(k, v)| (k.clone(), Some(*v))).collect()
    }));
    columns.extend([
        Column::new("iterations".into(), int(&|r| r.iterations as u64)),
        Column::new("iterations_used".into(), int(&|r| r.iterations_used as u64)),
        Column::new("batch_size".into(), int(&|r| r.batch_size as u64)),
        Column::new("resolution".into(), int(&|r| r.resolution as u64)),
        Column::new("n_labeled".into(), int(&|r| r.n_labeled as u64)),
        Column::new("n_unlabeled".into(), int(&|r| r.n_unlabeled as u64)),
        Column::new("n_validation".into(), int(&|r| r.n_validation as u64)),
        Column::new("n_test".into(), int(&|r| r.n_test as u64)),
        Column::new("first_class".into(), int(&|r| r.first_class as u64)),
        Column::new("wall_seconds".into(), records.iter().map(|r| r.wall_seconds).collect::<Vec<_>>()),
        Column::new("peak_rss_mib".into(), records.iter().map(|r| r.peak_rss_mib).collect::<Vec<_>>()),
        Column::new("backend".into(), text(&|r| r.backend.clone())),
        Column::new("threads".into(), int(&|r| r.threads as u64)),
        Column::new("cpu".into(), text(&|r| r.cpu.clone())),
        Column::new("simd".into(), text(&|r| r.simd.clone())),
        Column::new("host".into(), text(&|r| r.host.clone())),
        Column::new("git_commit".into(), text(&|r| r.git_commit.clone())),
        Column::new("git_dirty".into(), records.iter().map(|r| r.git_dirty).collect::<Vec<_>>()),
        Column::new(
            "git_branch".into(),
            records.iter().map(|r| r.git_branch.clone()).collect::<Vec<_>>(),
        ),
        Column::new("config_hash".into(), text(&|r| r.config_hash.clone())),
        Column::new("cell_hash".into(), text(&|r| r.cell_hash.clone())),
        Column::new("series_hash".into(), text(&|r| r.series_hash.clone())),
        Column::new("data_fingerprint".into(), text(&|r| r.data_fingerprint.clone())),
        Column::new("method_settings".into(), text(&|r| r.method_settings.clone())),
        Column::new("augmentation".into(), text(&|r| r.augmentation.clone())),
        Column::new("lr_schedule".into(), text(&|r| r.lr_schedule.clone())),
        Column::new("empty_classes".into(), text(&|r| r.empty_classes.clone())),
        Column::new("split_file".into(), text(&|r| r.split_file.clone())),
        Column::new(
            "predictions_dir".into(),
            records.iter().map(|r| r.predictions_dir.clone()).collect::<Vec<_>>(),
        ),
        Column::new("version".into(), text(&|r| r.version.clone())),
        Column::new("started_at".into(), text(&|r| r.started_at.clone())),
        Column::new("finished_at".into(), text(&|r| r.finished_at.clone())),
    ]);
    Ok(DataFrame::new(records.len(), columns)?)
}

/// The per-case table: one row per (run, test case, scored class): every metric with per-case
/// values (`metric_registry`: Dice, IoU, HD95, ASD on the native grid, Dice at the training
/// resolution), and whether the prediction missed a class the
/// truth has (null in records written before that was kept).
pub fn cases_frame(records: &[RunRecord]) -> Result<DataFrame> {
    let per_case: Vec<&registry::Metric> = registry::ALL.iter().filter(|m| m.per_case()).collect();
    let mut run = Vec::new();
    let mut case = Vec::new();
    let mut class = Vec::new();
    let mut values: Vec<Vec<Option<f64>>> = vec![Vec::new(); per_case.len()];
    let mut missed = Vec::new();
    for record in records {
        for scores in &record.cases {
            for (i, name) in record.class_names.iter().skip(record.first_class).enumerate() {
                run.push(record.run_id.clone());
                case.push(scores.case_id.clone());
                class.push(name.clone());
                for (metric, column) in per_case.iter().zip(&mut values) {
                    column.push(scores.of(metric).get(i).copied().flatten());
                }
                missed.push(scores.missed.get(i).copied());
            }
        }
    }
    let height = run.len();
    let mut columns = vec![
        Column::new("run_id".into(), run),
        Column::new("case_id".into(), case),
        Column::new("class".into(), class),
    ];
    columns.extend(per_case.iter().zip(values).map(|(metric, v)| Column::new(metric.name.into(), v)));
    columns.push(Column::new("missed".into(), missed));
    Ok(DataFrame::new(height, columns)?)
}

/// The columns that say which run a row of a per-run table (stages, curves) belongs to.
fn identity_columns<Row>(rows: &[Row], record: &dyn Fn(&Row) -> &RunRecord) -> Vec<Column> {
    let text = |f: &dyn Fn(&RunRecord) -> String| rows.iter().map(|row| f(record(row))).collect::<Vec<_>>();
    vec![
        Column::new("run_id".into(), text(&|r| r.run_id.clone())),
        Column::new("dataset".into(), text(&|r| r.dataset.clone())),
        Column::new("method".into(), text(&|r| r.method.clone())),
        Column::new("cell_hash".into(), text(&|r| r.cell_hash.clone())),
        Column::new("git_commit".into(), text(&|r| r.git_commit.clone())),
        Column::new("status".into(), text(&|r| r.status.as_str().to_string())),
        Column::new(
            "labeled_ratio".into(),
            rows.iter().map(|row| record(row).labeled_ratio).collect::<Vec<_>>(),
        ),
        Column::new("seed".into(), rows.iter().map(|row| record(row).seed).collect::<Vec<_>>()),
    ]
}

/// The stages table of staged methods.
pub fn stages_frame(records: &[RunRecord]) -> Result<DataFrame> {
    let rows: Vec<(&RunRecord, &StageRecord)> = records.iter().flat_map(|r| r.stages.iter().map(move |s| (r, s))).collect();
    let col_f = |f: &dyn Fn(&StageRecord) -> f64| rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
    let col_o = |f: &dyn Fn(&StageRecord) -> Option<f64>| rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
    let col_u = |f: &dyn Fn(&StageRecord) -> usize| rows.iter().map(|(_, s)| f(s) as u64).collect::<Vec<_>>();
    let col_b = |f: &dyn Fn(&StageRecord) -> bool| rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
    Ok(DataFrame::new(
        rows.len(),
        identity_columns(&rows, &|(r, _)| r)
            .into_iter()
            .chain([
                Column::new("stage".into(), col_u(&|s| s.stage)),
                Column::new(
                    "trained_subset".into(),
                    rows.iter().map(|(_, s)| s.trained_subset.clone()).collect::<Vec<_>>(),
                ),
                Column::new("labels_from_stage".into(), col_u(&|s| s.labels_from_stage)),
                Column::new("init_from_stage".into(), col_u(&|s| s.init_from_stage)),
                Column::new("labels_self_made".into(), col_b(&|s| s.labels_self_made)),
                Column::new("student_exposed".into(), col_b(&|s| s.student_exposed)),
                Column::new("first_step_pseudo_loss".into(), col_f(&|s| s.first_step_pseudo_loss)),
                Column::new("first_step_loss_self".into(), col_f(&|s| s.first_step_loss_self)),
                Column::new("first_step_loss_cross".into(), col_f(&|s| s.first_step_loss_cross)),
                Column::new("flip_rate".into(), col_f(&|s| s.flip_rate)),
                Column::new("flip_rate_all_pixels".into(), col_f(&|s| s.flip_rate_all_pixels)),
                Column::new("pseudo_label_dice".into(), col_o(&|s| s.pseudo_label_dice)),
                Column::new("pseudo_label_dice_all".into(), col_o(&|s| s.pseudo_label_dice_all)),
                Column::new("validation_dice".into(), col_o(&|s| s.validation_dice)),
                Column::new("steps".into(), col_u(&|s| s.steps)),
                Column::new("lr_first".into(), col_f(&|s| s.lr_first)),
                Column::new("lr_last".into(), col_f(&|s| s.lr_last)),
            ])
            .chain(named_columns(&rows, "pseudo_label_dice_", &|(_, s)| {
                s.pseudo_label_class_dice.clone()
            }))
            .chain(named_columns(&rows, "validation_dice_", &|(_, s)| s.validation_class_dice.clone()))
            .collect(),
    )?)
}

/// The curves table: one row per (run, curve point), with the run's identity, the step, its
/// phase, learning rate, loss, a `part_<name>` column per loss part any run reported (null where
/// a run has no such part) and validation Dice where measured.
pub fn curves_frame(records: &[RunRecord]) -> Result<DataFrame> {
    let rows: Vec<(&RunRecord, &CurvePoint)> = records.iter().flat_map(|r| r.curve.iter().map(move |p| (r, p))).collect();
    let col_f = |f: &dyn Fn(&CurvePoint) -> f64| rows.iter().map(|(_, p)| f(p)).collect::<Vec<_>>();
    let col_u = |f: &dyn Fn(&CurvePoint) -> usize| rows.iter().map(|(_, p)| f(p) as u64).collect::<Vec<_>>();
    Ok(DataFrame::new(
        rows.len(),
        identity_columns(&rows, &|(r, _)| r)
            .into_iter()
            .chain([
                Column::new("step".into(), col_u(&|p| p.step)),
                Column::new("phase".into(), col_u(&|p| p.phase)),
                Column::new(
                    "phase_name".into(),
                    rows.iter().map(|(_, p)| p.phase_name.clone()).collect::<Vec<_>>(),
                ),
                Column::new("lr".into(), col_f(&|p| p.lr)),
                Column::new("loss".into(), col_f(&|p| p.loss)),
                Column::new(
                    "validation_dice".into(),
                    rows.iter().map(|(_, p)| p.validation_dice).collect::<Vec<_>>(),
                ),
            ])
            .chain(named_columns(&rows, "part_", &|(_, p)| {
                p.parts.iter().map(|(n, v)| (n.clone(), Some(*v))).collect()
            }))
            .collect(),
    )?)
}

/// Writes `frame` as `<stem>.parquet` and `<stem>.csv` in `dir`, each whole or not at all.
pub fn write_frame(dir: &Path, stem: &str, frame: &mut DataFrame) -> Result<()> {
    let parquet = dir.join(format!("{stem}.parquet"));
    fsio::write_atomic_with(&parquet, fsio::Replace::Yes, |file| {
        ParquetWriter::new(file).finish(frame)?;
        Ok(())
    })?;
    let csv = dir.join(format!("{stem}.csv"));
    fsio::write_atomic_with(&csv, fsio::Replace::Yes, |file| {
        CsvWriter::new(file).finish(frame)?;
        Ok(())
    })
}

/// The tables every rebuild writes (stages and curves only when some run has them).
const ALWAYS_WRITTEN: [&str; 4] = ["runs.parquet", "runs.csv", "cases.parquet", "cases.csv"];

/// Whether the tables of a results directory are missing or older than its newest record: a
/// rebuild failed (a full disk), or records were copied in by hand.
pub fn tables_lag_records(results: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let newest_record = record_paths(results)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| fsio::is_regular_file(p))
        .filter_map(|p| modified(&p))
        .max();
    let Some(newest_record) = newest_record else {
        return false;
    };
    ALWAYS_WRITTEN
        .iter()
        .any(|table| modified(&results.join(table)).is_none_or(|t| t < newest_record))
}

/// Rebuilds every table of a results directory from its records; returns what was loaded.
pub fn rebuild_tables(results: &Path) -> Result<Loaded> {
    let loaded = load(results)?;
    let records = &loaded.records;
    write_frame(results, "runs", &mut runs_frame(records)?)?;
    write_frame(results, "cases", &mut cases_frame(records)?)?;
    if records.iter().any(|r| !r.stages.is_empty()) {
        write_frame(results, "stages", &mut stages_frame(records)?)?;
    }
    if records.iter().any(|r| !r.curve.is_empty()) {
        write_frame(results, "curves", &mut curves_frame(records)?)?;
    }
    Ok(loaded)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn tables_lag_until_rebuilt_after_the_newest_record() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!tables_lag_records(dir.path()), "no records, nothing to rebuild");
        save(dir.path(), &record("r1")).unwrap();
        assert!(tables_lag_records(dir.path()));
        rebuild_tables(dir.path()).unwrap();
        assert!(!tables_lag_records(dir.path()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        save(dir.path(), &record("r2")).unwrap();
        assert!(tables_lag_records(dir.path()));
    }

    /// A minimal ok record for table and loading tests.
    pub(crate) fn record(run_id: &str) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            experiment: "e".into(),
            dataset: "d".into(),
            method: "m".into(),
            method_kind: "supervised".into(),
            labeled_ratio: 0.5,
            labeled_fraction: Some(0.5),
            seed: 0,
            status: Status::Ok,
            error: None,
            metrics: {
                let mut metrics = RunMetrics::default();
                metrics.set_mean(&registry::DICE, Some(0.5));
                metrics.set_mean(&registry::IOU, Some(0.4));
                metrics.set_mean(&registry::MIOU, Some(0.4));
                metrics.set_mean(&registry::DICE_AT_RESOLUTION, Some(0.5));
                metrics.set_mean(&registry::VALIDATION_DICE, Some(0.5));
                metrics.set_classes(&registry::DICE, vec![("liver".into(), Some(0.5))]);
                metrics.set_classes(&registry::HD95, vec![("liver".into(), None)]);
                metrics
            },
            iterations: 2,
            iterations_used: 2,
            batch_size: 2,
            resolution: 16,
            n_labeled: 1,
            n_unlabeled: 1,
            n_validation: 1,
            n_test: 1,
            wall_seconds: 1.0,
            peak_rss_mib: Some(100.0),
            backend: "flex".into(),
            threads: 1,
            cpu: "cpu".into(),
            simd: "avx2".into(),
            host: "h".into(),
            git_commit: "c".into(),
            git_dirty: Some(false),
            git_branch: None,
            config_hash: "h".into(),
            cell_hash: "cell".into(),
            series_hash: "series".into(),
            data_fingerprint: "f".into(),
            method_settings: "{}".into(),
            augmentation: "{}".into(),
            lr_schedule: "per-phase".into(),
            empty_classes: "monai".into(),
            diagnostics: BTreeMap::new(),
            split_file: String::new(),
            predictions_dir: None,
            version: "0".into(),
            started_at: format!("2026-01-01T00:00:0{}Z", run_id.len() % 10),
            finished_at: String::new(),
            resumed_from_step: None,
            cases: vec![],
            class_names: vec!["background".into(), "liver".into()],
            first_class: 1,
            stages: vec![],
            ledger: vec![],
            curve: vec![],
        }
    }

    #[test]
    fn unreadable_files_are_skipped_and_named_and_nan_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut nan = record("with-nan");
        nan.wall_seconds = f64::NAN;
        nan.diagnostics.insert("consistency_loss_mean".into(), f64::INFINITY);
        save(dir.path(), &record("good")).unwrap();
        save(dir.path(), &nan).unwrap();
        let records = records_dir(dir.path());
        let whole = std::fs::read_to_string(records.join("good.json")).unwrap();
        std::fs::write(records.join("truncated.json"), &whole[..whole.len() / 2]).unwrap();
        std::fs::write(records.join("._good.json"), b"\x00\x05\x16\x07 mac resource fork").unwrap();
        std::fs::write(records.join("notes.txt"), "not a record").unwrap();
        let loaded = load(dir.path()).unwrap();
        let ids: Vec<&str> = loaded.records.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&"good") && ids.contains(&"with-nan"));
        assert_eq!(loaded.skipped.len(), 1);
        assert!(loaded.skipped[0].path.ends_with("truncated.json"));
        let back = loaded.records.iter().find(|r| r.run_id == "with-nan").unwrap();
        assert!(back.wall_seconds.is_nan());
        assert_eq!(back.diagnostics["consistency_loss_mean"], f64::INFINITY);
        // Tables still build, with the diagnostic as a column.
        let rebuilt = rebuild_tables(dir.path()).unwrap();
        assert_eq!(rebuilt.records.len(), 2);
        let frame = runs_frame(&rebuilt.records).unwrap();
        assert!(frame.column("diag_consistency_loss_mean").is_ok());
    }

    #[test]
    fn stage_records_without_per_class_dice_still_load_and_leave_their_columns_null() {
        // A stage as records stored it before per-class Dice was recorded.
        let old_stage = serde_json::json!({
            "stage": 1, "trained_subset": "U1", "labels_from_stage": 0,
            "first_step_pseudo_loss": 0.3, "flip_rate": 0.1,
            "pseudo_label_dice": 0.5, "validation_dice": 0.6, "steps": 4
        });
        let old: StageRecord = serde_json::from_value(old_stage).unwrap();
        assert!(old.pseudo_label_class_dice.is_empty() && old.validation_class_dice.is_empty());
        let mut new = old.clone();
        new.stage = 2;
        new.pseudo_label_class_dice = vec![("liver".into(), Some(0.75)), ("lesion".into(), None)];
        new.validation_class_dice = vec![("liver".into(), Some(0.5)), ("lesion".into(), Some(0.0))];
        let mut run = record("staged");
        run.stages = vec![old, new.clone()];
        // Values and a class without one survive the JSON round trip.
        let back: StageRecord = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back.pseudo_label_class_dice, new.pseudo_label_class_dice);
        assert_eq!(back.validation_class_dice, new.validation_class_dice);
        let frame = stages_frame(&[run]).unwrap();
        let column = |name: &str| -> Vec<Option<f64>> { frame.column(name).unwrap().f64().unwrap().iter().collect() };
        assert_eq!(column("pseudo_label_dice_liver"), [None, Some(0.75)]);
        assert_eq!(column("pseudo_label_dice_lesion"), [None, None]);
        assert_eq!(column("validation_dice_lesion"), [None, Some(0.0)]);
        // The fixed columns keep their names.
        assert_eq!(column("pseudo_label_dice"), [Some(0.5), Some(0.5)]);
    }

    #[test]
    fn a_record_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &record("same")).unwrap();
        let mut other = record("same");
        other.seed = 9;
        assert!(save(dir.path(), &other).is_err());
        assert_eq!(load_all(dir.path()).unwrap()[0].seed, 0);
    }
}
