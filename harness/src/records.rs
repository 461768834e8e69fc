//! Results records: one JSON file per run (the durable source of truth, never overwritten) and
//! polars tables derived from all of them (`runs.parquet` + `runs.csv`, `cases.parquet` +
//! `cases.csv`, and `stages.parquet` + `stages.csv` for methods with stages).
//!
//! Tables are rebuilt from the JSON records after each run, so a crash mid-sweep never loses rows
//! that were already recorded, and a rerun adds rows instead of replacing them.

use crate::train::metrics::CaseScores;
use anyhow::{Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
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
    /// Loss on the pseudo-labeled data at the stage's first step.
    pub first_step_pseudo_loss: f64,
    /// Fraction of pixels of the trained subset whose predicted class changed over the stage.
    pub flip_rate: f64,
    /// Dice of the pseudo labels trained on against the hidden true labels.
    pub pseudo_label_dice: Option<f64>,
    /// Validation Dice after the stage.
    pub validation_dice: Option<f64>,
    pub steps: usize,
}

/// Which model produced which labels and what each stage trained on (the audit trail).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub stage: usize,
    /// What happened: "label" (a model relabeled a subset) or "train" (a stage trained on one).
    pub event: String,
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
    pub labeled_ratio: f64,
    pub seed: u64,
    pub status: Status,
    pub error: Option<String>,
    /// Test-set mean foreground Dice (per case, then per class).
    pub dice_mean: Option<f64>,
    pub iou_mean: Option<f64>,
    pub val_dice_mean: Option<f64>,
    /// Test-set Dice per foreground class, by class name.
    pub class_dice: Vec<(String, Option<f64>)>,
    pub iterations: usize,
    pub iterations_used: usize,
    pub batch_size: usize,
    pub resolution: usize,
    pub n_labeled: usize,
    pub n_unlabeled: usize,
    pub n_test: usize,
    pub wall_seconds: f64,
    pub backend: String,
    pub git_commit: String,
    pub git_dirty: Option<bool>,
    pub git_branch: Option<String>,
    pub config_hash: String,
    /// The method's settings as used (JSON), including values derived from the budget.
    pub method_settings: String,
    pub split_file: String,
    pub version: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(default)]
    pub cases: Vec<CaseScores>,
    #[serde(default)]
    pub class_names: Vec<String>,
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    #[serde(default)]
    pub ledger: Vec<LedgerEntry>,
}

/// The records folder of an experiment's results directory.
pub fn records_dir(results: &Path) -> PathBuf {
    results.join("records")
}

/// Writes `record` as `records/<run_id>.json`; refuses to replace an existing file.
pub fn save(results: &Path, record: &RunRecord) -> Result<PathBuf> {
    let dir = records_dir(results);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.json", record.run_id));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("{}: a record with this run id already exists", path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), record)?;
    Ok(path)
}

/// Reads every record of a results directory, sorted by start time then run id.
pub fn load_all(results: &Path) -> Result<Vec<RunRecord>> {
    let dir = records_dir(results);
    let mut records = Vec::new();
    if !dir.exists() {
        return Ok(records);
    }
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            records.push(serde_json::from_str::<RunRecord>(&text).with_context(|| format!("{}: not a run record", path.display()))?);
        }
    }
    records.sort_by(|a, b| (&a.started_at, &a.run_id).cmp(&(&b.started_at, &b.run_id)));
    Ok(records)
}

/// The runs table: one row per record, per-class Dice as `dice_<class>` columns (null where a
/// dataset lacks the class).
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
        Column::new("seed".into(), int(&|r| r.seed)),
        Column::new("status".into(), text(&|r| r.status.as_str().to_string())),
        Column::new("error".into(), records.iter().map(|r| r.error.clone()).collect::<Vec<_>>()),
        Column::new("dice_mean".into(), opt_f(&|r| r.dice_mean)),
        Column::new("iou_mean".into(), opt_f(&|r| r.iou_mean)),
        Column::new("val_dice_mean".into(), opt_f(&|r| r.val_dice_mean)),
    ];
    // Class order as the datasets define it (first appearance), not alphabetical.
    let mut class_names: Vec<&str> = Vec::new();
    for name in records.iter().flat_map(|r| r.class_dice.iter().map(|(n, _)| n.as_str())) {
        if !class_names.contains(&name) {
            class_names.push(name);
        }
    }
    for class in class_names {
        let values: Vec<Option<f64>> = records
            .iter()
            .map(|r| r.class_dice.iter().find(|(n, _)| n == class).and_then(|(_, v)| *v))
            .collect();
        columns.push(Column::new(format!("dice_{class}").into(), values));
    }
    columns.extend([
        Column::new("iterations".into(), int(&|r| r.iterations as u64)),
        Column::new("iterations_used".into(), int(&|r| r.iterations_used as u64)),
        Column::new("batch_size".into(), int(&|r| r.batch_size as u64)),
        Column::new("resolution".into(), int(&|r| r.resolution as u64)),
        Column::new("n_labeled".into(), int(&|r| r.n_labeled as u64)),
        Column::new("n_unlabeled".into(), int(&|r| r.n_unlabeled as u64)),
        Column::new("n_test".into(), int(&|r| r.n_test as u64)),
        Column::new("wall_seconds".into(), records.iter().map(|r| r.wall_seconds).collect::<Vec<_>>()),
        Column::new("backend".into(), text(&|r| r.backend.clone())),
        Column::new("git_commit".into(), text(&|r| r.git_commit.clone())),
        Column::new("git_dirty".into(), records.iter().map(|r| r.git_dirty).collect::<Vec<_>>()),
        Column::new(
            "git_branch".into(),
            records.iter().map(|r| r.git_branch.clone()).collect::<Vec<_>>(),
        ),
        Column::new("config_hash".into(), text(&|r| r.config_hash.clone())),
        Column::new("method_settings".into(), text(&|r| r.method_settings.clone())),
        Column::new("split_file".into(), text(&|r| r.split_file.clone())),
        Column::new("version".into(), text(&|r| r.version.clone())),
        Column::new("started_at".into(), text(&|r| r.started_at.clone())),
        Column::new("finished_at".into(), text(&|r| r.finished_at.clone())),
    ]);
    Ok(DataFrame::new(records.len(), columns)?)
}

/// The per-case table: run_id, case_id, class, dice, iou (test cases).
pub fn cases_frame(records: &[RunRecord]) -> Result<DataFrame> {
    let (mut run, mut case, mut class, mut dice, mut iou) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for record in records {
        for scores in &record.cases {
            for (c, name) in record.class_names.iter().enumerate().skip(1) {
                run.push(record.run_id.clone());
                case.push(scores.case_id.clone());
                class.push(name.clone());
                dice.push(scores.dice.get(c - 1).copied().flatten());
                iou.push(scores.iou.get(c - 1).copied().flatten());
            }
        }
    }
    let height = run.len();
    Ok(DataFrame::new(
        height,
        vec![
            Column::new("run_id".into(), run),
            Column::new("case_id".into(), case),
            Column::new("class".into(), class),
            Column::new("dice".into(), dice),
            Column::new("iou".into(), iou),
        ],
    )?)
}

/// The stages table of staged methods.
pub fn stages_frame(records: &[RunRecord]) -> Result<DataFrame> {
    let rows: Vec<(&RunRecord, &StageRecord)> = records.iter().flat_map(|r| r.stages.iter().map(move |s| (r, s))).collect();
    let col_f = |f: &dyn Fn(&StageRecord) -> f64| rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
    let col_o = |f: &dyn Fn(&StageRecord) -> Option<f64>| rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
    Ok(DataFrame::new(
        rows.len(),
        vec![
            Column::new("run_id".into(), rows.iter().map(|(r, _)| r.run_id.clone()).collect::<Vec<_>>()),
            Column::new("dataset".into(), rows.iter().map(|(r, _)| r.dataset.clone()).collect::<Vec<_>>()),
            Column::new("method".into(), rows.iter().map(|(r, _)| r.method.clone()).collect::<Vec<_>>()),
            Column::new(
                "labeled_ratio".into(),
                rows.iter().map(|(r, _)| r.labeled_ratio).collect::<Vec<_>>(),
            ),
            Column::new("seed".into(), rows.iter().map(|(r, _)| r.seed).collect::<Vec<_>>()),
            Column::new("stage".into(), rows.iter().map(|(_, s)| s.stage as u64).collect::<Vec<_>>()),
            Column::new(
                "trained_subset".into(),
                rows.iter().map(|(_, s)| s.trained_subset.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "labels_from_stage".into(),
                rows.iter().map(|(_, s)| s.labels_from_stage as u64).collect::<Vec<_>>(),
            ),
            Column::new("first_step_pseudo_loss".into(), col_f(&|s| s.first_step_pseudo_loss)),
            Column::new("flip_rate".into(), col_f(&|s| s.flip_rate)),
            Column::new("pseudo_label_dice".into(), col_o(&|s| s.pseudo_label_dice)),
            Column::new("validation_dice".into(), col_o(&|s| s.validation_dice)),
            Column::new("steps".into(), rows.iter().map(|(_, s)| s.steps as u64).collect::<Vec<_>>()),
        ],
    )?)
}

/// Writes `frame` as `<stem>.parquet` and `<stem>.csv` in `dir`, each through a temporary file
/// renamed into place so a reader never sees half a table.
pub fn write_frame(dir: &Path, stem: &str, frame: &mut DataFrame) -> Result<()> {
    let parquet = dir.join(format!("{stem}.parquet"));
    let tmp = dir.join(format!(".{stem}.parquet.tmp"));
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    ParquetWriter::new(file)
        .finish(frame)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", parquet.display()))?;
    std::fs::rename(&tmp, &parquet)?;
    let csv = dir.join(format!("{stem}.csv"));
    let tmp = dir.join(format!(".{stem}.csv.tmp"));
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    CsvWriter::new(&mut file)
        .finish(frame)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", csv.display()))?;
    std::fs::rename(&tmp, &csv)?;
    Ok(())
}

/// Rebuilds every table of a results directory from its records.
pub fn rebuild_tables(results: &Path) -> Result<usize> {
    let records = load_all(results)?;
    write_frame(results, "runs", &mut runs_frame(&records)?)?;
    write_frame(results, "cases", &mut cases_frame(&records)?)?;
    if records.iter().any(|r| !r.stages.is_empty()) {
        write_frame(results, "stages", &mut stages_frame(&records)?)?;
    }
    Ok(records.len())
}
