//! `atso`: the command line of atso-bench.
//!
//! `sweep` runs an experiment file (in parallel with `--jobs`, a shard with `--shard`, or as a
//! Slurm array with `--emit slurm`), `status` lists where its runs stand, `report` renders tables
//! and plots from results folders, `check` and `compare` hold results to a reference or to
//! another commit, `prepare` writes the embedded phantom data, `quickstart` does it all on the
//! embedded data, and `bench` times the training step.

mod allocator;
mod bench;
mod cpu_use;
mod methods;
mod parallel;
mod slurm;
mod view;

use anyhow::{bail, Context, Result};
use atso_harness::config::Experiment;
use atso_harness::data::phantom::{self, PhantomSpec};
use atso_harness::progress::{JsonLines, SharedSink};
use atso_harness::runner::{self, Shard, SweepOptions};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The quickstart experiment, embedded so `atso quickstart` works from any directory.
const QUICKSTART: &str = include_str!("../experiments/quickstart.toml");

#[derive(Parser)]
#[command(
    name = "atso",
    version,
    about = "Benchmark harness for ATSO and semi-supervised segmentation baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every run of an experiment file and record the results.
    Sweep {
        /// The experiment TOML file.
        file: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        /// Run only the i-th of n disjoint parts of the runs, e.g. 2/8.
        #[arg(long)]
        shard: Option<String>,
        /// Instead of running, write a job script for a cluster scheduler (only "slurm").
        #[arg(long)]
        emit: Option<String>,
        #[command(flatten)]
        slurm: SlurmArgs,
        /// Internal: run as a worker of a parallel sweep (events as JSON lines on stdout).
        #[arg(long, hide = true)]
        worker: bool,
        /// Internal: when the parent sweep started (RFC 3339).
        #[arg(long, hide = true)]
        sweep_started: Option<String>,
    },
    /// List every run of a results folder's experiment: done, stale, failed, running, missing.
    Status {
        /// A results folder, e.g. results/quickstart.
        results: PathBuf,
        /// The experiment file (default: the newest copy in the folder's configs/).
        #[arg(long)]
        experiment: Option<PathBuf>,
        #[arg(long, default_value = "flex")]
        backend: String,
    },
    /// Tables (Markdown, LaTeX, CSV, HTML) and plots from one or more results folders.
    Report {
        /// Results folders, e.g. results/quickstart; several are merged.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Output folder (default: the results folder, when there is one).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Average seeds recorded at different commits (marked in the tables) instead of refusing.
        #[arg(long)]
        allow_mixed: bool,
    },
    /// Compare results with a reference file of expected values and tolerances; exit 2 when a
    /// value is outside its tolerance or missing.
    Check {
        /// Results folders, e.g. results/ci.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// The reference file, e.g. experiments/references/ci.toml.
        #[arg(long)]
        reference: PathBuf,
        /// Rewrite the reference's expected values from these results (tolerances are kept).
        #[arg(long)]
        update: bool,
        /// With --update on an empty reference: the metrics to add (default dice_mean).
        #[arg(long, value_delimiter = ',', default_value = "dice_mean")]
        metrics: Vec<String>,
        /// With --update on an empty reference: the absolute tolerance of new entries.
        #[arg(long, default_value_t = 0.02)]
        tolerance: f64,
        #[arg(long)]
        allow_mixed: bool,
    },
    /// Compare the rows recorded at two commits in the same results folders ("did my change move
    /// the numbers"); exit 2 when a cell moved beyond the reference tolerance.
    Compare {
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// The base commit (any git revision: a hash, a branch, HEAD~1).
        #[arg(long)]
        base: String,
        /// The head commit (default: HEAD).
        #[arg(long, default_value = "HEAD")]
        head: String,
        /// Tolerances per cell, from a reference file.
        #[arg(long)]
        reference: Option<PathBuf>,
    },
    /// Datasets: list the formats and installed data, install real data by package name,
    /// inspect files and folders, prepare an experiment's datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Generate the synthetic abdominal CT phantom in MSD layout.
    Prepare {
        /// Output folder.
        #[arg(long, default_value = "data/phantom-ct")]
        out: PathBuf,
        #[arg(long, default_value_t = PhantomSpec::default().cases)]
        cases: usize,
        #[arg(long, default_value_t = PhantomSpec::default().size)]
        size: usize,
        #[arg(long, default_value_t = PhantomSpec::default().slices)]
        slices: usize,
        #[arg(long, default_value_t = PhantomSpec::default().seed)]
        seed: u64,
    },
    /// Prepare the embedded data, run experiments/quickstart.toml and render its report.
    Quickstart {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Time a U-Net training step and inference batch on each backend of this build.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Every known format, and the datasets installed or generated under a data folder.
    List {
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
    /// Install real data that comes in system packages (colin27: Debian mricron-data; mni152:
    /// the nilearn wheel on PyPI) into <into>/<name>/.
    Install {
        /// colin27 or mni152.
        name: String,
        #[arg(long, default_value = "data")]
        into: PathBuf,
    },
    /// Shape, spacing, intensity range and classes of a NIfTI/DICOM/PNG file or dataset folder.
    Inspect { path: PathBuf },
    /// Prepare (generate, read, fingerprint) every dataset of an experiment and write the
    /// fingerprints to <results>/<experiment>/datasets/, before anything trains.
    Prepare {
        file: PathBuf,
        #[arg(long, default_value = "results")]
        results: PathBuf,
        #[arg(long, default_value = ".")]
        data_base: PathBuf,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Root folder for results (a subfolder per experiment).
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Compute backend: flex (CPU), or cuda when built with --features cuda.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Run again runs that already have an ok record with the same configuration.
    #[arg(long)]
    rerun: bool,
    /// Run again runs whose ok records were all made at another commit.
    #[arg(long)]
    rerun_stale: bool,
    /// Folder that relative dataset paths are resolved from.
    #[arg(long, default_value = ".")]
    data_base: PathBuf,
    /// Runs in parallel (separate processes); default: chosen from cores and model size.
    #[arg(long)]
    jobs: Option<usize>,
    /// CPU threads per run; default: cores / jobs.
    #[arg(long)]
    threads: Option<usize>,
    /// Run even when a run's estimated memory exceeds the memory available.
    #[arg(long)]
    ignore_memory_estimate: bool,
}

#[derive(Args, Clone, Default)]
struct SlurmArgs {
    /// Slurm array tasks (shards); default: one per run.
    #[arg(long)]
    tasks: Option<usize>,
    #[arg(long)]
    partition: Option<String>,
    #[arg(long)]
    gpus_per_task: Option<usize>,
    #[arg(long, default_value_t = 2)]
    cpus_per_task: usize,
    /// Time limit per task, e.g. 2-00:00:00.
    #[arg(long)]
    time: Option<String>,
    /// Submit the script with sbatch and print the job id.
    #[arg(long)]
    submit: bool,
}

fn main() {
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    // A worker's stderr is relayed by its parent: warnings only, no colour codes.
    let worker = matches!(cli.command, Command::Sweep { worker: true, .. });
    let terminal = std::io::stderr().is_terminal() && !worker;
    let default_filter = if worker { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()))
        .with_writer(view::LogWriter::default)
        .with_ansi(terminal)
        .init();
    match run(cli) {
        Ok(Outcome::AllOk) => {}
        Ok(Outcome::SomeRunsFailed) => std::process::exit(3),
        Ok(Outcome::CheckFailed) => std::process::exit(2),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Exit status: 0 all ok, 1 the command could not run, 2 a check or comparison failed, 3 a
/// sweep ran but some runs failed (they are recorded with their errors).
enum Outcome {
    AllOk,
    CheckFailed,
    SomeRunsFailed,
}

fn read_experiment(file: &Path) -> Result<(Experiment, String)> {
    let source = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read experiment file", file.display()))?;
    let experiment = Experiment::from_toml(&source).with_context(|| format!("{}: invalid experiment file", file.display()))?;
    Ok((experiment, source))
}

fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Sweep {
            file,
            run,
            shard,
            emit,
            slurm,
            worker,
            sweep_started,
        } => {
            let (experiment, source) = read_experiment(&file)?;
            let shard = shard.as_deref().map(Shard::parse).transpose()?;
            if let Some(target) = emit {
                emit_job(&target, &file, &experiment, &run, &slurm)?;
                return Ok(Outcome::AllOk);
            }
            let started = sweep_started
                .map(|s| chrono::DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&chrono::Utc)))
                .transpose()
                .context("--sweep-started")?;
            let failed = if worker {
                sweep_worker(&experiment, &source, &run, shard, started)?
            } else {
                sweep(&experiment, &source, &file, &run, shard)?.1
            };
            Ok(if failed > 0 { Outcome::SomeRunsFailed } else { Outcome::AllOk })
        }
        Command::Status {
            results,
            experiment,
            backend,
        } => {
            status(&results, experiment.as_deref(), &backend)?;
            Ok(Outcome::AllOk)
        }
        Command::Report { results, out, allow_mixed } => {
            let out = match (out, results.as_slice()) {
                (Some(out), _) => out,
                (None, [one]) => one.clone(),
                (None, _) => bail!("several results folders: say where the report goes with --out DIR"),
            };
            report(&results, &out, allow_mixed)?;
            Ok(Outcome::AllOk)
        }
        Command::Check {
            results,
            reference,
            update,
            metrics,
            tolerance,
            allow_mixed,
        } => check(&results, &reference, update, &metrics, tolerance, allow_mixed),
        Command::Compare {
            results,
            base,
            head,
            reference,
        } => {
            let (base, head) = (resolve_commit(&base)?, resolve_commit(&head)?);
            let reference = reference.as_deref().map(atso_reports::check::Reference::read).transpose()?;
            let outcome = atso_reports::check::compare(&results, &base, &head, reference.as_ref())?;
            print!("{}", outcome.table());
            if outcome.passed() {
                Ok(Outcome::AllOk)
            } else {
                println!("some cells moved beyond their tolerance");
                Ok(Outcome::CheckFailed)
            }
        }
        Command::Prepare {
            out,
            cases,
            size,
            slices,
            seed,
        } => {
            let spec = PhantomSpec {
                cases,
                size,
                slices,
                seed,
                ..PhantomSpec::default()
            };
            phantom::ensure(&out, &spec)?;
            println!("phantom CT ({cases} cases) in {}", out.display());
            Ok(Outcome::AllOk)
        }
        Command::Data(command) => {
            data(command)?;
            Ok(Outcome::AllOk)
        }
        Command::Bench(args) => {
            bench::command(args)?;
            Ok(Outcome::AllOk)
        }
        Command::Quickstart { run } => {
            let path = Path::new("experiments/quickstart.toml");
            let source = if path.exists() {
                std::fs::read_to_string(path)?
            } else {
                QUICKSTART.to_string()
            };
            let experiment = Experiment::from_toml(&source).context("experiments/quickstart.toml")?;
            let file = if path.exists() {
                path.to_path_buf()
            } else {
                // Workers read the experiment from a file: write the embedded one out.
                let embedded = run.results.join("quickstart.toml");
                atso_harness::fsio::write_atomic(&embedded, source.as_bytes())?;
                embedded
            };
            let (dir, failed) = sweep(&experiment, &source, &file, &run, None)?;
            report(std::slice::from_ref(&dir), &dir, false)?;
            Ok(if failed > 0 { Outcome::SomeRunsFailed } else { Outcome::AllOk })
        }
    }
}

impl RunArgs {
    fn options(&self, shard: Option<Shard>, threads: usize) -> SweepOptions {
        let mut options = SweepOptions::new(self.results.clone(), self.data_base.clone(), &self.backend);
        options.rerun = self.rerun;
        options.rerun_stale = self.rerun_stale;
        options.shard = shard;
        options.threads = threads;
        options
    }

    /// The arguments a worker or an array task repeats.
    fn forwarded(&self, file: &Path) -> Vec<String> {
        let mut args = vec![
            file.display().to_string(),
            "--results".into(),
            self.results.display().to_string(),
            "--backend".into(),
            self.backend.clone(),
            "--data-base".into(),
            self.data_base.display().to_string(),
        ];
        if self.rerun {
            args.push("--rerun".into());
        }
        if self.rerun_stale {
            args.push("--rerun-stale".into());
        }
        if self.ignore_memory_estimate {
            args.push("--ignore-memory-estimate".into());
        }
        args
    }
}

/// Sets the size of this process's CPU thread pool (once, before any kernel runs).
fn set_threads(threads: usize) {
    if rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().is_err() {
        tracing::debug!("the thread pool was already set up");
    }
}

/// Runs a sweep in this process or across worker processes; returns the results folder and how
/// many runs failed.
fn sweep(experiment: &Experiment, source: &str, file: &Path, args: &RunArgs, shard: Option<Shard>) -> Result<(PathBuf, usize)> {
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
            let (mut plan, why) = parallel::choose(experiment, &args.backend, cores, parallel::available_memory());
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
            .map_or(0, |rows| rows.iter().filter(|r| r.state == "stale").count());
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
fn reuse_notes(dir: &std::path::Path, unreadable: usize, stale: usize) {
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
fn sweep_worker(
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

fn data(command: DataCommand) -> Result<()> {
    use atso_harness::data::dataset::DataFormat;
    match command {
        DataCommand::List { data } => {
            println!("formats (`format = ...` in [[datasets]]):");
            for format in DataFormat::ALL {
                println!("  {:16} {}", format.name(), format.describe());
            }
            println!("\ninstallable by package name (`atso data install <name>`):");
            for (name, what) in atso_harness::data::install::INSTALLABLE {
                let here = data.join(name);
                let state = if atso_harness::data::inspect::detect(&here).is_some() {
                    "installed"
                } else {
                    "not installed"
                };
                println!("  {name:16} {state:13} {what}");
            }
            println!("\nin {}:", data.display());
            let mut found = false;
            if let Ok(entries) = std::fs::read_dir(&data) {
                let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
                paths.sort();
                for path in paths {
                    let generated = ["phantom.json", "driving.json"].iter().find(|m| path.join(m).is_file());
                    let kind = match (generated, atso_harness::data::inspect::detect(&path)) {
                        (Some(&"phantom.json"), _) => "phantom (generated)".to_string(),
                        (Some(_), _) => "driving-phantom (generated)".to_string(),
                        (None, Some(format)) => format.name(),
                        (None, None) => continue,
                    };
                    println!("  {:40} {kind}", path.display());
                    found = true;
                }
            }
            if !found {
                println!("  (no datasets)");
            }
        }
        DataCommand::Install { name, into } => {
            let folder = atso_harness::data::install::install(&name, &into)?;
            println!("{name} installed in {}", folder.display());
        }
        DataCommand::Inspect { path } => print!("{}", atso_harness::data::inspect::inspect(&path)?),
        DataCommand::Prepare { file, results, data_base } => {
            let (experiment, _) = read_experiment(&file)?;
            let dir = results.join(&experiment.name);
            for spec in &experiment.datasets {
                let (prepared, hash) =
                    runner::prepare_dataset(spec, experiment.budget.resolution, &data_base, &dir).map_err(anyhow::Error::msg)?;
                println!(
                    "{}: {} cases, classes {:?}, fingerprint {hash} -> {}",
                    spec.name,
                    prepared.cases.len(),
                    prepared.classes,
                    dir.join("datasets").join(format!("{}.json", spec.name)).display()
                );
            }
        }
    }
    Ok(())
}

fn emit_job(target: &str, file: &Path, experiment: &Experiment, args: &RunArgs, slurm: &SlurmArgs) -> Result<()> {
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

fn status(results: &Path, experiment: Option<&Path>, backend: &str) -> Result<()> {
    let file = match experiment {
        Some(f) => f.to_path_buf(),
        None => newest_config(results)?,
    };
    let (experiment, _) = read_experiment(&file)?;
    let root = results.parent().unwrap_or(Path::new(".")).to_path_buf();
    if results.file_name().and_then(|n| n.to_str()) != Some(experiment.name.as_str()) {
        bail!(
            "{} holds results of experiment '{}'? Its folder name differs from the file's name",
            results.display(),
            experiment.name
        );
    }
    let options = SweepOptions::new(root, PathBuf::from("."), backend);
    let rows = runner::status(&experiment, &options)?;
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for row in &rows {
        *counts.entry(row.state.as_str()).or_default() += 1;
        println!(
            "{:8} {}{}",
            row.state,
            row.run,
            if row.detail.is_empty() {
                String::new()
            } else {
                format!("  ({})", row.detail)
            }
        );
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!("{}: {} runs: {}", experiment.name, rows.len(), summary.join(", "));
    Ok(())
}

/// The most recently written experiment copy in `<results>/configs/`.
fn newest_config(results: &Path) -> Result<PathBuf> {
    let dir = results.join("configs");
    let newest = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: no experiment copies (pass --experiment FILE)", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml") && atso_harness::fsio::is_regular_file(&e.path()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    newest
        .map(|e| e.path())
        .with_context(|| format!("{}: no experiment copies (pass --experiment FILE)", dir.display()))
}

fn report(folders: &[PathBuf], out: &Path, allow_mixed: bool) -> Result<()> {
    // Tables are derived from the per-run records: rebuilding them first keeps a results folder
    // written by an older version readable with this one.
    let mut unreadable = 0;
    for folder in folders {
        if atso_harness::records::records_dir(folder).is_dir() {
            let _lock = atso_harness::runner::claims::FolderLock::acquire(folder)?;
            let loaded = atso_harness::records::rebuild_tables(folder)?;
            for skipped in &loaded.skipped {
                eprintln!("warning: skipped {}: {}", skipped.path.display(), skipped.reason);
            }
            unreadable += loaded.skipped.len();
        }
    }
    let options = atso_reports::ReportOptions {
        allow_mixed,
        unreadable_records: unreadable,
    };
    let files = atso_reports::render(folders, out, &options)?;
    println!("report: {}", files.markdown.display());
    println!("        {}", files.html.display());
    println!("        {}", files.csv.display());
    println!(
        "        {} LaTeX tables in {}",
        files.latex.len().saturating_sub(1),
        out.join("latex").display()
    );
    for plot in files.plots {
        println!("plot:   {}", plot.display());
    }
    Ok(())
}

fn check(
    folders: &[PathBuf],
    reference_path: &Path,
    update: bool,
    metrics: &[String],
    tolerance: f64,
    allow_mixed: bool,
) -> Result<Outcome> {
    use atso_reports::check::{self, Reference};
    for folder in folders {
        if atso_harness::records::records_dir(folder).is_dir() {
            let _lock = atso_harness::runner::claims::FolderLock::acquire(folder)?;
            atso_harness::records::rebuild_tables(folder)?;
        }
    }
    if update {
        let reference = if reference_path.exists() {
            Reference::read(reference_path)?
        } else {
            Reference::default()
        };
        let updated = check::update(folders, &reference, metrics, tolerance, allow_mixed)?;
        check::write_reference(reference_path, &updated)?;
        println!(
            "{}: {} expected values written from commit(s) {}",
            reference_path.display(),
            updated.values.len(),
            updated.commit
        );
        return Ok(Outcome::AllOk);
    }
    let reference = Reference::read(reference_path)?;
    let outcome = check::check(folders, &reference, allow_mixed)?;
    print!("{}", outcome.table());
    let failed = outcome.lines.iter().filter(|l| !l.pass).count();
    if failed == 0 {
        println!("all {} checks pass ({})", outcome.lines.len(), reference_path.display());
        Ok(Outcome::AllOk)
    } else {
        println!("{failed} of {} checks FAILED ({})", outcome.lines.len(), reference_path.display());
        Ok(Outcome::CheckFailed)
    }
}

/// The full commit id of a git revision in the repository around the working directory.
fn resolve_commit(revision: &str) -> Result<String> {
    let repo = git2::Repository::discover(".").context("compare needs a git repository to resolve revisions")?;
    let object = repo
        .revparse_single(revision)
        .with_context(|| format!("'{revision}' is not a revision of {}", repo.path().display()))?;
    let commit = object
        .peel_to_commit()
        .with_context(|| format!("'{revision}' does not name a commit"))?;
    Ok(commit.id().to_string())
}
