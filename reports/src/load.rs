//! Reads the tables of one or more results folders (`runs.parquet`, `cases.parquet`,
//! `stages.parquet`, `curves.parquet`) into plain rows. Several folders are concatenated; the aggregation rules
//! (`cells`) then decide what may be averaged. Columns added by later versions are optional, so
//! tables written by an older harness still load.

use anyhow::{Context, Result};
use atso_schema::metric_registry as registry;
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// One run (a row of runs.parquet) with what reports use.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Run {
    pub run_id: String,
    pub folder: PathBuf,
    pub experiment: String,
    pub dataset: String,
    pub method: String,
    pub method_kind: String,
    pub labeled_ratio: f64,
    pub labeled_fraction: Option<f64>,
    pub seed: u64,
    pub ok: bool,
    pub error: Option<String>,
    /// Named metrics: every registered metric's column (`metric_registry`: dice_mean, hd95_mean, ...),
    /// its per-class columns (dice_<class>, hd95_<class>) and diag_<name>.
    pub metrics: Vec<(String, Option<f64>)>,
    pub n_labeled: u64,
    pub n_unlabeled: u64,
    pub n_test: u64,
    pub backend: String,
    pub threads: u64,
    pub cpu: String,
    /// SIMD levels of the CPU kernels (see provenance).
    pub simd: String,
    pub git_commit: String,
    pub git_dirty: Option<bool>,
    pub cell_hash: String,
    /// One configuration's row over labeled ratios (empty in tables written before it existed).
    pub series_hash: String,
    pub config_hash: String,
    pub started_at: String,
    pub finished_at: String,
}

impl Run {
    /// A metric by column name.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v)
    }
}

/// One test case's scores in one run (rows of cases.parquet, one per class).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRow {
    pub run_id: String,
    pub case_id: String,
    pub class: String,
    pub dice: Option<f64>,
    pub hd95: Option<f64>,
}

/// One stage of a staged run (a row of stages.parquet).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageRow {
    pub run_id: String,
    pub stage: u64,
    pub labels_self_made: bool,
    pub first_step_loss: Option<f64>,
    pub first_step_loss_self: Option<f64>,
    pub first_step_loss_cross: Option<f64>,
    pub flip_rate: Option<f64>,
    pub pseudo_label_dice: Option<f64>,
    pub pseudo_label_dice_all: Option<f64>,
    pub validation_dice: Option<f64>,
}

/// One point of a run's training curve (a row of curves.parquet).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CurveRow {
    pub run_id: String,
    pub step: u64,
    pub phase: u64,
    pub phase_name: String,
    pub lr: Option<f64>,
    pub loss: Option<f64>,
    pub validation_dice: Option<f64>,
}

/// Everything read from the folders.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub runs: Vec<Run>,
    pub cases: Vec<CaseRow>,
    pub stages: Vec<StageRow>,
    pub curves: Vec<CurveRow>,
}

/// Reads and concatenates the tables of `folders`.
pub fn read(folders: &[PathBuf]) -> Result<Tables> {
    let mut tables = Tables::default();
    for folder in folders {
        let runs = crate::read_table(&folder.join("runs.parquet"))?;
        tables
            .runs
            .extend(runs_rows(&runs, folder).with_context(|| format!("{}: unexpected columns", folder.join("runs.parquet").display()))?);
        let cases = folder.join("cases.parquet");
        if cases.exists() {
            let frame = crate::read_table(&cases)?;
            tables
                .cases
                .extend(case_rows(&frame).with_context(|| format!("{}: unexpected columns", cases.display()))?);
        }
        let stages = folder.join("stages.parquet");
        if stages.exists() {
            let frame = crate::read_table(&stages)?;
            tables
                .stages
                .extend(stage_rows(&frame).with_context(|| format!("{}: unexpected columns", stages.display()))?);
        }
        let curves = folder.join("curves.parquet");
        if curves.exists() {
            let frame = crate::read_table(&curves)?;
            tables
                .curves
                .extend(curve_rows(&frame).with_context(|| format!("{}: unexpected columns", curves.display()))?);
        }
    }
    Ok(tables)
}

/// Column accessors that tolerate missing optional columns.
struct Columns<'a>(&'a DataFrame);

impl Columns<'_> {
    fn text(&self, name: &str) -> Result<Vec<Option<String>>> {
        Ok(self.0.column(name)?.str()?.iter().map(|v| v.map(str::to_string)).collect())
    }
    fn text_or(&self, name: &str) -> Vec<Option<String>> {
        self.text(name).unwrap_or_else(|_| vec![None; self.0.height()])
    }
    fn float_or(&self, name: &str) -> Vec<Option<f64>> {
        self.0
            .column(name)
            .ok()
            .and_then(|c| c.cast(&DataType::Float64).ok())
            .and_then(|c| c.f64().ok().map(|v| v.iter().collect()))
            .unwrap_or_else(|| vec![None; self.0.height()])
    }
    fn uint_or(&self, name: &str) -> Vec<Option<u64>> {
        self.0
            .column(name)
            .ok()
            .and_then(|c| c.cast(&DataType::UInt64).ok())
            .and_then(|c| c.u64().ok().map(|v| v.iter().collect()))
            .unwrap_or_else(|| vec![None; self.0.height()])
    }
    fn bool_or(&self, name: &str) -> Vec<Option<bool>> {
        self.0
            .column(name)
            .ok()
            .and_then(|c| c.bool().ok().map(|v| v.iter().collect()))
            .unwrap_or_else(|| vec![None; self.0.height()])
    }
}

/// The run-level metric columns (`metric_registry`), and `first_class`, read as numbers.
fn metric_columns() -> impl Iterator<Item = &'static str> {
    std::iter::once("first_class").chain(atso_schema::metric_registry::ALL.iter().map(|m| m.column))
}

fn runs_rows(frame: &DataFrame, folder: &Path) -> Result<Vec<Run>> {
    let c = Columns(frame);
    let run_id = c.text("run_id")?;
    let dataset = c.text("dataset")?;
    let method = c.text("method")?;
    let status = c.text("status")?;
    let ratio = c.float_or("labeled_ratio");
    let seed = c.uint_or("seed");
    let mut metric_names: Vec<String> = metric_columns().map(String::from).collect();
    for name in frame.get_column_names() {
        let name = name.to_string();
        let per_class =
            (atso_schema::metric_registry::of_column(&name).is_some() || name.starts_with("diag_")) && !metric_names.contains(&name);
        if per_class {
            metric_names.push(name);
        }
    }
    let metric_values: Vec<Vec<Option<f64>>> = metric_names.iter().map(|n| c.float_or(n)).collect();
    let simd = c.text_or("simd");
    let series = c.text_or("series_hash");
    let (experiment, kind, error, backend, cpu, commit, cell, config, started, finished) = (
        c.text_or("experiment"),
        c.text_or("method_kind"),
        c.text_or("error"),
        c.text_or("backend"),
        c.text_or("cpu"),
        c.text_or("git_commit"),
        c.text_or("cell_hash"),
        c.text_or("config_hash"),
        c.text_or("started_at"),
        c.text_or("finished_at"),
    );
    let (fraction, n_labeled, n_unlabeled, n_test, threads, dirty) = (
        c.float_or("labeled_fraction"),
        c.uint_or("n_labeled"),
        c.uint_or("n_unlabeled"),
        c.uint_or("n_test"),
        c.uint_or("threads"),
        c.bool_or("git_dirty"),
    );
    Ok((0..frame.height())
        .map(|i| {
            let text = |v: &Vec<Option<String>>| v[i].clone().unwrap_or_default();
            Run {
                run_id: text(&run_id),
                folder: folder.to_path_buf(),
                experiment: text(&experiment),
                dataset: text(&dataset),
                method: text(&method),
                method_kind: text(&kind),
                labeled_ratio: ratio[i].unwrap_or(f64::NAN),
                labeled_fraction: fraction[i],
                seed: seed[i].unwrap_or(0),
                ok: status[i].as_deref() == Some("ok"),
                error: error[i].clone(),
                metrics: metric_names.iter().zip(&metric_values).map(|(n, v)| (n.clone(), v[i])).collect(),
                n_labeled: n_labeled[i].unwrap_or(0),
                n_unlabeled: n_unlabeled[i].unwrap_or(0),
                n_test: n_test[i].unwrap_or(0),
                backend: text(&backend),
                threads: threads[i].unwrap_or(0),
                cpu: text(&cpu),
                simd: text(&simd),
                git_commit: text(&commit),
                git_dirty: dirty[i],
                // Older tables have no cell hash: fall back to "unknown" so they still group.
                cell_hash: cell[i].clone().unwrap_or_else(|| "unknown".into()),
                series_hash: text(&series),
                config_hash: text(&config),
                started_at: text(&started),
                finished_at: text(&finished),
            }
        })
        .collect())
}

fn case_rows(frame: &DataFrame) -> Result<Vec<CaseRow>> {
    let c = Columns(frame);
    let (run, case, class) = (c.text("run_id")?, c.text("case_id")?, c.text("class")?);
    let (dice, hd95) = (c.float_or(registry::DICE.name), c.float_or(registry::HD95.name));
    Ok((0..frame.height())
        .map(|i| CaseRow {
            run_id: run[i].clone().unwrap_or_default(),
            case_id: case[i].clone().unwrap_or_default(),
            class: class[i].clone().unwrap_or_default(),
            dice: dice[i],
            hd95: hd95[i],
        })
        .collect())
}

fn curve_rows(frame: &DataFrame) -> Result<Vec<CurveRow>> {
    let c = Columns(frame);
    let (run, phase_name) = (c.text("run_id")?, c.text_or("phase_name"));
    let (step, phase) = (c.uint_or("step"), c.uint_or("phase"));
    let (lr, loss, validation) = (c.float_or("lr"), c.float_or("loss"), c.float_or("validation_dice"));
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    Ok((0..frame.height())
        .map(|i| CurveRow {
            run_id: run[i].clone().unwrap_or_default(),
            step: step[i].unwrap_or(0),
            phase: phase[i].unwrap_or(0),
            phase_name: phase_name[i].clone().unwrap_or_default(),
            lr: finite(lr[i]),
            loss: finite(loss[i]),
            validation_dice: finite(validation[i]),
        })
        .collect())
}

fn stage_rows(frame: &DataFrame) -> Result<Vec<StageRow>> {
    let c = Columns(frame);
    let run = c.text("run_id")?;
    let stage = c.uint_or("stage");
    let self_made = c.bool_or("labels_self_made");
    let columns = [
        "first_step_pseudo_loss",
        "first_step_loss_self",
        "first_step_loss_cross",
        "flip_rate",
        "pseudo_label_dice",
        "pseudo_label_dice_all",
        "validation_dice",
    ]
    .map(|n| c.float_or(n));
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    Ok((0..frame.height())
        .map(|i| StageRow {
            run_id: run[i].clone().unwrap_or_default(),
            stage: stage[i].unwrap_or(0),
            labels_self_made: self_made[i].unwrap_or(false),
            first_step_loss: finite(columns[0][i]),
            first_step_loss_self: finite(columns[1][i]),
            first_step_loss_cross: finite(columns[2][i]),
            flip_rate: finite(columns[3][i]),
            pseudo_label_dice: finite(columns[4][i]),
            pseudo_label_dice_all: finite(columns[5][i]),
            validation_dice: finite(columns[6][i]),
        })
        .collect())
}
