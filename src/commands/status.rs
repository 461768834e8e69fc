//! `atso status`: where each run of an experiment stands in a results folder.

use crate::read_experiment;
use anyhow::{bail, Context, Result};
use atso_harness::runner::{self, SweepOptions};
use std::path::{Path, PathBuf};

pub fn status(results: &Path, experiment: Option<&Path>, backend: atso_harness::backend::Backend) -> Result<()> {
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
    let mut counts: std::collections::BTreeMap<runner::RunState, usize> = Default::default();
    for row in &rows {
        *counts.entry(row.state).or_default() += 1;
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
pub fn newest_config(results: &Path) -> Result<PathBuf> {
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
