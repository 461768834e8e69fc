//! `atso sweep` (and `quickstart`'s sweep): runs an experiment serially or through parallel
//! workers, as a worker, or writes it out as a Slurm array job.

use crate::cli::{RunArgs, SlurmArgs};
use crate::{methods, parallel, slurm, view};
use anyhow::{bail, Result};
use atso_harness::config::Experiment;
use atso_harness::progress::{JsonLines, SharedSink};
use atso_harness::runner::{self, Shard};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Sets the size of this process's CPU thread pool (once, before any kernel runs).
pub fn set_threads(threads: usize) {
    if rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().is_err() {
        tracing::debug!("the thread pool was already set up");
    }
}

/// Runs a sweep in this process or across worker processes; returns the results folder and how
/// many runs failed.
pub fn sweep(experiment: &Experiment, source: &str, file: &Path, args: &RunArgs, shard: Option<Shard>) -> Result<(PathBuf, usize)> {
    // One error before anything runs, not one failed record per run.
    if !args.backend.compiled() {
        let available: Vec<String> = atso_harness::backend::available().iter().map(ToString::to_string).collect();
        bail!(
            "--backend {}: not compiled into this build (available: {}); build with --features {}",
            args.backend,
            available.join(", "),
            args.backend
        );
    }
    parallel::check_memory(experiment, parallel::available_memory(), args.ignore_memory_estimate)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (plan, why) = match args.jobs {
        Some(jobs) => {
            let jobs = jobs.max(1);
            let threads = args.threads.unwrap_or((cores / jobs).max(1));
            (
                parallel::Plan { jobs, threads },
                format!("{jobs} run(s) in parallel, {threads} thread(s) each (--jobs)"),
            )
        }
        None => {
            let (mut plan, why) = parallel::choose(experiment, args.backend, cores, parallel::available_memory());
            if let Some(t) = args.threads {
                plan.threads = t;
            }
            (plan, why)
        }
    };
    eprintln!("{}: {why}", experiment.name);
    let dir = args.results.join(&experiment.name);
    let terminal = std::io::stderr().is_terminal();
    let mut view = view::View::new(terminal);
    let (ok, failed, recorded) = if plan.jobs == 1 {
        set_threads(plan.threads);
        let shared: Arc<Mutex<view::View>> = Arc::new(Mutex::new(view));
        let sink: SharedSink = shared.clone();
        let summary = runner::sweep(experiment, source, &args.options(shard, plan.threads), &methods::build, sink)?;
        if let Ok(mut view) = shared.lock() {
            view.finish();
        }
        reuse_notes(&dir, summary.unreadable, summary.stale);
        if summary.claimed > 0 {
            eprintln!("note: {} run(s) are being run by another process", summary.claimed);
        }
        (summary.ok, summary.failed, summary.recorded + summary.stale)
    } else {
        // Data errors stop the sweep here, once, before any worker starts.
        runner::prepare_all(experiment, &args.options(shard, plan.threads))?;
        let mut worker_args = vec!["sweep".to_string()];
        worker_args.extend(args.forwarded(file));
        worker_args.extend(["--worker".into(), "--sweep-started".into(), chrono::Utc::now().to_rfc3339()]);
        if let Some(s) = shard {
            worker_args.extend(["--shard".into(), format!("{}/{}", s.index, s.count)]);
        }
        let counts = parallel::run_workers(plan, &worker_args, &mut view)?;
        view.finish();
        // The workers' own summaries stay in the workers; the parent counts what a reader must
        // hear about once: skipped record files and runs reused from another commit.
        let unreadable = atso_harness::records::load(&dir).map_or(0, |l| l.skipped.len());
        let stale = runner::status(experiment, &args.options(shard, plan.threads))
            .map_or(0, |rows| rows.iter().filter(|r| r.state == runner::RunState::Stale).count());
        reuse_notes(&dir, unreadable, stale);
        counts
    };
    println!(
        "{}: {ok} ok, {failed} failed, {recorded} already recorded; tables in {}",
        experiment.name,
        dir.display()
    );
    Ok((dir, failed))
}

/// Warnings a sweep owes its reader about what it did not run: unreadable record files (skipped)
/// and runs recorded at another commit (reused).
pub fn reuse_notes(dir: &std::path::Path, unreadable: usize, stale: usize) {
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} unreadable record file(s) in {} were skipped",
            dir.join("records").display()
        );
    }
    if stale > 0 {
        eprintln!("note: {stale} run(s) were recorded at another commit and reused; --rerun-stale runs them again");
    }
}

/// A worker process of a parallel sweep: events as JSON lines on stdout.
pub fn sweep_worker(
    experiment: &Experiment,
    source: &str,
    args: &RunArgs,
    shard: Option<Shard>,
    started: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<usize> {
    let threads = args.threads.unwrap_or(1);
    set_threads(threads);
    let mut options = args.options(shard, threads);
    if let Some(started) = started {
        options.sweep_started = started;
    }
    let sink: SharedSink = Arc::new(Mutex::new(JsonLines(std::io::stdout())));
    let summary = runner::sweep(experiment, source, &options, &methods::build, sink)?;
    Ok(summary.failed)
}

pub fn emit_job(target: &str, file: &Path, experiment: &Experiment, args: &RunArgs, slurm: &SlurmArgs) -> Result<()> {
    if target != "slurm" {
        bail!("--emit {target}: only \"slurm\" is supported");
    }
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut absolute_args = args.clone();
    absolute_args.results = absolute(&args.results);
    absolute_args.data_base = absolute(&args.data_base);
    let runs = runner::expand(experiment).len();
    let spec = slurm::SlurmSpec {
        tasks: slurm.tasks.unwrap_or(runs).clamp(1, runs.max(1)),
        partition: slurm.partition.clone(),
        gpus_per_task: slurm.gpus_per_task,
        cpus_per_task: slurm.cpus_per_task,
        time: slurm.time.clone(),
    };
    let dir = absolute_args.results.join(&experiment.name);
    let job = format!("atso-{}", experiment.name);
    let text = slurm::script(
        &spec,
        &job,
        &std::env::current_exe()?,
        &absolute(Path::new(".")),
        &absolute_args.forwarded(&absolute(file)),
        &dir.join("slurm").join("logs"),
    );
    let path = slurm::write(&dir, &job, &text)?;
    println!("slurm script ({} array tasks over {runs} runs): {}", spec.tasks, path.display());
    if slurm.submit {
        let id = slurm::submit(&path)?;
        println!("submitted job {id}");
    }
    Ok(())
}
