//! `atso`: the command line of atso-bench.
//!
//! `sweep` runs an experiment file (in parallel with `--jobs`, a shard with `--shard`, or as a
//! Slurm array with `--emit slurm`), `status` lists where its runs stand, `report` renders tables
//! and plots from results folders, `check` and `compare` hold results to a reference or to
//! another commit, `prepare` writes the embedded phantom data, `quickstart` does it all on the
//! embedded data, and `bench` times the training step.

mod allocator;
mod bench;
mod cli;
mod commands;
mod cpu_use;
mod methods;
mod parallel;
mod slurm;
mod view;

use anyhow::{bail, Context, Result};
use atso_harness::config::Experiment;
use atso_harness::data::phantom::{self, PhantomSpec};
use atso_harness::runner::Shard;
use clap::Parser;
use cli::{Cli, Command};
use commands::check::{check, resolve_commit};
use commands::data::data;
use commands::report::report;
use commands::status::status;
use commands::sweep::{emit_job, sweep, sweep_worker};
use std::io::IsTerminal;
use std::path::Path;

/// The quickstart experiment, embedded so `atso quickstart` works from any directory.
const QUICKSTART: &str = include_str!("../experiments/quickstart.toml");

fn main() {
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    if let Err(error) = atso_harness::kernels::isa::check_setting() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
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
pub enum Outcome {
    AllOk,
    CheckFailed,
    SomeRunsFailed,
}

pub fn read_experiment(file: &Path) -> Result<(Experiment, String)> {
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
            status(&results, experiment.as_deref(), backend)?;
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
