//! Reads the runs table and aggregates Dice over seeds per dataset x method x labeled ratio.

use anyhow::{Context, Result};
use polars::prelude::*;
use std::path::Path;

/// The columns of a `runs.parquet` row that reports use.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub dataset: String,
    pub method: String,
    pub labeled_ratio: f64,
    pub seed: u64,
    pub ok: bool,
    pub error: Option<String>,
    pub dice_mean: Option<f64>,
    /// Test Dice per foreground class (`dice_<class>` columns), by class name.
    pub class_dice: Vec<(String, Option<f64>)>,
    pub git_commit: String,
}

impl RunRow {
    /// Test Dice of `class`, if the run's dataset has it.
    pub fn class_dice(&self, class: &str) -> Option<f64> {
        self.class_dice.iter().find(|(name, _)| name == class).and_then(|(_, value)| *value)
    }
}

/// Mean and spread of one dataset x method x ratio cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub dataset: String,
    pub method: String,
    pub labeled_ratio: f64,
    /// Dice of each successful seed.
    pub values: Vec<f64>,
    pub failed: usize,
}

impl Group {
    pub fn mean(&self) -> Option<f64> {
        (!self.values.is_empty()).then(|| self.values.iter().sum::<f64>() / self.values.len() as f64)
    }

    /// Sample standard deviation (n - 1); 0 for a single seed.
    pub fn std(&self) -> Option<f64> {
        let mean = self.mean()?;
        let n = self.values.len();
        if n < 2 {
            return Some(0.0);
        }
        Some((self.values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt())
    }
}

/// Reads `runs.parquet` of a results directory.
pub fn read_runs(results_dir: &Path) -> Result<Vec<RunRow>> {
    let path = results_dir.join("runs.parquet");
    let frame = crate::read_table(&path)?;
    rows(&frame).with_context(|| format!("{}: unexpected columns", path.display()))
}

fn rows(frame: &DataFrame) -> Result<Vec<RunRow>> {
    let text =
        |name: &str| -> Result<Vec<Option<String>>> { Ok(frame.column(name)?.str()?.iter().map(|v| v.map(str::to_string)).collect()) };
    let run_id = text("run_id")?;
    let dataset = text("dataset")?;
    let method = text("method")?;
    let status = text("status")?;
    let error = text("error")?;
    let commit = text("git_commit")?;
    let ratio: Vec<Option<f64>> = frame.column("labeled_ratio")?.f64()?.iter().collect();
    let seed: Vec<Option<u64>> = frame.column("seed")?.u64()?.iter().collect();
    let dice: Vec<Option<f64>> = frame.column("dice_mean")?.f64()?.iter().collect();
    let mut class_columns: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for name in frame.get_column_names() {
        if let Some(class) = name.strip_prefix("dice_").filter(|c| *c != "mean") {
            class_columns.push((class.to_string(), frame.column(name)?.f64()?.iter().collect()));
        }
    }
    Ok((0..frame.height())
        .map(|i| RunRow {
            run_id: run_id[i].clone().unwrap_or_default(),
            dataset: dataset[i].clone().unwrap_or_default(),
            method: method[i].clone().unwrap_or_default(),
            labeled_ratio: ratio[i].unwrap_or(f64::NAN),
            seed: seed[i].unwrap_or(0),
            ok: status[i].as_deref() == Some("ok"),
            error: error[i].clone(),
            dice_mean: dice[i],
            class_dice: class_columns.iter().map(|(class, values)| (class.clone(), values[i])).collect(),
            git_commit: commit[i].clone().unwrap_or_default(),
        })
        .collect())
}

/// Groups rows by dataset x method x ratio on mean test Dice (see [`group_by`]).
pub fn group(rows: &[RunRow]) -> Vec<Group> {
    group_by(rows, &|r| r.dice_mean)
}

/// Class names with a Dice column that some row fills, in first-appearance order.
pub fn class_names(rows: &[RunRow]) -> Vec<String> {
    unique(
        rows.iter()
            .flat_map(|r| r.class_dice.iter().filter(|(_, v)| v.is_some()).map(|(c, _)| c.clone())),
    )
}

/// Groups rows by dataset x method x ratio on `metric`, keeping the order in which methods and
/// datasets first appear (the experiment file's order) and sorting ratios ascending. Ok runs
/// without a value (a class absent from every test case) add nothing; failed runs are counted.
pub fn group_by(rows: &[RunRow], metric: &dyn Fn(&RunRow) -> Option<f64>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for row in rows {
        let index = groups
            .iter()
            .position(|g| g.dataset == row.dataset && g.method == row.method && g.labeled_ratio == row.labeled_ratio);
        let group = match index {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group {
                    dataset: row.dataset.clone(),
                    method: row.method.clone(),
                    labeled_ratio: row.labeled_ratio,
                    values: Vec::new(),
                    failed: 0,
                });
                groups.last_mut().unwrap()
            }
        };
        match (row.ok, metric(row)) {
            (true, Some(d)) => group.values.push(d),
            (true, None) => {}
            (false, _) => group.failed += 1,
        }
    }
    let method_order: Vec<String> = unique(groups.iter().map(|g| g.method.clone()));
    let dataset_order: Vec<String> = unique(groups.iter().map(|g| g.dataset.clone()));
    groups.sort_by(|a, b| {
        let key = |g: &Group| {
            (
                dataset_order.iter().position(|d| *d == g.dataset),
                method_order.iter().position(|m| *m == g.method),
            )
        };
        key(a).cmp(&key(b)).then(a.labeled_ratio.total_cmp(&b.labeled_ratio))
    });
    groups
}

/// Datasets in first-appearance order.
pub fn datasets(groups: &[Group]) -> Vec<String> {
    unique(groups.iter().map(|g| g.dataset.clone()))
}

/// Methods in first-appearance order.
pub fn methods(groups: &[Group]) -> Vec<String> {
    unique(groups.iter().map(|g| g.method.clone()))
}

/// Ratios ascending, without repeats.
pub fn ratios(groups: &[Group]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for g in groups {
        if !out.contains(&g.labeled_ratio) {
            out.push(g.labeled_ratio);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, ratio: f64, seed: u64, dice: Option<f64>) -> RunRow {
        RunRow {
            run_id: format!("{method}{ratio}{seed}"),
            dataset: "d".into(),
            method: method.into(),
            labeled_ratio: ratio,
            seed,
            ok: dice.is_some(),
            error: None,
            dice_mean: dice,
            class_dice: vec![("liver".into(), dice.map(|d| d / 2.0))],
            git_commit: "c".into(),
        }
    }

    #[test]
    fn groups_mean_std_and_failures() {
        let rows = [
            row("b", 0.5, 0, Some(0.6)),
            row("a", 0.1, 0, Some(0.2)),
            row("b", 0.5, 1, Some(0.8)),
            row("b", 0.5, 2, None),
            row("b", 0.1, 0, Some(0.4)),
        ];
        let groups = group(&rows);
        assert_eq!(methods(&groups), ["b", "a"]);
        let b05 = groups.iter().find(|g| g.method == "b" && g.labeled_ratio == 0.5).unwrap();
        assert!((b05.mean().unwrap() - 0.7).abs() < 1e-12);
        assert!((b05.std().unwrap() - (0.02f64).sqrt()).abs() < 1e-12);
        assert_eq!(b05.failed, 1);
        assert_eq!(ratios(&groups), [0.1, 0.5]);
        let liver = group_by(&rows, &|r| r.class_dice("liver"));
        let b05 = liver.iter().find(|g| g.method == "b" && g.labeled_ratio == 0.5).unwrap();
        assert!((b05.mean().unwrap() - 0.35).abs() < 1e-12);
        assert_eq!(class_names(&rows), ["liver"]);
    }
}
