//! The command line: every verb, its arguments and their documentation (clap), and how a
//! sweep's arguments are forwarded to its workers. The verbs' code is in `commands/`.

use crate::bench;
use atso_harness::backend::Backend;
use atso_harness::data::phantom::PhantomSpec;
use atso_harness::runner::{Shard, SweepOptions};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "atso",
    version,
    about = "Benchmark harness for ATSO and semi-supervised segmentation baselines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        backend: Backend,
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
pub enum DataCommand {
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
pub struct RunArgs {
    /// Root folder for results (a subfolder per experiment).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Compute backend: flex (CPU), or cuda when built with --features cuda.
    #[arg(long, default_value = "flex")]
    pub backend: Backend,
    /// Run again runs that already have an ok record with the same configuration.
    #[arg(long)]
    pub rerun: bool,
    /// Run again runs whose ok records were all made at another commit.
    #[arg(long)]
    pub rerun_stale: bool,
    /// Folder that relative dataset paths are resolved from.
    #[arg(long, default_value = ".")]
    pub data_base: PathBuf,
    /// Runs in parallel (separate processes); default: chosen from cores and model size.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// CPU threads per run; default: cores / jobs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run even when a run's estimated memory exceeds the memory available.
    #[arg(long)]
    pub ignore_memory_estimate: bool,
}

#[derive(Args, Clone, Default)]
pub struct SlurmArgs {
    /// Slurm array tasks (shards); default: one per run.
    #[arg(long)]
    pub tasks: Option<usize>,
    #[arg(long)]
    pub partition: Option<String>,
    #[arg(long)]
    pub gpus_per_task: Option<usize>,
    #[arg(long, default_value_t = 2)]
    pub cpus_per_task: usize,
    /// Time limit per task, e.g. 2-00:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// Submit the script with sbatch and print the job id.
    #[arg(long)]
    pub submit: bool,
}

impl RunArgs {
    pub fn options(&self, shard: Option<Shard>, threads: usize) -> SweepOptions {
        let mut options = SweepOptions::new(self.results.clone(), self.data_base.clone(), self.backend);
        options.rerun = self.rerun;
        options.rerun_stale = self.rerun_stale;
        options.shard = shard;
        options.threads = threads;
        options
    }

    /// The arguments a worker or an array task repeats.
    pub fn forwarded(&self, file: &Path) -> Vec<String> {
        let mut args = vec![
            file.display().to_string(),
            "--results".into(),
            self.results.display().to_string(),
            "--backend".into(),
            self.backend.to_string(),
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
