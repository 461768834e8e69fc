//! atso-reports: from a results directory's tables to what a paper or a CI log shows.
//!
//! `aggregate` reads `runs.parquet` and groups runs by dataset x method x labeled ratio; `table`
//! writes the Markdown comparison; `plot` draws Dice against labeled ratio (PNG and SVG).

pub mod aggregate;
pub mod plot;
pub mod stages;
pub mod table;

use anyhow::{Context, Result};
use atso_harness::fsio::write_atomic;
use polars::prelude::{DataFrame, ParquetReader, SerReader};
use std::path::{Path, PathBuf};

/// Reads a parquet table of a results directory, naming the file in any error.
pub(crate) fn read_table(path: &Path) -> Result<DataFrame> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: no such table (run `atso sweep` first)", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not a readable parquet file: {e}", path.display()))
}

/// Files written by [`render`].
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// Writes `report.md`, one Dice plot per dataset (`dice_vs_ratio_<dataset>.{png,svg}`) and, for
/// experiments with staged methods, one lazy-learning plot per dataset into `results_dir`.
pub fn render(results_dir: &Path) -> Result<ReportFiles> {
    let runs = aggregate::read_runs(results_dir)?;
    let groups = aggregate::group(&runs);
    let markdown = results_dir.join("report.md");
    let stage_means = stages::read(results_dir)?;
    write_atomic(
        &markdown,
        (table::markdown(&runs, &groups) + &table::stages_markdown(&stage_means)).as_bytes(),
    )?;
    let mut plots = Vec::new();
    for dataset in aggregate::datasets(&groups) {
        let selected: Vec<_> = groups.iter().filter(|g| g.dataset == dataset).cloned().collect();
        // A dataset whose runs all failed has nothing to draw; its failures are listed in the report.
        if selected.iter().any(|g| g.mean().is_some()) {
            plots.extend(plot::dice_vs_ratio(results_dir, &dataset, &selected)?);
        }
        let staged: Vec<_> = stage_means.iter().filter(|m| m.dataset == dataset).cloned().collect();
        if !staged.is_empty() {
            plots.extend(plot::lazy_learning(results_dir, &dataset, &staged)?);
        }
    }
    Ok(ReportFiles { markdown, plots })
}
