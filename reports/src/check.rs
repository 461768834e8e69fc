//! Holding results to account: `atso check` compares a results folder with a reference file of
//! expected values and tolerances, `atso compare` compares the rows recorded at two commits.
//!
//! A reference file (TOML, kept in experiments/references/) lists `[[values]]`: the expected
//! cell mean of a metric for one (dataset, method, labeled ratio), with an absolute and/or
//! relative tolerance and a note on how the tolerance was derived; and `[[orders]]`: "method A
//! is at least as good as method B" (minus an optional margin). A value outside its tolerance,
//! a violated order, or a missing cell fails the check.

use crate::cells::{self, format_ratio, short, Cell};
use crate::load::{self, Run};
use crate::report;
use crate::stats;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// A reference file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// The experiment the values come from.
    #[serde(default)]
    pub experiment: String,
    /// The commit(s) the expected values were recorded at.
    #[serde(default)]
    pub commit: String,
    /// When the values were last written.
    #[serde(default)]
    pub updated: String,
    /// How the reference was made and how tolerances were calibrated.
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub values: Vec<Expected>,
    #[serde(default)]
    pub orders: Vec<Order>,
}

/// An expected cell mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub dataset: String,
    pub method: String,
    pub labeled_ratio: f64,
    /// A runs-table column: dice_mean, hd95_mean, miou, dice_<class>, ...
    pub metric: String,
    pub expected: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abs_tol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rel_tol: Option<f64>,
    /// How the tolerance was derived (measured spread, machines, seeds).
    #[serde(default)]
    pub derivation: String,
    /// Applies only when every run of the cell reports this text, or one of these texts, in its
    /// `simd` column (e.g. "elementwise x86-64-v4"): expectations per class of machine whose
    /// results agree exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simd: Option<Machines>,
}

/// The classes of machine an expectation applies to: `simd = "text"` or `simd = ["text", ...]`,
/// each text looked for in a run's `simd` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Machines {
    One(String),
    AnyOf(Vec<String>),
}

impl Machines {
    /// Whether a run whose `simd` column reads `simd` is one of these machines.
    pub fn cover(&self, simd: &str) -> bool {
        match self {
            Machines::One(text) => simd.contains(text.as_str()),
            Machines::AnyOf(texts) => texts.iter().any(|text| simd.contains(text.as_str())),
        }
    }
}

impl std::fmt::Display for Machines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Machines::One(text) => write!(f, "{text}"),
            Machines::AnyOf(texts) => write!(f, "{}", texts.join(" | ")),
        }
    }
}

impl From<&str> for Machines {
    fn from(text: &str) -> Self {
        Machines::One(text.to_string())
    }
}

impl Expected {
    /// The allowed |got - expected|: the larger of the absolute and relative tolerances.
    pub fn tolerance(&self) -> f64 {
        let abs = self.abs_tol.unwrap_or(0.0);
        let rel = self.rel_tol.map_or(0.0, |r| r * self.expected.abs());
        abs.max(rel)
    }
}

/// An ordering: `method` at least as good as `than` (minus `margin`) on `metric`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub dataset: String,
    pub labeled_ratio: f64,
    pub metric: String,
    pub method: String,
    pub at_least_as_good_as: String,
    #[serde(default)]
    pub margin: f64,
}

impl Reference {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the reference file", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: invalid reference file: {}", path.display(), e.to_string().trim_end()))
    }
}

/// Whether lower values of `metric` (a runs-table column) are better (distances), as the
/// metric's entry says; columns that are no metric count as higher-is-better.
pub fn lower_is_better(metric: &str) -> bool {
    atso_schema::metric_registry::of_column(metric).is_some_and(|m| !m.higher_is_better)
}

/// One line of a check.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub what: String,
    pub expected: String,
    pub got: String,
    pub delta: String,
    pub tolerance: String,
    pub pass: bool,
    pub note: String,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub lines: Vec<Line>,
    /// Expectations written for another class of machine (by kernel level), with how many, and
    /// the kernel levels of the runs checked: listed under the table, never silently dropped.
    pub not_applied: Vec<(String, usize)>,
    pub machine: String,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.lines.iter().all(|l| l.pass)
    }

    /// A fixed-width table for terminals and CI logs.
    pub fn table(&self) -> String {
        let headers = ["check", "expected", "got", "delta", "tolerance", "result"];
        let rows: Vec<[String; 6]> = self
            .lines
            .iter()
            .map(|l| {
                [
                    l.what.clone(),
                    l.expected.clone(),
                    l.got.clone(),
                    l.delta.clone(),
                    l.tolerance.clone(),
                    if l.pass { "pass".to_string() } else { format!("FAIL {}", l.note) },
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "{}", padded.join("  ").trim_end());
        };
        line(&mut out, &headers.map(String::from));
        line(&mut out, &widths.map(|w| "-".repeat(w)));
        for row in &rows {
            line(&mut out, row);
        }
        for (simd, count) in &self.not_applied {
            let _ = writeln!(
                out,
                "not applied: {count} expectation(s) for machines whose kernels are \"{simd}\" (these runs: \"{}\")",
                self.machine
            );
        }
        out
    }
}

fn find<'c, 'a>(cells: &'c [Cell<'a>], dataset: &str, method: &str, ratio: f64) -> Option<&'c Cell<'a>> {
    cells
        .iter()
        .find(|c| c.dataset == dataset && c.method == method && (c.labeled_ratio - ratio).abs() < 1e-12)
}

fn cell_mean(cell: Option<&Cell>, metric: &str) -> Option<f64> {
    stats::summarise(&cell?.values(metric)).map(|s| s.mean)
}

/// Checks the results in `folders` against `reference`.
pub fn check(folders: &[PathBuf], reference: &Reference, allow_mixed: bool) -> Result<Outcome> {
    let tables = load::read(folders)?;
    let cells = cells::build(&tables.runs, allow_mixed)?;
    let mut lines = Vec::new();
    let mut not_applied: BTreeMap<String, usize> = BTreeMap::new();
    for value in &reference.values {
        let mut what = format!(
            "{} / {} / {}% / {}",
            value.dataset,
            value.method,
            format_ratio(value.labeled_ratio),
            value.metric
        );
        let cell = find(&cells, &value.dataset, &value.method, value.labeled_ratio);
        if let Some(simd) = &value.simd {
            let applies = cell.is_some_and(|c| !c.runs.is_empty() && c.runs.iter().all(|r| simd.cover(&r.simd)));
            if !applies {
                *not_applied.entry(simd.to_string()).or_default() += 1;
                continue; // an expectation for another class of machine
            }
            what = format!("{what} [{simd}]");
        }
        let got = cell_mean(cell, &value.metric);
        let tolerance = value.tolerance();
        let (got_text, delta_text, pass, note) = match got {
            Some(g) => {
                let delta = g - value.expected;
                let seeds = cell.map_or(0, |c| c.values(&value.metric).len());
                (
                    format!("{g:.4} (n={seeds})"),
                    format!("{delta:+.4}"),
                    delta.abs() <= tolerance,
                    "outside tolerance".to_string(),
                )
            }
            None => (
                "missing".into(),
                "–".into(),
                false,
                "no such cell or metric in the results".to_string(),
            ),
        };
        lines.push(Line {
            what,
            expected: format!("{:.4}", value.expected),
            got: got_text,
            delta: delta_text,
            tolerance: if tolerance > 0.0 && tolerance < 1e-4 {
                format!("±{tolerance:.0e}")
            } else {
                format!("±{tolerance:.4}")
            },
            pass,
            note,
        });
    }
    for order in &reference.orders {
        let what = format!(
            "{} / {}% / {}: {} ≥ {}",
            order.dataset,
            format_ratio(order.labeled_ratio),
            order.metric,
            order.method,
            order.at_least_as_good_as
        );
        let a = cell_mean(find(&cells, &order.dataset, &order.method, order.labeled_ratio), &order.metric);
        let b = cell_mean(
            find(&cells, &order.dataset, &order.at_least_as_good_as, order.labeled_ratio),
            &order.metric,
        );
        let line = match (a, b) {
            (Some(a), Some(b)) => {
                let advantage = if lower_is_better(&order.metric) { b - a } else { a - b };
                Line {
                    what,
                    expected: format!("≥ {:.4}", -order.margin),
                    got: format!("{a:.4} vs {b:.4}"),
                    delta: format!("{advantage:+.4}"),
                    tolerance: format!("margin {:.4}", order.margin),
                    pass: advantage >= -order.margin,
                    note: "order violated".into(),
                }
            }
            _ => Line {
                what,
                expected: "present".into(),
                got: "missing".into(),
                delta: "–".into(),
                tolerance: "–".into(),
                pass: false,
                note: "a cell of the order is missing".into(),
            },
        };
        lines.push(line);
    }
    let mut machines: Vec<&str> = tables.runs.iter().map(|r| r.simd.as_str()).collect();
    machines.sort();
    machines.dedup();
    Ok(Outcome {
        lines,
        not_applied: not_applied.into_iter().collect(),
        machine: machines.join("; "),
    })
}

/// Rewrites the expected values of `reference` from the results in `folders` (tolerances and
/// derivations kept); when the reference has no values, one entry per cell is made for
/// `metrics` with `default_abs_tol`. Records the commit(s) the values came from.
pub fn update(
    folders: &[PathBuf],
    reference: &Reference,
    metrics: &[String],
    default_abs_tol: f64,
    allow_mixed: bool,
) -> Result<Reference> {
    let tables = load::read(folders)?;
    let cells = cells::build(&tables.runs, allow_mixed)?;
    let mut updated = reference.clone();
    if updated.values.is_empty() {
        for cell in &cells {
            for metric in metrics {
                if !cell.values(metric).is_empty() {
                    updated.values.push(Expected {
                        dataset: cell.dataset.clone(),
                        method: cell.method.clone(),
                        labeled_ratio: cell.labeled_ratio,
                        metric: metric.clone(),
                        expected: f64::NAN,
                        abs_tol: Some(default_abs_tol),
                        rel_tol: None,
                        derivation: format!(
                            "default tolerance {default_abs_tol} from `atso check --update`; calibrate it from measured spread"
                        ),
                        simd: None,
                    });
                }
            }
        }
    }
    for value in updated.values.iter_mut() {
        let cell = find(&cells, &value.dataset, &value.method, value.labeled_ratio);
        if let Some(simd) = &value.simd {
            // Values for another class of machine are kept as they are.
            if !cell.is_some_and(|c| c.runs.iter().all(|r| simd.cover(&r.simd))) {
                continue;
            }
        }
        value.expected = cell_mean(cell, &value.metric).with_context(|| {
            format!(
                "{} / {} / {}% / {}: not in the results; remove it from the reference or run it",
                value.dataset,
                value.method,
                format_ratio(value.labeled_ratio),
                value.metric
            )
        })?;
    }
    let commits = cells::unique(cells.iter().flat_map(|c| c.runs.iter()).map(|r| r.git_commit.clone()));
    updated.commit = commits.join(" ");
    if updated.experiment.is_empty() {
        updated.experiment = cells::unique(tables.runs.iter().map(|r| r.experiment.clone())).join(" ");
    }
    updated.updated = tables.runs.iter().map(|r| r.finished_at.clone()).max().unwrap_or_default();
    Ok(updated)
}

/// Writes a reference file (whole or not at all).
pub fn write_reference(path: &Path, reference: &Reference) -> Result<()> {
    let text = toml::to_string_pretty(reference).context("serialising the reference")?;
    let header = "# Expected results and tolerances for `atso check`; written by `atso check --update`\n\
                  # (expected values), tolerances and derivations maintained by hand.\n\n";
    atso_schema::fsio::write_atomic(path, format!("{header}{text}").as_bytes())
}

/// Compares the rows recorded at `base` with those at `head` in the same folders: per cell,
/// the means at each commit, the difference, a paired per-case test over matching seeds and
/// cases, and (with a reference) whether the difference is within that cell's tolerance.
pub fn compare(folders: &[PathBuf], base: &str, head: &str, reference: Option<&Reference>) -> Result<Outcome> {
    let tables = load::read(folders)?;
    let at = |commit: &str| -> Vec<Run> { tables.runs.iter().filter(|r| r.git_commit == commit).cloned().collect() };
    let (base_runs, head_runs) = (at(base), at(head));
    if base_runs.is_empty() || head_runs.is_empty() {
        let commits = cells::unique(tables.runs.iter().map(|r| short(&r.git_commit).to_string()));
        bail!(
            "the folders hold {} rows at base {} and {} at head {}; commits present: {}",
            base_runs.len(),
            short(base),
            head_runs.len(),
            short(head),
            commits.join(", ")
        );
    }
    let base_cells = cells::build(&base_runs, false)?;
    let head_cells = cells::build(&head_runs, false)?;
    let per_case = report::per_case_dice(&tables);
    let mut lines = Vec::new();
    for head_cell in &head_cells {
        let Some(base_cell) = base_cells
            .iter()
            .find(|c| c.dataset == head_cell.dataset && c.method == head_cell.method && c.labeled_ratio == head_cell.labeled_ratio)
        else {
            continue;
        };
        let metric = atso_schema::metric_registry::DICE.column;
        let (Some(b), Some(h)) = (cell_mean(Some(base_cell), metric), cell_mean(Some(head_cell), metric)) else {
            continue;
        };
        let delta = h - b;
        let (xs, ys, seeds) = report::case_pairs(head_cell, base_cell, &per_case);
        let paired = stats::paired(&xs, &ys);
        let tolerance = reference.and_then(|r| {
            r.values
                .iter()
                .find(|v| {
                    v.dataset == head_cell.dataset
                        && v.method == head_cell.method
                        && (v.labeled_ratio - head_cell.labeled_ratio).abs() < 1e-12
                        && v.metric == metric
                })
                .map(Expected::tolerance)
        });
        lines.push(Line {
            what: format!(
                "{} / {} / {}% / {metric}",
                head_cell.dataset,
                head_cell.method,
                format_ratio(head_cell.labeled_ratio)
            ),
            expected: format!("{b:.4} @ {}", short(base)),
            got: format!("{h:.4} @ {}", short(head)),
            delta: match paired {
                Some(p) => format!(
                    "{delta:+.4} (per-case {:+.4} [{:+.4}, {:+.4}], p = {}, {} pairs / {seeds} seeds)",
                    p.mean_difference,
                    p.ci_low,
                    p.ci_high,
                    report::format_p(p.p_value),
                    p.n
                ),
                None => format!("{delta:+.4}"),
            },
            tolerance: tolerance.map_or("–".into(), |t| format!("±{t:.4}")),
            pass: tolerance.is_none_or(|t| delta.abs() <= t),
            note: "moved beyond the reference tolerance".into(),
        });
    }
    if lines.is_empty() {
        bail!("no cell was recorded at both {} and {}", short(base), short(head));
    }
    Ok(Outcome {
        lines,
        not_applied: Vec::new(),
        machine: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_one_text_or_a_list_of_them() {
        let one: Expected = toml::from_str(
            "dataset = \"d\"\nmethod = \"m\"\nlabeled_ratio = 0.2\nmetric = \"dice_mean\"\nexpected = 0.5\nsimd = \"x86-64-v4\"",
        )
        .unwrap();
        let machines = one.simd.unwrap();
        assert!(machines.cover("conv avx512f, elementwise x86-64-v4 (cpu x86-64-v4)"));
        assert!(!machines.cover("conv avx2+fma, elementwise x86-64-v3 (cpu x86-64-v3)"));
        let list: Expected = toml::from_str(
            "dataset = \"d\"\nmethod = \"m\"\nlabeled_ratio = 0.2\nmetric = \"dice_mean\"\nexpected = 0.5\nsimd = [\"x86-64-v3\", \"x86-64-v4\"]",
        )
        .unwrap();
        let machines = list.simd.clone().unwrap();
        assert!(machines.cover("conv avx2+fma, elementwise x86-64-v3 (cpu x86-64-v3)"));
        assert!(machines.cover("conv avx512f, elementwise x86-64-v4 (cpu x86-64-v4)"));
        assert!(!machines.cover("conv portable, elementwise x86-64-v2 (cpu x86-64-v2)"));
        assert_eq!(machines.to_string(), "x86-64-v3 | x86-64-v4");
        // Written back as it was read.
        let written = toml::to_string(&list).unwrap();
        assert!(written.contains("simd = [\"x86-64-v3\", \"x86-64-v4\"]"), "{written}");
    }
}
