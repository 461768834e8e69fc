//! `atso`: the command line of atso-bench.
//!
//! `sweep` runs an experiment file, `report` renders tables and plots from a results folder,
//! `prepare` writes the embedded phantom data, and `quickstart` does all of it on the embedded
//! data with experiments/quickstart.toml.

mod bench;
mod methods;

use anyhow::{Context, Result};
use atso_harness::config::Experiment;
use atso_harness::data::phantom::{self, PhantomSpec};
use atso_harness::runner::{self, SweepOptions};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

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
    },
    /// Write report.md and Dice-vs-ratio plots for a results folder.
    Report {
        /// A results folder, e.g. results/quickstart.
        results: PathBuf,
    },
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
    Bench {
        /// Backends to compare, the first is the reference (default: all compiled in).
        #[arg(long, value_delimiter = ',')]
        backends: Vec<String>,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 128)]
        resolution: usize,
        /// U-Net channels per level (default: SSL4MIS).
        #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
        channels: Vec<usize>,
        #[arg(long, default_value_t = 7)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// CPU thread counts for the flex backend, e.g. 1,2 (default: 1 and all cores).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
    },
}

#[derive(Args)]
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
    /// Folder that relative dataset paths are resolved from.
    #[arg(long, default_value = ".")]
    data_base: PathBuf,
}

impl RunArgs {
    fn options(&self) -> SweepOptions {
        SweepOptions {
            results_root: self.results.clone(),
            data_base: self.data_base.clone(),
            backend: self.backend.clone(),
            rerun: self.rerun,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(Outcome::AllOk) => {}
        Ok(Outcome::SomeRunsFailed) => std::process::exit(3),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Exit status: 0 all ok, 1 the command could not run, 3 it ran but some runs failed (they are
/// recorded with their errors).
enum Outcome {
    AllOk,
    SomeRunsFailed,
}

fn run(cli: Cli) -> Result<Outcome> {
    let mut outcome = Outcome::AllOk;
    match cli.command {
        Command::Sweep { file, run } => {
            let source = std::fs::read_to_string(&file).with_context(|| format!("{}: cannot read experiment file", file.display()))?;
            let experiment = Experiment::from_toml(&source).with_context(|| format!("{}: invalid experiment file", file.display()))?;
            if sweep(&experiment, &source, &run)?.failed > 0 {
                outcome = Outcome::SomeRunsFailed;
            }
        }
        Command::Report { results } => report(&results)?,
        Command::Prepare {
            out,
            cases,
            size,
            slices,
            seed,
        } => {
            let spec = PhantomSpec { cases, size, slices, seed };
            phantom::ensure(&out, &spec)?;
            println!("phantom CT ({cases} cases) in {}", out.display());
        }
        Command::Bench {
            backends,
            batch_size,
            resolution,
            channels,
            steps,
            warmup,
            threads,
        } => {
            let threads = if threads.is_empty() {
                let all = std::thread::available_parallelism().map_or(1, |n| n.get());
                if all > 1 {
                    vec![1, all]
                } else {
                    vec![1]
                }
            } else {
                threads
            };
            let backends = if backends.is_empty() {
                atso_harness::backend::available().into_iter().map(String::from).collect()
            } else {
                backends
            };
            let spec = bench::BenchSpec {
                backends,
                batch_size,
                resolution,
                channels,
                steps,
                warmup,
                threads,
            };
            let results = bench::run(&spec)?;
            print!("{}", bench::table(&spec, &results));
        }
        Command::Quickstart { run } => {
            let path = Path::new("experiments/quickstart.toml");
            let source = if path.exists() {
                std::fs::read_to_string(path)?
            } else {
                QUICKSTART.to_string()
            };
            let experiment = Experiment::from_toml(&source).context("experiments/quickstart.toml")?;
            let summary = sweep(&experiment, &source, &run)?;
            report(&summary.results_dir)?;
            if summary.failed > 0 {
                outcome = Outcome::SomeRunsFailed;
            }
        }
    }
    Ok(outcome)
}

fn sweep(experiment: &Experiment, source: &str, args: &RunArgs) -> Result<runner::SweepSummary> {
    let summary = runner::sweep(experiment, source, &args.options(), &methods::build)?;
    println!(
        "{}: {} ok, {} failed, {} skipped (already recorded); tables in {}",
        experiment.name,
        summary.ok,
        summary.failed,
        summary.skipped,
        summary.results_dir.display()
    );
    Ok(summary)
}

fn report(results: &Path) -> Result<()> {
    // Tables are derived from the per-run records: rebuilding them first keeps a results folder
    // written by an older version readable with this one.
    if atso_harness::records::records_dir(results).is_dir() {
        atso_harness::records::rebuild_tables(results)?;
    }
    let files = atso_reports::render(results)?;
    println!("report: {}", files.markdown.display());
    for plot in files.plots {
        println!("plot:   {}", plot.display());
    }
    Ok(())
}
