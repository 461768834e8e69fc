//! The sweep driver: expands an experiment into runs, prepares each dataset once, trains and
//! evaluates every run, and records it, failed or not.
//!
//! A run that fails (bad data, a panic inside the backend) is recorded with status "failed" and its
//! error, and the sweep goes on. Completed runs are recognised by their config hash and skipped on
//! a later sweep of the same file unless a rerun is asked for, so an interrupted sweep resumes.

use crate::backend;
use crate::config::{Experiment, MethodSpec};
use crate::data::splits::SplitSpec;
use crate::data::{DatasetSpec, PreparedDataset};
use crate::method::{Budget, Method, RunContext, RunData};
use crate::model::ModelSpec;
use crate::provenance::Provenance;
use crate::records::{self, RunRecord, Status};
use crate::rng;
use crate::train::OptimizerSpec;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Builds the method object for a `[[methods]]` entry (supplied by the binary, which knows the
/// baselines crate).
pub type MethodFactory<'f> = &'f dyn Fn(&MethodSpec) -> Box<dyn Method>;

/// How a sweep runs.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Results go to `<results_root>/<experiment name>/`.
    pub results_root: PathBuf,
    /// Relative dataset paths are resolved from here.
    pub data_base: PathBuf,
    pub backend: String,
    /// Run again even where an ok record with the same config hash exists.
    pub rerun: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a sweep did.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSummary {
    pub results_dir: PathBuf,
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// One expanded run: everything that determines its result (hashed into `config_hash`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    pub experiment: String,
    pub dataset: DatasetSpec,
    pub method: MethodSpec,
    pub labeled_ratio: f64,
    pub seed: u64,
    pub budget: Budget,
    pub model: ModelSpec,
    pub optimizer: OptimizerSpec,
    pub splits: SplitSpec,
}

impl RunSpec {
    /// First 16 hex digits of the SHA-256 of the run's JSON form.
    pub fn config_hash(&self) -> String {
        let json = serde_json::to_string(self).expect("run specs serialise");
        let digest = Sha256::digest(json.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Short human-readable name: dataset/method/ratio/seed.
    pub fn name(&self) -> String {
        format!(
            "{}_{}_r{}_s{}",
            self.dataset.name,
            self.method.label(),
            self.labeled_ratio,
            self.seed
        )
    }
}

/// Datasets x methods x ratios x seeds, in that nesting order.
pub fn expand(experiment: &Experiment) -> Vec<RunSpec> {
    let mut runs = Vec::new();
    for dataset in &experiment.datasets {
        for method in &experiment.methods {
            for &labeled_ratio in &experiment.labeled_ratios {
                for &seed in &experiment.seeds {
                    runs.push(RunSpec {
                        experiment: experiment.name.clone(),
                        dataset: dataset.clone(),
                        method: method.clone(),
                        labeled_ratio,
                        seed,
                        budget: experiment.budget.clone(),
                        model: experiment.model.clone(),
                        optimizer: experiment.optimizer.clone(),
                        splits: experiment.splits.clone(),
                    });
                }
            }
        }
    }
    runs
}

/// Runs every run of `experiment` and records it. `source` is the experiment file's text, kept
/// with the results.
pub fn sweep(experiment: &Experiment, source: &str, options: &SweepOptions, factory: MethodFactory) -> Result<SweepSummary> {
    let dir = options.results_root.join(&experiment.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    save_config_copy(&dir, source)?;
    let provenance = Provenance::discover(&std::env::current_dir().unwrap_or_default());
    let done: Vec<String> = records::load_all(&dir)?
        .into_iter()
        .filter(|r| r.status == Status::Ok)
        .map(|r| r.config_hash)
        .collect();
    let runs = expand(experiment);
    let bar = progress_bar(runs.len(), options.progress);
    let mut prepared: HashMap<String, Result<PreparedDataset, String>> = HashMap::new();
    let mut summary = SweepSummary {
        results_dir: dir.clone(),
        ok: 0,
        failed: 0,
        skipped: 0,
    };
    for run in &runs {
        bar.set_message(run.name());
        if !options.rerun && done.contains(&run.config_hash()) {
            summary.skipped += 1;
            bar.inc(1);
            continue;
        }
        let dataset = prepared
            .entry(run.dataset.name.clone())
            .or_insert_with(|| prepare_dataset(&run.dataset, run.budget.resolution, options, &dir));
        let method = factory(&run.method);
        let record = execute(run, dataset.as_ref(), method.as_ref(), options, &provenance, &dir);
        match record.status {
            Status::Ok => summary.ok += 1,
            Status::Failed => summary.failed += 1,
        }
        log_record(&record);
        records::save(&dir, &record)?;
        records::rebuild_tables(&dir)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(summary)
}

fn save_config_copy(dir: &Path, source: &str) -> Result<()> {
    let hash: String = Sha256::digest(source.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let configs = dir.join("configs");
    std::fs::create_dir_all(&configs)?;
    let path = configs.join(format!("{hash}.toml"));
    if !path.exists() {
        std::fs::write(&path, source).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn prepare_dataset(spec: &DatasetSpec, resolution: usize, options: &SweepOptions, dir: &Path) -> Result<PreparedDataset, String> {
    let prepared = spec.prepare(resolution, &options.data_base).map_err(|e| format!("{e:#}"))?;
    let path = dir.join("datasets").join(format!("{}.json", spec.name));
    let write = || -> Result<()> {
        std::fs::create_dir_all(path.parent().unwrap())?;
        let json = serde_json::json!({ "name": prepared.name, "classes": prepared.classes, "resolution": resolution, "fingerprint": prepared.fingerprint });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        Ok(())
    };
    write().map_err(|e| format!("writing {}: {e:#}", path.display()))?;
    Ok(prepared)
}

fn progress_bar(len: usize, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs [{elapsed_precise} < {eta_precise}] {msg}") {
        bar.set_style(style);
    }
    bar
}

fn log_record(record: &RunRecord) {
    match record.status {
        Status::Ok => tracing::info!(run = %record.run_id, dice = ?record.dice_mean, seconds = record.wall_seconds, "run finished"),
        Status::Failed => tracing::warn!(run = %record.run_id, error = record.error.as_deref().unwrap_or(""), "run failed"),
    }
}

/// What a successful run produced.
struct Outcome {
    split_file: PathBuf,
    counts: (usize, usize, usize),
    class_names: Vec<String>,
    test: (Vec<crate::train::metrics::CaseScores>, crate::train::metrics::Summary),
    validation: crate::train::metrics::Summary,
    iterations_used: usize,
    stages: Vec<records::StageRecord>,
    ledger: Vec<records::LedgerEntry>,
}

fn execute(
    run: &RunSpec,
    dataset: Result<&PreparedDataset, &String>,
    method: &dyn Method,
    options: &SweepOptions,
    provenance: &Provenance,
    dir: &Path,
) -> RunRecord {
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let run_id = format!("{}_{}", run.name(), started.format("%Y%m%dT%H%M%S%.3f"));
    let outcome = train_and_evaluate(run, dataset, method, options, dir);
    let finished = chrono::Utc::now();
    let mut record = RunRecord {
        run_id,
        experiment: run.experiment.clone(),
        dataset: run.dataset.name.clone(),
        method: run.method.label(),
        method_kind: run.method.kind().to_string(),
        labeled_ratio: run.labeled_ratio,
        seed: run.seed,
        status: Status::Failed,
        error: None,
        dice_mean: None,
        iou_mean: None,
        val_dice_mean: None,
        class_dice: Vec::new(),
        iterations: run.budget.iterations,
        iterations_used: 0,
        batch_size: run.budget.batch_size,
        resolution: run.budget.resolution,
        n_labeled: 0,
        n_unlabeled: 0,
        n_test: 0,
        wall_seconds: clock.elapsed().as_secs_f64(),
        backend: backend::label(&options.backend),
        git_commit: provenance.commit.clone(),
        git_dirty: provenance.dirty,
        git_branch: provenance.branch.clone(),
        config_hash: run.config_hash(),
        method_settings: method.settings(&run.budget).to_string(),
        split_file: String::new(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: started.to_rfc3339(),
        finished_at: finished.to_rfc3339(),
        cases: Vec::new(),
        class_names: Vec::new(),
        stages: Vec::new(),
        ledger: Vec::new(),
    };
    match outcome {
        Ok(o) => {
            let (scores, summary) = o.test;
            record.status = Status::Ok;
            record.dice_mean = summary.dice_mean;
            record.iou_mean = summary.iou_mean;
            record.val_dice_mean = o.validation.dice_mean;
            record.class_dice = o
                .class_names
                .iter()
                .skip(1)
                .cloned()
                .zip(summary.dice_per_class.iter().copied())
                .collect();
            record.iterations_used = o.iterations_used;
            (record.n_labeled, record.n_unlabeled, record.n_test) = o.counts;
            record.split_file = o.split_file.strip_prefix(dir).unwrap_or(&o.split_file).display().to_string();
            record.cases = scores;
            record.class_names = o.class_names;
            record.stages = o.stages;
            record.ledger = o.ledger;
        }
        Err(error) => record.error = Some(format!("{error:#}")),
    }
    record
}

fn train_and_evaluate(
    run: &RunSpec,
    dataset: Result<&PreparedDataset, &String>,
    method: &dyn Method,
    options: &SweepOptions,
    dir: &Path,
) -> Result<Outcome> {
    let dataset = dataset.map_err(|e| anyhow!("preparing dataset '{}': {e}", run.dataset.name))?;
    let ids: Vec<String> = dataset.cases.iter().map(|c| c.id.clone()).collect();
    let split = run.splits.split(&dataset.name, &ids, run.labeled_ratio, run.seed)?;
    let split_file = dir
        .join("splits")
        .join(format!("{}_r{}_s{}.json", dataset.name, run.labeled_ratio, run.seed));
    split.write(&split_file)?;
    let pick = |wanted: &[String]| dataset.cases.iter().filter(|c| wanted.contains(&c.id)).collect::<Vec<_>>();
    let data = RunData {
        class_names: dataset.classes.clone(),
        labeled: pick(&split.labeled),
        unlabeled: pick(&split.unlabeled),
        validation: pick(&split.validation),
        test: pick(&split.test),
    };
    let counts = (data.labeled.len(), data.unlabeled.len(), data.test.len());
    let device = backend::device(&options.backend, rng::derived_seed(run.seed, "device"))?;
    let mut ctx = RunContext::new(data, run.model.clone(), run.budget.clone(), run.optimizer.clone(), run.seed, device);
    let trained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| method.train(&mut ctx)));
    let model = match trained {
        Ok(result) => result?,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            return Err(anyhow!("method panicked: {message}"));
        }
    };
    let validation = ctx.evaluate(&model, &ctx.data.validation).1;
    let test = ctx.evaluate(&model, &ctx.data.test);
    Ok(Outcome {
        split_file,
        counts,
        class_names: dataset.classes.clone(),
        test,
        validation,
        iterations_used: ctx.engine.steps_taken(),
        stages: ctx.stages,
        ledger: ctx.ledger,
    })
}
