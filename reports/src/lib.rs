//! atso-reports: from a results directory's tables to what a paper or a CI log shows.
//!
//! `aggregate` reads `runs.parquet` and groups runs by dataset x method x labeled ratio; `table`
//! writes the Markdown comparison; `plot` draws Dice against labeled ratio (PNG and SVG).

pub mod aggregate;
pub mod plot;
pub mod table;

use anyhow::Result;
use std::path::{Path, PathBuf};

/// Files written by [`render`].
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// Writes `report.md` and one plot per dataset (`dice_vs_ratio_<dataset>.{png,svg}`) into
/// `results_dir`.
pub fn render(results_dir: &Path) -> Result<ReportFiles> {
    let runs = aggregate::read_runs(results_dir)?;
    let groups = aggregate::group(&runs);
    let markdown = results_dir.join("report.md");
    std::fs::write(&markdown, table::markdown(&runs, &groups))?;
    let mut plots = Vec::new();
    for dataset in aggregate::datasets(&groups) {
        let selected: Vec<_> = groups.iter().filter(|g| g.dataset == dataset).cloned().collect();
        plots.extend(plot::dice_vs_ratio(results_dir, &dataset, &selected)?);
    }
    Ok(ReportFiles { markdown, plots })
}
