//! One run, start to record: split, train, evaluate, and the record that says what happened.
//!
//! Everything inside a run that can go wrong becomes that run's "failed" record: an error from
//! any step, a non-finite loss, and a panic anywhere (backend, evaluation, a method bug); the
//! sweep then goes on with the next run.

use super::plan::RunSpec;
use crate::backend;
use crate::config::OutputSpec;
use crate::data::splits::{Split, SplitSpec};
use crate::data::PreparedDataset;
use crate::method::{Method, RunContext, RunData, RunSetup};
use crate::progress::{self, Event, SharedSink};
use crate::provenance::{Machine, Provenance};
use crate::records::{RunRecord, Status};
use crate::rng;
use crate::scores::RunMetrics;
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use std::time::Instant;

/// What every run of a sweep shares.
pub struct RunEnvironment<'a> {
    pub results: &'a Path,
    pub backend: backend::Backend,
    pub provenance: &'a Provenance,
    pub machine: &'a Machine,
    pub threads: usize,
    pub output: &'a OutputSpec,
    pub checkpoint: crate::checkpoint::CheckpointSpec,
}

/// The data of a run: its dataset and, in the transfer setting, the reference dataset that gives
/// the unlabeled, validation and test cases.
#[derive(Clone, Copy)]
pub struct DataSources<'a> {
    pub primary: &'a PreparedDataset,
    pub reference: Option<&'a PreparedDataset>,
}

/// The split of `dataset` for one ratio and seed, with the test cases the dataset or the
/// `[splits] test_fold` fixes.
pub fn split_of(spec: &SplitSpec, dataset: &PreparedDataset, ratio: f64, seed: u64) -> Result<Split> {
    let ids: Vec<String> = dataset.cases.iter().map(|c| c.id.clone()).collect();
    let fixed: Option<&[String]> = match spec.test_fold {
        Some(fold) => {
            let folds = dataset.folds.as_ref().ok_or_else(|| {
                anyhow!(
                    "splits.test_fold: dataset '{}' defines no folds (use a preset with folds, e.g. nih-pancreas)",
                    dataset.name
                )
            })?;
            Some(
                folds
                    .get(fold - 1)
                    .ok_or_else(|| anyhow!("splits.test_fold = {fold}: dataset '{}' has {} folds", dataset.name, folds.len()))?,
            )
        }
        None => dataset.fixed_test.as_deref(),
    };
    spec.split(&dataset.name, &ids, fixed, ratio, seed)
}

/// Identity of a run as the sweep computed it.
pub struct RunIdentity {
    pub config_hash: String,
    pub cell_hash: String,
    pub series_hash: String,
    pub data_fingerprint: String,
}

/// `f()`, with its error, or a panic, turned into one message (a panic's prefixed with
/// "panicked: "), so that a failure is recorded and the caller carries on.
pub fn run_guarded<T, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{error:#}")),
        Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref()))),
    }
}

/// A panic's message.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// A new run id (name and start time, unique per run start) and the start time.
pub fn new_run_id(run: &RunSpec) -> (String, chrono::DateTime<chrono::Utc>) {
    let started = chrono::Utc::now();
    (format!("{}_{}", run.name(), started.format("%Y%m%dT%H%M%S%.3f")), started)
}

/// Runs `run` as `run_id` and returns its record (ok or failed); never fails itself.
pub fn execute(
    run: &RunSpec,
    (run_id, started): (String, chrono::DateTime<chrono::Utc>),
    identity: &RunIdentity,
    dataset: Result<DataSources, &String>,
    method: &dyn Method,
    env: &RunEnvironment,
    sink: &SharedSink,
) -> RunRecord {
    let clock = Instant::now();
    let peak_measured = crate::memory::reset_peak();
    progress::emit(
        sink,
        Event::Started {
            run: run_id.clone(),
            steps: run.budget.iterations,
        },
    );
    let mut record = blank_record(run, identity, method, env, &run_id, started);
    let error = run_guarded(|| train_and_evaluate(run, dataset, method, env, &run_id, sink, &mut record)).err();
    record.status = if error.is_none() { Status::Ok } else { Status::Failed };
    record.error = error;
    record.wall_seconds = clock.elapsed().as_secs_f64();
    // A sweep runs one run at a time per process, so the mark is this run's.
    record.peak_rss_mib = if peak_measured { crate::memory::peak_resident_mib() } else { None };
    record.finished_at = chrono::Utc::now().to_rfc3339();
    if env.output.tensorboard && !record.curve.is_empty() {
        if let Err(err) = crate::tensorboard::write(env.results, &run_id, &record.host, started, &record.curve) {
            progress::emit(
                sink,
                Event::Note {
                    message: format!("{run_id}: TensorBoard events not written: {err:#}"),
                },
            );
        }
    }
    progress::emit(
        sink,
        Event::Finished {
            run: run_id,
            ok: record.status == Status::Ok,
            dice: record.metrics.mean(&crate::metric_registry::DICE),
            seconds: record.wall_seconds,
            error: record.error.clone(),
        },
    );
    record
}

fn blank_record(
    run: &RunSpec,
    identity: &RunIdentity,
    method: &dyn Method,
    env: &RunEnvironment,
    run_id: &str,
    started: chrono::DateTime<chrono::Utc>,
) -> RunRecord {
    let settings = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| method.settings(&run.budget).to_string()))
        .unwrap_or_else(|p| format!("{{\"error\": \"settings panicked: {}\"}}", panic_message(p.as_ref())));
    RunRecord {
        run_id: run_id.to_string(),
        experiment: run.experiment.clone(),
        dataset: run.dataset.name.clone(),
        method: run.method.label(),
        method_kind: run.method.kind().to_string(),
        labeled_ratio: run.labeled_ratio,
        labeled_fraction: None,
        seed: run.seed,
        status: Status::Failed,
        error: None,
        metrics: RunMetrics::default(),
        iterations: run.budget.iterations,
        iterations_used: 0,
        batch_size: run.budget.batch_size,
        resolution: run.budget.resolution,
        n_labeled: 0,
        n_unlabeled: 0,
        n_validation: 0,
        n_test: 0,
        wall_seconds: 0.0,
        peak_rss_mib: None,
        backend: backend::label(env.backend),
        threads: env.threads,
        cpu: env.machine.cpu.clone(),
        simd: backend::kernels_description(env.backend, &env.machine.simd),
        host: env.machine.host.clone(),
        git_commit: env.provenance.commit.clone(),
        git_dirty: env.provenance.dirty,
        git_branch: env.provenance.branch.clone(),
        config_hash: identity.config_hash.clone(),
        cell_hash: identity.cell_hash.clone(),
        series_hash: identity.series_hash.clone(),
        data_fingerprint: identity.data_fingerprint.clone(),
        method_settings: settings,
        augmentation: serde_json::to_string(&run.augmentation).unwrap_or_default(),
        lr_schedule: serde_json::to_value(run.optimizer.schedule)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        empty_classes: serde_json::to_value(run.evaluation.empty_classes)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        diagnostics: Default::default(),
        split_file: String::new(),
        predictions_dir: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: started.to_rfc3339(),
        finished_at: String::new(),
        resumed_from_step: None,
        cases: Vec::new(),
        class_names: Vec::new(),
        first_class: 1,
        stages: Vec::new(),
        ledger: Vec::new(),
        curve: Vec::new(),
    }
}

/// The body of a run; fills `record` as it learns things, so a failure keeps what was known.
fn train_and_evaluate(
    run: &RunSpec,
    dataset: Result<DataSources, &String>,
    method: &dyn Method,
    env: &RunEnvironment,
    run_id: &str,
    sink: &SharedSink,
    record: &mut RunRecord,
) -> Result<()> {
    let sources = dataset.map_err(|e| anyhow!("preparing dataset '{}': {e}", run.dataset.name))?;
    let dataset = sources.primary;
    record.class_names = dataset.classes.clone();
    record.first_class = dataset.first_class;
    let own = split_of(&run.splits, dataset, run.labeled_ratio, run.seed)?;
    // In the transfer setting the reference dataset gives every case but the labeled ones.
    let (split, evaluated) = match sources.reference {
        None => (own, dataset),
        Some(reference) => {
            if reference.classes != dataset.classes || reference.in_channels != dataset.in_channels {
                bail!(
                    "reference_dataset '{}' has classes {:?} ({} channel(s)); '{}' has {:?} ({}): they must agree",
                    reference.name,
                    reference.classes,
                    reference.in_channels,
                    dataset.name,
                    dataset.classes,
                    dataset.in_channels
                );
            }
            let other = split_of(&run.splits, reference, 1.0, run.seed)?;
            let mut unlabeled: Vec<String> = other.labeled.iter().chain(&other.unlabeled).cloned().collect();
            unlabeled.sort();
            (
                Split {
                    labeled: own.labeled,
                    unlabeled,
                    validation: other.validation,
                    test: other.test,
                    reference_dataset: Some(reference.name.clone()),
                    ..own
                },
                reference,
            )
        }
    };
    let split_file = Path::new("splits").join(format!("{}_r{}_s{}.json", dataset.name, run.labeled_ratio, run.seed));
    split.write(&env.results.join(&split_file))?;
    record.split_file = split_file.display().to_string();
    fn pick<'d>(from: &'d PreparedDataset, wanted: &[String]) -> Vec<&'d crate::data::Case> {
        from.cases.iter().filter(|c| wanted.contains(&c.id)).collect()
    }
    let data = RunData {
        class_names: dataset.classes.clone(),
        in_channels: dataset.in_channels,
        first_class: dataset.first_class,
        outside_label: dataset.outside_label,
        labeled: pick(dataset, &split.labeled),
        unlabeled: pick(evaluated, &split.unlabeled),
        validation: pick(evaluated, &split.validation),
        test: pick(evaluated, &split.test),
    };
    record.n_labeled = data.labeled.len();
    record.n_unlabeled = data.unlabeled.len();
    record.n_validation = data.validation.len();
    record.n_test = data.test.len();
    record.labeled_fraction = Some(data.labeled.len() as f64 / (data.labeled.len() + data.unlabeled.len()).max(1) as f64);
    let device = backend::device(env.backend, rng::derived_seed(run.seed, "device"))?;
    let setup = RunSetup {
        model_spec: run.model.clone(),
        budget: run.budget.clone(),
        optimizer: run.optimizer.clone(),
        augmentation: run.augmentation.clone(),
        evaluation: run.evaluation.clone(),
        seed: run.seed,
    };
    let mut ctx = RunContext::new(data, setup, device);
    if env.checkpoint.every > 0 {
        ctx.engine.with_checkpoints(crate::checkpoint::Checkpoints::new(
            env.results,
            &record.config_hash,
            &env.provenance.commit,
            env.checkpoint.every,
        ));
    }
    let step_sink = sink.clone();
    let name = run_id.to_string();
    ctx.engine.on_step(move |report| {
        progress::emit(
            &step_sink,
            Event::Step {
                run: name.clone(),
                done: report.done,
                total: report.total,
                loss: report.loss,
                lr: report.lr,
            },
        )
    });
    let trained = method.train(&mut ctx);
    // What the method recorded is kept even when it failed part-way.
    record.resumed_from_step = ctx.engine.resumed_at();
    if let Some(step) = record.resumed_from_step {
        progress::emit(
            sink,
            Event::Note {
                message: format!("{run_id}: resumed from its checkpoint at step {step}"),
            },
        );
    }
    record.iterations_used = ctx.engine.steps_taken();
    record.stages = std::mem::take(&mut ctx.stages);
    record.ledger = std::mem::take(&mut ctx.ledger);
    record.diagnostics = std::mem::take(&mut ctx.diagnostics);
    record.curve = ctx.engine.take_curve();
    let trained = trained?;
    let validation = ctx.evaluate(&trained, &ctx.data.validation)?;
    let predictions = env.output.save_predictions.then(|| Path::new("predictions").join(run_id));
    let test = ctx.evaluate_into(
        &trained,
        &ctx.data.test,
        predictions.as_ref().map(|p| env.results.join(p)).as_deref(),
    )?;
    record.predictions_dir = predictions.map(|p| p.display().to_string());
    if env.output.previews {
        // Auxiliary pictures: failing to write them costs the figure, not the run.
        if let Err(err) = crate::previews::write(env.results, &record.dataset, run_id, &ctx.data.test, &test.previews) {
            progress::emit(
                sink,
                Event::Note {
                    message: format!("{run_id}: previews not written: {err:#}"),
                },
            );
        }
    }
    record.metrics = RunMetrics::of_run(&test.summary, &validation.summary, &ctx.scored_class_names());
    record.cases = test.scores;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::run_guarded;

    #[test]
    fn errors_and_panics_become_messages() {
        assert_eq!(run_guarded(|| Ok::<_, String>(3)), Ok(3));
        let error = run_guarded(|| -> anyhow::Result<()> { Err(anyhow::anyhow!("inner").context("outer")) });
        assert_eq!(error, Err("outer: inner".to_string()));
        let panicked = run_guarded(|| -> anyhow::Result<()> { panic!("no bilinear backward here") });
        assert_eq!(panicked, Err("panicked: no bilinear backward here".to_string()));
    }
}
