//! The sweep driver: expands an experiment into runs, prepares each dataset once, claims, trains,
//! evaluates and records every run, failed or not.
//!
//! A sweep may share its results folder with other sweeps (parallel jobs, Slurm array tasks):
//! each run is claimed before it starts (`claims`), runs already recorded are skipped, tables
//! are rebuilt under the folder lock. A run that fails (bad data, a non-finite loss, a panic) is
//! recorded with status "failed" and its error, and the sweep goes on. An interrupted sweep
//! resumes where it stopped: recorded runs are recognised by their configuration hash (`plan`).

pub mod claims;
mod execute;
pub mod plan;

pub use execute::run_guarded;
pub use plan::{expand, RunSpec, Shard};

use crate::config::{Experiment, MethodSpec};
use crate::data::{DatasetSpec, PreparedDataset};
use crate::fsio;
use crate::method::Method;
use crate::progress::{self, Event, RunLog, SharedSink};
use crate::provenance::{Machine, Provenance};
use crate::records::{self, RunRecord, Status};
use anyhow::{bail, Context, Result};
use execute::{RunEnvironment, RunIdentity};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    pub backend: crate::backend::Backend,
    /// Run again runs recorded ok before this sweep started.
    pub rerun: bool,
    /// Run again runs whose ok records all come from another commit.
    pub rerun_stale: bool,
    /// Only this part of the runs.
    pub shard: Option<Shard>,
    /// When the sweep (or the parent of parallel workers) started: records that started later
    /// belong to this sweep and are never run again by it.
    pub sweep_started: chrono::DateTime<chrono::Utc>,
    /// CPU threads each run uses (recorded).
    pub threads: usize,
    /// A claim on a file system without locks counts for this long.
    pub claim_stale_after: Duration,
}

impl SweepOptions {
    /// Options with defaults for everything but the folders and backend.
    pub fn new(results_root: PathBuf, data_base: PathBuf, backend: crate::backend::Backend) -> Self {
        Self {
            results_root,
            data_base,
            backend,
            rerun: false,
            rerun_stale: false,
            shard: None,
            sweep_started: chrono::Utc::now(),
            threads: rayon::current_num_threads(),
            claim_stale_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepSummary {
    pub results_dir: PathBuf,
    pub ok: usize,
    pub failed: usize,
    /// Recorded ok at this commit (or by this sweep).
    pub recorded: usize,
    /// Recorded ok only at other commits, reused (see `--rerun-stale`).
    pub stale: usize,
    /// Claimed by another process.
    pub claimed: usize,
    /// Record files that could not be read (skipped with a warning).
    pub unreadable: usize,
}

/// The parts of a record that decide whether a run is done (parsed without the case lists).
#[derive(Debug, Clone, Deserialize)]
struct RecordHead {
    config_hash: String,
    status: Status,
    git_commit: String,
    started_at: String,
}

fn heads(results: &Path) -> Vec<RecordHead> {
    records::record_paths(results)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| fsio::is_regular_file(p))
        .filter_map(|p| serde_json::from_str::<RecordHead>(&std::fs::read_to_string(p).ok()?).ok())
        .collect()
}

/// Where one run stands in a results folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunState {
    /// Recorded ok at the current commit.
    Done,
    /// Recorded ok, but only at other commits.
    Stale,
    /// Only failed records.
    Failed,
    /// No record.
    Missing,
    /// Claimed by a live process now (only `status` says so; the records may say anything).
    Running,
}

impl RunState {
    /// The word `atso status` prints.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Done => "done",
            RunState::Stale => "stale",
            RunState::Failed => "failed",
            RunState::Missing => "missing",
            RunState::Running => "running",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

fn state_of(heads: &[RecordHead], hash: &str, commit: &str) -> RunState {
    let mine: Vec<&RecordHead> = heads.iter().filter(|h| h.config_hash == hash).collect();
    if mine.iter().any(|h| h.status == Status::Ok && h.git_commit == commit) {
        RunState::Done
    } else if mine.iter().any(|h| h.status == Status::Ok) {
        RunState::Stale
    } else if mine.is_empty() {
        RunState::Missing
    } else {
        RunState::Failed
    }
}

/// Whether this sweep should run `hash`, given the records now on disk.
fn should_run(heads: &[RecordHead], hash: &str, commit: &str, options: &SweepOptions) -> Option<&'static str> {
    let since = options.sweep_started.to_rfc3339();
    let mine: Vec<&RecordHead> = heads.iter().filter(|h| h.config_hash == hash).collect();
    if mine.iter().any(|h| h.started_at >= since) {
        return Some("already run by this sweep");
    }
    match state_of(heads, hash, commit) {
        RunState::Done if !options.rerun => Some("recorded"),
        RunState::Stale if !options.rerun && !options.rerun_stale => {
            Some("recorded at another commit (reused; --rerun-stale runs it again)")
        }
        _ => None,
    }
}

/// A prepared dataset and the hash of its fingerprint, or why preparation failed.
pub type Prepared = Result<(PreparedDataset, String), String>;

/// Stops a sweep before anything trains when a dataset could not be prepared: every run on it
/// would fail the same way, so it is the experiment file or the data that needs fixing (exit
/// status 1, as `atso data prepare` gives), not a row per run to record.
fn check_prepared(prepared: &HashMap<String, Prepared>) -> Result<()> {
    let mut failed: Vec<String> = prepared
        .iter()
        .filter_map(|(name, p)| p.as_ref().err().map(|e| format!("datasets '{name}': {e}")))
        .collect();
    failed.sort();
    if !failed.is_empty() {
        bail!("no run started: {}", failed.join("; "));
    }
    Ok(())
}

/// Prepares every dataset of `experiment` (of its shard) as a sweep would, writing their
/// fingerprints: a parallel sweep's parent does this before it starts any worker, so a data
/// error stops it with one message instead of a failed run per worker.
pub fn prepare_all(experiment: &Experiment, options: &SweepOptions) -> Result<()> {
    let dir = options.results_root.join(&experiment.name);
    let mut prepared: HashMap<String, Prepared> = HashMap::new();
    for (i, run) in expand(experiment).iter().enumerate() {
        if options.shard.is_some_and(|s| !s.contains(i)) {
            continue;
        }
        for spec in std::iter::once(&run.dataset).chain(run.reference.as_ref()) {
            prepared
                .entry(spec.name.clone())
                .or_insert_with(|| prepare_dataset(spec, run.budget.resolution, &options.data_base, &dir));
        }
    }
    check_prepared(&prepared)
}

/// Runs every run of `experiment` (of its shard) that is not yet recorded and records it.
/// `source` is the experiment file's text, kept with the results.
pub fn sweep(
    experiment: &Experiment,
    source: &str,
    options: &SweepOptions,
    factory: MethodFactory,
    sink: SharedSink,
) -> Result<SweepSummary> {
    let dir = options.results_root.join(&experiment.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Temporary files a killed process left (its claims are free already: they are locks).
    crate::leftovers::clear(&dir);
    save_config_copy(&dir, source)?;
    let provenance = Provenance::discover(&std::env::current_dir().unwrap_or_default());
    let machine = Machine::current();
    let env = RunEnvironment {
        results: &dir,
        backend: options.backend,
        provenance: &provenance,
        machine: &machine,
        threads: options.threads,
        output: &experiment.output,
        checkpoint: experiment.checkpoint,
    };
    let backend = crate::backend::label(options.backend);
    let runs: Vec<RunSpec> = expand(experiment)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| options.shard.is_none_or(|s| s.contains(*i)))
        .map(|(_, r)| r)
        .collect();
    let mut summary = SweepSummary {
        results_dir: dir.clone(),
        unreadable: records::load(&dir)?.skipped.len(),
        ..SweepSummary::default()
    };
    let mut prepared: HashMap<String, Prepared> = HashMap::new();
    let mut existing = heads(&dir);
    let mut identities = Vec::with_capacity(runs.len());
    for run in &runs {
        let mut fingerprints = Vec::new();
        for spec in std::iter::once(&run.dataset).chain(run.reference.as_ref()) {
            let data = prepared
                .entry(spec.name.clone())
                .or_insert_with(|| prepare_dataset(spec, run.budget.resolution, &options.data_base, &dir));
            fingerprints.push(data.as_ref().map_or("unavailable".to_string(), |(_, f)| f.clone()));
        }
        let fingerprint = plan::combined_fingerprint(fingerprints);
        identities.push(RunIdentity {
            config_hash: run.config_hash(&fingerprint, &backend),
            cell_hash: run.cell_hash(&fingerprint, &backend),
            series_hash: run.series_hash(&fingerprint, &backend),
            data_fingerprint: fingerprint,
        });
    }
    check_prepared(&prepared)?;
    let to_run = identities
        .iter()
        .filter(|id| should_run(&existing, &id.config_hash, &provenance.commit, options).is_none())
        .count();
    progress::emit(&sink, Event::Planned { runs: runs.len(), to_run });
    for (run, identity) in runs.iter().zip(&identities) {
        if let Some(reason) = should_run(&existing, &identity.config_hash, &provenance.commit, options) {
            // A process killed between recording the run and releasing its claim left the file.
            claims::clear_unheld(&dir, &identity.config_hash, options.claim_stale_after);
            match state_of(&existing, &identity.config_hash, &provenance.commit) {
                RunState::Stale => summary.stale += 1,
                _ => summary.recorded += 1,
            }
            skipped(&sink, run, reason);
            continue;
        }
        let Some(claim) = claims::try_claim(&dir, &identity.config_hash, &run.name(), options.claim_stale_after)? else {
            summary.claimed += 1;
            skipped(&sink, run, "claimed by another process");
            continue;
        };
        // Another process may have recorded it between our look and our claim.
        existing = heads(&dir);
        if let Some(reason) = should_run(&existing, &identity.config_hash, &provenance.commit, options) {
            claim.release();
            summary.recorded += 1;
            skipped(&sink, run, reason);
            continue;
        }
        let dataset = sources(&prepared, run);
        let method = factory(&run.method);
        let record = execute_logged(run, identity, dataset, method.as_ref(), &env, &sink);
        match record.status {
            Status::Ok => summary.ok += 1,
            Status::Failed => summary.failed += 1,
        }
        log_record(&record);
        records::save(&dir, &record)?;
        // Recorded: its checkpoints are no longer needed.
        crate::checkpoint::Checkpoints::new(&dir, &identity.config_hash, "", 0).clear();
        rebuild_tables(&dir)?;
        claim.release();
        existing = heads(&dir);
    }
    // A sweep with nothing to do still brings tables that lag their records up to date (a
    // rebuild that failed, on a full disk say, or records copied in by hand).
    if records::tables_lag_records(&dir) {
        rebuild_tables(&dir)?;
    }
    Ok(summary)
}

/// Rebuilds a results folder's tables from its records under the folder lock, so concurrent
/// sweeps and reports never interleave their writes; returns what was loaded. Every rebuild
/// goes through here.
pub fn rebuild_tables(results: &Path) -> Result<records::Loaded> {
    let _lock = claims::FolderLock::acquire(results)?;
    records::rebuild_tables(results)
}

fn skipped(sink: &SharedSink, run: &RunSpec, reason: &str) {
    progress::emit(
        sink,
        Event::Skipped {
            run: run.name(),
            reason: reason.into(),
        },
    );
}

/// The prepared data of `run` (and of its reference dataset), or why it is unavailable.
fn sources<'p>(prepared: &'p HashMap<String, Prepared>, run: &RunSpec) -> Result<execute::DataSources<'p>, &'p String> {
    let primary = prepared[&run.dataset.name].as_ref().map(|(d, _)| d)?;
    let reference = match &run.reference {
        Some(spec) => Some(prepared[&spec.name].as_ref().map(|(d, _)| d)?),
        None => None,
    };
    Ok(execute::DataSources { primary, reference })
}

/// [`execute::execute`] with the run's events also appended to `logs/<run_id>.log`.
fn execute_logged(
    run: &RunSpec,
    identity: &RunIdentity,
    dataset: Result<execute::DataSources, &String>,
    method: &dyn Method,
    env: &RunEnvironment,
    sink: &SharedSink,
) -> RunRecord {
    let id = execute::new_run_id(run);
    let log_path = env.results.join("logs").join(format!("{}.log", id.0));
    let logged: SharedSink = Arc::new(Mutex::new(RunLog::open(sink.clone(), &log_path, run.budget.iterations)));
    execute::execute(run, id, identity, dataset, method, env, &logged)
}

/// Where every run of an experiment stands in its results folder (for `atso status`).
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub run: String,
    pub state: RunState,
    pub detail: String,
}

/// Lists every run of `experiment` with its state: done, stale, failed, claimed (running),
/// missing. Needs the datasets' fingerprints, which it reads from `datasets/<name>.json`
/// (written by any sweep that prepared them); runs of a dataset never prepared are missing.
pub fn status(experiment: &Experiment, options: &SweepOptions) -> Result<Vec<StatusRow>> {
    let dir = options.results_root.join(&experiment.name);
    let provenance = Provenance::discover(&std::env::current_dir().unwrap_or_default());
    let backend = crate::backend::label(options.backend);
    let existing = heads(&dir);
    let mut rows = Vec::new();
    for run in expand(experiment) {
        let datasets: Vec<&str> = std::iter::once(&run.dataset)
            .chain(run.reference.as_ref())
            .map(|d| d.name.as_str())
            .collect();
        let fingerprints: Option<Vec<String>> = datasets.iter().map(|name| recorded_fingerprint(&dir, name)).collect();
        let Some(fingerprints) = fingerprints else {
            rows.push(StatusRow {
                run: run.name(),
                state: RunState::Missing,
                detail: format!(
                    "dataset {} not prepared yet",
                    datasets.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(" or ")
                ),
            });
            continue;
        };
        let fingerprint = plan::combined_fingerprint(fingerprints);
        let hash = run.config_hash(&fingerprint, &backend);
        let (state, detail) = match claims::state(&dir, &hash, options.claim_stale_after) {
            claims::ClaimState::Held(holder) => (
                RunState::Running,
                holder.map_or(String::new(), |h| format!("pid {} on {} since {}", h.pid, h.host, h.since)),
            ),
            claim => {
                let state = state_of(&existing, &hash, &provenance.commit);
                let detail = match claim {
                    claims::ClaimState::Stale(h) => format!(
                        "stale claim{} (its holder is gone; the next sweep takes it over)",
                        h.map_or(String::new(), |h| format!(" by pid {} on {}", h.pid, h.host))
                    ),
                    _ => String::new(),
                };
                (state, detail)
            }
        };
        rows.push(StatusRow {
            run: run.name(),
            state,
            detail,
        });
    }
    Ok(rows)
}

fn recorded_fingerprint(dir: &Path, dataset: &str) -> Option<String> {
    let path = dir.join("datasets").join(format!("{dataset}.json"));
    if !fsio::is_regular_file(&path) {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("fingerprint_hash")?.as_str().map(str::to_string)
}

fn save_config_copy(dir: &Path, source: &str) -> Result<()> {
    let hash: String = Sha256::digest(source.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join("configs").join(format!("{hash}.toml"));
    if !path.exists() {
        fsio::write_atomic(&path, source.as_bytes())?;
    }
    Ok(())
}

/// Prepares a dataset (a panic becomes an error) and writes its fingerprint to
/// `<dir>/datasets/<name>.json`; returns it with the hash of its fingerprint.
pub fn prepare_dataset(spec: &DatasetSpec, resolution: usize, data_base: &Path, dir: &Path) -> Prepared {
    let prepared = run_guarded(|| spec.prepare(resolution, data_base))?;
    let fingerprint_hash = plan::short_hash(&prepared.fingerprint);
    let path = dir.join("datasets").join(format!("{}.json", spec.name));
    let json = serde_json::json!({
        "name": prepared.name,
        "classes": prepared.classes,
        "resolution": resolution,
        "fingerprint_hash": fingerprint_hash,
        "fingerprint": prepared.fingerprint,
    });
    let text = serde_json::to_vec_pretty(&json).map_err(|e| e.to_string())?;
    fsio::write_atomic(&path, &text).map_err(|e| format!("{e:#}"))?;
    Ok((prepared, fingerprint_hash))
}

fn log_record(record: &RunRecord) {
    match record.status {
        Status::Ok => {
            tracing::debug!(run = %record.run_id, dice = ?record.metrics.mean(&crate::metric_registry::DICE), seconds = record.wall_seconds, "run finished")
        }
        Status::Failed => tracing::warn!(run = %record.run_id, error = record.error.as_deref().unwrap_or(""), "run failed"),
    }
}
