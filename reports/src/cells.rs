//! What may be averaged: the rules that turn result rows into table cells.
//!
//! A cell is one (dataset, method, labeled ratio, configuration): the runs of one cell hash
//! (the run's configuration hash without its seed). Within a cell each seed counts once: its
//! latest ok row (a rerun replaces, never doubles, a seed; a seed that failed and later succeeded
//! counts as succeeded); seeds with no ok row are counted as failed. Rows of different
//! configurations are never averaged: when one (dataset, method) holds several configurations,
//! each becomes its own row, labeled by its series (the configuration without seed and labeled
//! ratio, so one configuration keeps one label at every ratio): with its experiment's name when
//! the configurations come from different experiments, else with the series hash. Rows of one configuration recorded
//! at different commits are refused (the error names them) unless mixing is allowed, in which
//! case the cell is marked.

use crate::load::Run;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// One table cell and the runs that fed it.
#[derive(Debug, Clone)]
pub struct Cell<'a> {
    pub dataset: String,
    /// Row label: the method, plus the configuration hash when the method has several.
    pub method: String,
    pub method_kind: String,
    pub labeled_ratio: f64,
    pub cell_hash: String,
    /// The counted run of each seed, by seed.
    pub runs: Vec<&'a Run>,
    /// Seeds with no ok row.
    pub failed_seeds: Vec<u64>,
    /// Ok rows left out because a later ok row of the same seed exists.
    pub superseded: usize,
    /// Counted rows come from several commits (allowed with --allow-mixed).
    pub mixed: bool,
}

impl Cell<'_> {
    /// Values of `metric` over the counted runs (runs without it are left out).
    pub fn values(&self, metric: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.metric(metric))
            .filter(|v| v.is_finite())
            .collect()
    }

    /// Labeled cases of the split (the same for every seed of a cell), and the fraction.
    pub fn labeled(&self) -> Option<(u64, u64)> {
        self.runs.first().map(|r| (r.n_labeled, r.n_labeled + r.n_unlabeled))
    }
}

/// Cells in the order methods and datasets first appear, ratios ascending.
pub fn build(runs: &[Run], allow_mixed: bool) -> Result<Vec<Cell<'_>>> {
    // Group by (dataset, method, ratio bits, cell hash), keeping first-appearance order.
    let mut order: Vec<(String, String, u64, String)> = Vec::new();
    let mut groups: BTreeMap<(String, String, u64, String), Vec<&Run>> = BTreeMap::new();
    for run in runs {
        let key = (
            run.dataset.clone(),
            run.method.clone(),
            run.labeled_ratio.to_bits(),
            run.cell_hash.clone(),
        );
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(run);
    }
    let labels = row_labels(&order, &groups);
    let mut mixing = Vec::new();
    let mut cells = Vec::new();
    for key in &order {
        let rows = &groups[key];
        let (dataset, method, ratio, cell_hash) = key;
        let mut by_seed: BTreeMap<u64, Vec<&Run>> = BTreeMap::new();
        for run in rows {
            by_seed.entry(run.seed).or_default().push(run);
        }
        let mut counted = Vec::new();
        let mut failed_seeds = Vec::new();
        let mut superseded = 0;
        for (seed, mut seed_rows) in by_seed {
            seed_rows.retain(|r| r.ok);
            seed_rows.sort_by(|a, b| (&a.finished_at, &a.run_id).cmp(&(&b.finished_at, &b.run_id)));
            match seed_rows.pop() {
                Some(latest) => {
                    superseded += seed_rows.len();
                    counted.push(latest);
                }
                None => failed_seeds.push(seed),
            }
        }
        let mut commits: Vec<&str> = counted.iter().map(|r| r.git_commit.as_str()).collect();
        commits.sort();
        commits.dedup();
        let mixed = commits.len() > 1;
        if mixed && !allow_mixed {
            mixing.push(format!(
                "{dataset} / {method} / {}% labeled (config {}): seeds from commits {}",
                format_ratio(f64::from_bits(*ratio)),
                short(cell_hash),
                commits.iter().map(|c| short(c)).collect::<Vec<_>>().join(", ")
            ));
        }
        cells.push(Cell {
            dataset: dataset.clone(),
            method: labels[key].clone(),
            method_kind: rows[0].method_kind.clone(),
            labeled_ratio: f64::from_bits(*ratio),
            cell_hash: cell_hash.clone(),
            runs: counted,
            failed_seeds,
            superseded,
            mixed,
        });
    }
    if !mixing.is_empty() {
        bail!(
            "refusing to average rows recorded at different commits:\n  {}\n\
             Rerun them at one commit (`atso sweep <file> --rerun-stale`), report the folders separately, \
             or pass --allow-mixed to average them anyway (such cells are marked in the tables)",
            mixing.join("\n  ")
        );
    }
    let dataset_order = unique(cells.iter().map(|c| c.dataset.clone()));
    let method_order = unique(cells.iter().map(|c| c.method.clone()));
    cells.sort_by(|a, b| {
        let key = |c: &Cell| {
            (
                dataset_order.iter().position(|d| *d == c.dataset),
                method_order.iter().position(|m| *m == c.method),
            )
        };
        key(a).cmp(&key(b)).then(a.labeled_ratio.total_cmp(&b.labeled_ratio))
    });
    Ok(cells)
}

type GroupKey = (String, String, u64, String);

/// The row label of each group: the method's name when the (dataset, method) has one series;
/// otherwise the name tagged with the series (its experiment when the series come from
/// different experiments, else `cfg <series hash>`); a cell hash is added only where two
/// configurations still share a label at one ratio (rows written before series hashes existed).
fn row_labels(order: &[GroupKey], groups: &BTreeMap<GroupKey, Vec<&Run>>) -> BTreeMap<GroupKey, String> {
    // Rows without a series hash (older tables) fall back to their experiment as the series.
    let series_of = |key: &GroupKey| {
        let run = groups[key][0];
        let series = if run.series_hash.is_empty() {
            format!("experiment {}", run.experiment)
        } else {
            run.series_hash.clone()
        };
        (series, run.experiment.clone())
    };
    let mut series_per_method: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    for key in order {
        let entry = series_per_method.entry((key.0.clone(), key.1.clone())).or_default();
        let series = series_of(key);
        if !entry.contains(&series) {
            entry.push(series);
        }
    }
    let mut labels = BTreeMap::new();
    for key in order {
        let (dataset, method, _, _) = key;
        let all = &series_per_method[&(dataset.clone(), method.clone())];
        let (series, experiment) = series_of(key);
        let label = if all.len() == 1 {
            method.clone()
        } else {
            let experiments = unique(all.iter().map(|(_, e)| e.clone()));
            let same_experiment_twice = all.iter().filter(|(_, e)| *e == experiment).count() > 1;
            if (experiments.len() > 1 && !same_experiment_twice) || series.starts_with("experiment ") {
                format!("{method} [{experiment}]")
            } else {
                format!("{method} [cfg {}]", short(&series))
            }
        };
        labels.insert(key.clone(), label);
    }
    let mut per_label_ratio: BTreeMap<(String, String, u64), usize> = BTreeMap::new();
    for key in order {
        *per_label_ratio.entry((key.0.clone(), labels[key].clone(), key.2)).or_default() += 1;
    }
    for key in order {
        if per_label_ratio[&(key.0.clone(), labels[key].clone(), key.2)] > 1 {
            let label = labels.get_mut(key).expect("every key is labeled");
            *label = format!("{label} [cfg {}]", short(&key.3));
        }
    }
    labels
}

/// The first 10 characters of a hash or commit.
pub fn short(text: &str) -> &str {
    &text[..text.len().min(10)]
}

/// A ratio as a percentage without needless decimals.
pub fn format_ratio(ratio: f64) -> String {
    let pct = ratio * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("{}", pct.round() as i64)
    } else {
        format!("{pct:.1}")
    }
}

/// Items in first-appearance order without repeats.
pub fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Datasets of `cells` in order.
pub fn datasets(cells: &[Cell]) -> Vec<String> {
    unique(cells.iter().map(|c| c.dataset.clone()))
}

/// Methods (row labels) of `cells` in order.
pub fn methods(cells: &[Cell]) -> Vec<String> {
    unique(cells.iter().map(|c| c.method.clone()))
}

/// Ratios of `cells`, ascending.
pub fn ratios(cells: &[Cell]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for c in cells {
        if !out.contains(&c.labeled_ratio) {
            out.push(c.labeled_ratio);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}
