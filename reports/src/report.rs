//! What a report says: per dataset, methods x labeled ratios of test Dice (mean ± std, 95 % t
//! interval over seeds from three seeds on, best per column in bold), the comparisons of every
//! method with supervised-only and with ATSO, seed-level first (the seed is the unit: per-seed
//! differences, t interval, sign-flip permutation p, two-level bootstrap, Holm-adjusted p, the
//! difference detectable at 80 % power) and per case second, Dice per class, HD95 and mIoU where
//! recorded, the lazy-learning measures per stage and labeled ratio, method diagnostics, and a
//! provenance footer under every table.

use crate::cells::{self, format_ratio, short, Cell};
use crate::load::{Run, StageRow, Tables};
use crate::stats::{self, SeedLevel};
use crate::table::{Entry, Row, Table};
use atso_schema::metric_registry::{self as registry, Metric, Shown};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How a metric is shown.
#[derive(Debug, Clone, Copy)]
pub struct MetricView<'m> {
    /// Column of runs.parquet.
    pub column: &'m str,
    pub label: &'m str,
    /// Multiply by this for display (100 for fractions shown as %).
    pub scale: f64,
    pub higher_is_better: bool,
    /// The values the metric can take (before scaling); intervals are clipped to it.
    pub range: (f64, f64),
}

impl MetricView<'static> {
    /// The view of a metric as its entry in `metric_registry` describes it.
    pub const fn of(metric: &Metric) -> Self {
        MetricView {
            column: metric.column,
            label: metric.label,
            scale: metric.scale,
            higher_is_better: metric.higher_is_better,
            range: metric.range,
        }
    }
}

/// Mean test Dice, the headline metric.
pub const DICE: MetricView<'static> = MetricView {
    label: "test Dice (%)",
    ..MetricView::of(&registry::DICE)
};

/// One dataset's part of the report.
#[derive(Debug, Clone)]
pub struct Section {
    pub dataset: String,
    pub tables: Vec<Table>,
}

/// The whole report's content.
#[derive(Debug, Clone, Default)]
pub struct Content {
    pub sections: Vec<Section>,
    /// Runs whose seed never succeeded, with their errors.
    pub failed: Vec<(String, String)>,
}

/// Method kinds that are bounds, not competitors: never marked best.
const BOUNDS: [&str; 1] = ["fully-supervised"];

/// Builds the report's tables from aggregated cells; `declared` is the family of comparisons the
/// experiment files declare (empty: every method against supervised-only and ATSO).
pub fn build(tables: &Tables, cells: &[Cell], declared: &[[String; 2]]) -> Content {
    let per_case = per_case_dice(tables);
    let mut content = Content::default();
    for dataset in cells::datasets(cells) {
        let selected: Vec<Cell> = cells.iter().filter(|c| c.dataset == dataset).cloned().collect();
        let mut section = Section {
            dataset: dataset.clone(),
            tables: Vec::new(),
        };
        section
            .tables
            .push(metric_table(&selected, &DICE, &format!("{dataset}: test Dice (%)")));
        let comparisons = if declared.is_empty() {
            comparisons(&selected)
        } else {
            declared_comparisons(&selected, declared)
        };
        if let Some(table) = seed_level_table(&selected, &comparisons, &per_case, &dataset, !declared.is_empty()) {
            section.tables.push(table);
        }
        if let Some(table) = per_case_table(&selected, &comparisons, &per_case, &dataset) {
            section.tables.push(table);
        }
        for metric in &registry::ALL {
            section.tables.extend(metric_tables(&selected, metric, &dataset));
        }
        section.tables.extend(lazy_tables(&selected, &tables.stages));
        if let Some(table) = diagnostics_table(&selected) {
            section.tables.push(table);
        }
        content.sections.push(section);
    }
    for cell in cells {
        for seed in &cell.failed_seeds {
            let error = tables
                .runs
                .iter()
                .filter(|r| r.cell_hash == cell.cell_hash && r.seed == *seed && r.dataset == cell.dataset)
                .filter_map(|r| r.error.clone())
                .next_back()
                .unwrap_or_else(|| "no error recorded".into());
            content.failed.push((
                format!(
                    "{} / {} / {}% / seed {seed}",
                    cell.dataset,
                    cell.method,
                    format_ratio(cell.labeled_ratio)
                ),
                error,
            ));
        }
    }
    content
}

/// A metric's tables by its entry's `shown`: besides the headline's (built above), a table and
/// one per class where some run recorded it, or one table where the dataset scores every class.
fn metric_tables(cells: &[Cell], metric: &Metric, dataset: &str) -> Vec<Table> {
    let view = MetricView::of(metric);
    let (short, unit) = (metric.short, metric.unit);
    let direction = if metric.higher_is_better { "" } else { ", lower is better" };
    let recorded = has_metric(cells, metric.column);
    // (a table of the run-level column, tables per class)
    let (main, per_class) = match metric.shown {
        Shown::Headline => (false, true), // its run-level table leads the section
        Shown::Table { .. } => (recorded, recorded),
        Shown::WhenEveryClassScored => (recorded && scores_every_class(cells), false),
        Shown::TablesOnly => (false, false),
    };
    let mut tables = Vec::new();
    if main {
        let mut table = metric_table(cells, &view, &format!("{dataset}: {short} ({unit}{direction})"));
        if let Shown::Table { note } = metric.shown {
            table.notes.push(note.into());
        }
        tables.push(table);
    }
    if let Some(prefix) = metric.per_class_prefix.filter(|_| per_class) {
        for class in class_names(cells, prefix) {
            let column = format!("{prefix}{class}");
            let view = MetricView { column: &column, ..view };
            tables.push(metric_table(cells, &view, &format!("{dataset}: {short} of {class} ({unit})")));
        }
    }
    tables
}

fn has_metric(cells: &[Cell], metric: &str) -> bool {
    cells.iter().any(|c| !c.values(metric).is_empty())
}

/// Whether the dataset scores every class, class 0 included (driving scenes: no background), as
/// the runs table's `first_class` column says; mIoU is their headline metric.
fn scores_every_class(cells: &[Cell]) -> bool {
    cells.iter().flat_map(|c| &c.runs).any(|r| r.metric("first_class") == Some(0.0))
}

/// Class names with a `<prefix><class>` metric filled in some counted run.
fn class_names(cells: &[Cell], prefix: &str) -> Vec<String> {
    cells::unique(cells.iter().flat_map(|c| c.runs.iter()).flat_map(|r| {
        r.metrics
            .iter()
            .filter(|(n, v)| n.starts_with(prefix) && v.is_some())
            .filter_map(|(n, _)| n.strip_prefix(prefix))
            // dice_mean, hd95_mean, dice_at_resolution_mean are summaries, not classes.
            .filter(|c| prefix == "diag_" || !atso_schema::records::RESERVED_CLASS_NAMES.contains(c))
            .map(str::to_string)
            .collect::<Vec<_>>()
    }))
}

/// Column header: nominal ratio and the labeled count actually used.
fn ratio_header(cells: &[Cell], ratio: f64) -> String {
    let counts: BTreeSet<(u64, u64)> = cells
        .iter()
        .filter(|c| c.labeled_ratio == ratio)
        .filter_map(|c| c.labeled())
        .collect();
    match counts.iter().next() {
        Some((labeled, total)) if counts.len() == 1 && *total > 0 => format!(
            "{}% labeled ({labeled}/{total} = {:.0}%)",
            format_ratio(ratio),
            100.0 * *labeled as f64 / *total as f64
        ),
        _ => format!("{}% labeled", format_ratio(ratio)),
    }
}

/// Methods as rows, labeled ratios as columns.
pub fn metric_table(cells: &[Cell], view: &MetricView, title: &str) -> Table {
    let ratios = cells::ratios(cells);
    let methods = cells::methods(cells);
    let mut rows = Vec::new();
    let mut means: Vec<Vec<Option<f64>>> = Vec::new();
    let mut any_mixed = false;
    let mut any_incomplete = false;
    let mut superseded = 0;
    for method in &methods {
        let mut entries = Vec::new();
        let mut row_means = Vec::new();
        for ratio in &ratios {
            let Some(cell) = cells.iter().find(|c| &c.method == method && c.labeled_ratio == *ratio) else {
                entries.push(Entry::empty());
                row_means.push(None);
                continue;
            };
            superseded += cell.superseded;
            let summary = stats::summarise(&cell.values(view.column));
            let failed = if cell.failed_seeds.is_empty() {
                String::new()
            } else {
                format!(", {} failed", cell.failed_seeds.len())
            };
            // A metric left undefined in some runs (HD95 of a class a model never predicts)
            // averages only the runs that have it: shown as "n=k of m", never ranked best.
            let counted = cell.runs.len();
            let incomplete = summary.is_some_and(|s| s.n < counted);
            any_incomplete |= incomplete;
            let n = |n: usize| {
                if incomplete {
                    format!("n={n} of {counted}")
                } else {
                    format!("n={n}")
                }
            };
            let entry = match summary {
                Some(s) => Entry {
                    value: format!("{:.1} ± {:.1}", view.scale * s.mean, view.scale * s.std),
                    detail: if s.n >= stats::MIN_SEEDS_FOR_T_INTERVAL {
                        format!(
                            "[{:.1}, {:.1}] {}{failed}",
                            view.scale * (s.mean - s.ci95).max(view.range.0),
                            view.scale * (s.mean + s.ci95).min(view.range.1),
                            n(s.n)
                        )
                    } else {
                        format!("n too small for an interval, {}{failed}", n(s.n))
                    },
                    best: false,
                    marks: if cell.mixed { "‡".into() } else { String::new() },
                },
                None => Entry {
                    value: "–".into(),
                    detail: format!("n=0{failed}"),
                    ..Entry::default()
                },
            };
            any_mixed |= cell.mixed;
            row_means.push(summary.filter(|_| !incomplete).map(|s| s.mean));
            entries.push(entry);
        }
        rows.push(Row {
            label: method.clone(),
            entries,
        });
        means.push(row_means);
    }
    // Best per column among competitors (bounds excluded).
    #[allow(clippy::needless_range_loop)] // `column` indexes both `means` rows and `rows` entries
    for column in 0..ratios.len() {
        let candidates = methods
            .iter()
            .enumerate()
            .filter(|(_, m)| !cells.iter().any(|c| &c.method == *m && BOUNDS.contains(&c.method_kind.as_str())));
        let scored: Vec<(usize, f64)> = candidates.filter_map(|(i, _)| means[i][column].map(|m| (i, m))).collect();
        let best = scored
            .iter()
            .map(|s| s.1)
            .reduce(|a, b| if view.higher_is_better { a.max(b) } else { a.min(b) });
        // Ties are all marked.
        for (i, mean) in scored {
            if Some(mean) == best {
                rows[i].entries[column].best = true;
            }
        }
    }
    let mut notes = vec![format!(
        "Cells: {} over seeds, mean ± sample std; below, the 95 % Student-t interval of the mean (clipped to the metric's range; only from {} seeds on) and the number of seeds. Bold: best per column among the compared methods (bounds such as fully-supervised are not ranked; neither is a cell with missing values).",
        view.label,
        stats::MIN_SEEDS_FOR_T_INTERVAL
    )];
    if any_mixed {
        notes.push("‡ seeds recorded at different commits averaged together (--allow-mixed).".into());
    }
    if any_incomplete {
        notes.push(
            "n=k of m: the value is undefined in m − k of the cell's runs (for HD95: the class was not predicted, or is absent) and the mean is over the other k; such cells are not ranked."
                .into(),
        );
    }
    if superseded > 0 {
        notes.push(format!(
            "{superseded} rerun row(s) of a seed were superseded by the seed's latest ok row (each seed counts once)."
        ));
    }
    if methods.iter().any(|m| m.contains("[cfg ")) {
        notes.push("[cfg …]: one method label ran with several configurations (e.g. an edited setting); each is its own row, never averaged together.".into());
    }
    let (provenance, warnings) = provenance(cells);
    Table {
        title: title.to_string(),
        caption: String::new(),
        corner: "method".into(),
        columns: ratios.iter().map(|r| ratio_header(cells, *r)).collect(),
        rows,
        notes,
        provenance,
        warnings,
    }
}

/// Provenance lines and warnings for the runs that fed `cells`.
pub fn provenance(cells: &[Cell]) -> (Vec<String>, Vec<String>) {
    let runs: Vec<&Run> = cells.iter().flat_map(|c| c.runs.iter().copied()).collect();
    if runs.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let count = |f: &dyn Fn(&Run) -> String| -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for run in &runs {
            *counts.entry(f(run)).or_default() += 1;
        }
        counts.iter().map(|(k, n)| format!("{k} ({n})")).collect::<Vec<_>>().join(", ")
    };
    let dirty = runs.iter().filter(|r| r.git_dirty == Some(true)).count();
    let first = runs.iter().map(|r| r.started_at.as_str()).min().unwrap_or("");
    let last = runs.iter().map(|r| r.finished_at.as_str()).max().unwrap_or("");
    let lines = vec![
        format!("{} runs", runs.len()),
        format!("commits {}", count(&|r| short(&r.git_commit).to_string())),
        format!(
            "working tree {}",
            count(&|r| match r.git_dirty {
                Some(true) => "dirty".into(),
                Some(false) => "clean".into(),
                None => "unknown".into(),
            })
        ),
        format!("backends {}", count(&|r| r.backend.clone())),
        format!("threads {}", count(&|r| r.threads.to_string())),
        format!("CPUs {}", count(&|r| r.cpu.clone())),
        format!("dates {} .. {}", &first[..first.len().min(19)], &last[..last.len().min(19)]),
    ];
    let warnings = if dirty > 0 {
        vec![format!(
            "{dirty} of {} runs came from a working tree with uncommitted changes: their commit does not identify the code that produced them.",
            runs.len()
        )]
    } else {
        Vec::new()
    };
    (lines, warnings)
}

/// Per-case mean Dice over the classes a case defines, by run and case.
pub fn per_case_dice(tables: &Tables) -> HashMap<String, BTreeMap<String, f64>> {
    let mut sums: HashMap<String, BTreeMap<String, (f64, usize)>> = HashMap::new();
    for row in &tables.cases {
        if let Some(d) = row.dice.filter(|d| d.is_finite()) {
            let entry = sums.entry(row.run_id.clone()).or_default().entry(row.case_id.clone()).or_default();
            entry.0 += d;
            entry.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(run, cases)| (run, cases.into_iter().map(|(c, (s, n))| (c, s / n as f64)).collect()))
        .collect()
}

/// Per-case Dice pairs of two cells over (seed, case): matched seeds, matched cases.
pub fn case_pairs(a: &Cell, b: &Cell, per_case: &HashMap<String, BTreeMap<String, f64>>) -> (Vec<f64>, Vec<f64>, usize) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let mut seeds = 0;
    for run_a in &a.runs {
        let Some(run_b) = b.runs.iter().find(|r| r.seed == run_a.seed) else {
            continue;
        };
        let (Some(cases_a), Some(cases_b)) = (per_case.get(&run_a.run_id), per_case.get(&run_b.run_id)) else {
            continue;
        };
        seeds += 1;
        for (case, da) in cases_a {
            if let Some(db) = cases_b.get(case) {
                xs.push(*da);
                ys.push(*db);
            }
        }
    }
    (xs, ys, seeds)
}

/// The reference cells at one ratio: supervised-only and ATSO (the cell labeled as the kind, or
/// the first of that kind).
fn reference<'c, 'a>(cells: &'c [Cell<'a>], ratio: f64, kind: &str) -> Option<&'c Cell<'a>> {
    let at: Vec<&Cell> = cells.iter().filter(|c| c.labeled_ratio == ratio && c.method_kind == kind).collect();
    at.iter().find(|c| c.method == kind).or(at.first()).copied()
}

/// One comparison of a report: `method − base` at one labeled ratio.
pub struct Comparison<'c, 'a> {
    pub ratio: f64,
    pub method: &'c Cell<'a>,
    pub base: &'c Cell<'a>,
}

/// Every method against supervised-only and against ATSO at each ratio (without repeating
/// "supervised − atso" as "atso − supervised" the other way round): the family of one report
/// section, over which p-values are Holm-adjusted.
pub fn comparisons<'c, 'a>(cells: &'c [Cell<'a>]) -> Vec<Comparison<'c, 'a>> {
    let mut out = Vec::new();
    for ratio in cells::ratios(cells) {
        for reference_kind in ["supervised", "atso"] {
            let Some(base) = reference(cells, ratio, reference_kind) else {
                continue;
            };
            let supervised = reference(cells, ratio, "supervised").map(|c| c.method.clone());
            for cell in cells.iter().filter(|c| c.labeled_ratio == ratio && c.method != base.method) {
                if reference_kind == "atso" && Some(&cell.method) == supervised.as_ref() {
                    continue;
                }
                out.push(Comparison { ratio, method: cell, base });
            }
        }
    }
    out
}

impl Comparison<'_, '_> {
    fn label(&self) -> String {
        format!(
            "{}% labeled: {} − {}",
            format_ratio(self.ratio),
            self.method.method,
            self.base.method
        )
    }

    /// The seed-level comparison of the runs' mean Dice, with each seed's per-case differences
    /// for the two-level bootstrap.
    fn seed_level(&self, per_case: &HashMap<String, BTreeMap<String, f64>>) -> Option<SeedLevel> {
        let values = |cell: &Cell| -> Vec<(u64, f64)> {
            cell.runs
                .iter()
                .filter_map(|r| r.metric(DICE.column).filter(|v| v.is_finite()).map(|v| (r.seed, v)))
                .collect()
        };
        let cases: Vec<(u64, Vec<f64>)> = self
            .method
            .runs
            .iter()
            .filter_map(|run| {
                let base = self.base.runs.iter().find(|r| r.seed == run.seed)?;
                let (mine, theirs) = (per_case.get(&run.run_id)?, per_case.get(&base.run_id)?);
                let differences = mine.iter().filter_map(|(case, d)| theirs.get(case).map(|t| d - t)).collect();
                Some((run.seed, differences))
            })
            .collect();
        let span = DICE.range.1 - DICE.range.0;
        stats::seed_level(&values(self.method), &values(self.base), &cases, (-span, span))
    }
}

/// The declared pairs at every ratio where both methods have a cell, ratio by ratio.
pub fn declared_comparisons<'c, 'a>(cells: &'c [Cell<'a>], declared: &[[String; 2]]) -> Vec<Comparison<'c, 'a>> {
    let mut out = Vec::new();
    for ratio in cells::ratios(cells) {
        for [method, against] in declared {
            let at = |label: &str| cells.iter().find(|c| c.labeled_ratio == ratio && c.method == label);
            if let (Some(method), Some(base)) = (at(method), at(against)) {
                out.push(Comparison { ratio, method, base });
            }
        }
    }
    out
}

/// Dice points of a Dice fraction, signed.
fn points(value: f64) -> String {
    format!("{:+.1}", 100.0 * value)
}

/// The primary analysis: each comparison with the seed as the unit, p-values Holm-adjusted over
/// the table.
fn seed_level_table(
    cells: &[Cell],
    comparisons: &[Comparison],
    per_case: &HashMap<String, BTreeMap<String, f64>>,
    dataset: &str,
    declared: bool,
) -> Option<Table> {
    let results: Vec<(String, SeedLevel)> = comparisons
        .iter()
        .filter_map(|c| c.seed_level(per_case).map(|s| (c.label(), s)))
        .collect();
    if results.is_empty() {
        return None;
    }
    let adjusted = stats::holm(&results.iter().map(|(_, s)| s.p).collect::<Vec<_>>());
    let text = |value: String| Entry { value, ..Entry::default() };
    let interval =
        |i: Option<(f64, f64)>, missing: &str| i.map_or(missing.to_string(), |(low, high)| format!("[{}, {}]", points(low), points(high)));
    let rows = results
        .iter()
        .zip(&adjusted)
        .map(|((label, s), holm)| Row {
            label: label.clone(),
            entries: vec![
                text(s.seeds.len().to_string()),
                text(s.differences.iter().map(|d| points(*d)).collect::<Vec<_>>().join(", ")),
                text(points(s.mean)),
                text(interval(s.t_interval, "n too small")),
                text(format!("{}{}", format_p(s.p), if s.exact { "" } else { " (MC)" })),
                text(format_p(*holm)),
                text(interval(s.bootstrap, "–")),
                text(s.minimal_detectable.map_or("–".into(), |m| format!("{:.1}", 100.0 * m))),
            ],
        })
        .collect();
    let (provenance, warnings) = provenance(cells);
    Some(Table {
        title: format!("{dataset}: comparisons, seed as the unit (primary)"),
        caption: "Each seed is one split (the same labeled cases for both methods) and one trained model per method, so the seed is the unit of replication. Differences are in Dice points of the runs' mean test Dice.".into(),
        corner: "comparison".into(),
        columns: vec![
            "seeds".into(),
            "per-seed differences".into(),
            "mean".into(),
            "95 % t interval".into(),
            "sign-flip p".into(),
            "Holm p".into(),
            "two-level bootstrap 95 %".into(),
            "detectable at 80 % power".into(),
        ],
        rows,
        notes: vec![
            format!(
                "95 % t interval: Student t over the per-seed differences, clipped to ±100 points; printed only from {} seeds on (\"n too small\" below).",
                stats::MIN_SEEDS_FOR_T_INTERVAL
            ),
            format!(
                "sign-flip p: two-sided permutation test of the mean difference over every pattern of signs of the per-seed differences (exact up to {} seeds; (MC): {} random patterns). With n seeds it cannot fall below 2 / 2^n (0.25 for 3 seeds).",
                stats::EXACT_SIGN_FLIP_MAX,
                stats::SIGN_FLIP_RESAMPLES
            ),
            if declared {
                "Holm p: Holm's step-down adjustment over every comparison of this table, the family the experiment file declares in [report] comparisons.".into()
            } else {
                "Holm p: Holm's step-down adjustment over every comparison of this table (one family: every method against supervised-only and against ATSO).".into()
            },
            format!(
                "two-level bootstrap: {} resamples of seeds, then of test cases within each drawn seed, of the mean per-case difference (a case's Dice: the mean over its classes).",
                stats::BOOTSTRAP_RESAMPLES
            ),
            "detectable at 80 % power: the smallest true difference (Dice points) a two-sided paired t-test at 0.05 over these seeds detects with 80 % power at the observed spread of the per-seed differences; smaller true differences are likely to go unseen.".into(),
        ],
        provenance,
        warnings,
    })
}

/// The secondary analysis: per (seed, test case) pairs, as earlier reports gave it.
fn per_case_table(
    cells: &[Cell],
    comparisons: &[Comparison],
    per_case: &HashMap<String, BTreeMap<String, f64>>,
    dataset: &str,
) -> Option<Table> {
    let results: Vec<(String, stats::Paired, usize)> = comparisons
        .iter()
        .filter_map(|c| {
            let (xs, ys, seeds) = case_pairs(c.method, c.base, per_case);
            stats::paired(&xs, &ys).map(|p| (c.label(), p, seeds))
        })
        .collect();
    if results.is_empty() {
        return None;
    }
    let adjusted = stats::holm(&results.iter().map(|(_, p, _)| p.p_value).collect::<Vec<_>>());
    let text = |value: String| Entry { value, ..Entry::default() };
    let rows = results
        .iter()
        .zip(&adjusted)
        .map(|((label, p, seeds), holm)| Row {
            label: label.clone(),
            entries: vec![
                text(format!("{} over {seeds} seed(s)", p.n)),
                text(points(p.mean_difference)),
                text(format!("[{}, {}]", points(p.ci_low), points(p.ci_high))),
                text(format_p(p.p_value)),
                text(format_p(*holm)),
            ],
        })
        .collect();
    let (provenance, warnings) = provenance(cells);
    Some(Table {
        title: format!("{dataset}: comparisons per test case (secondary)"),
        caption: "Pairs are (seed, test case): a case's test Dice (mean over its classes) under both methods at the same seed.".into(),
        corner: "comparison".into(),
        columns: vec![
            "pairs".into(),
            "mean".into(),
            "bootstrap 95 %".into(),
            "Wilcoxon p".into(),
            "Holm p".into(),
        ],
        rows,
        notes: vec![
            format!(
                "Secondary: the cases of one seed share a trained model and the same cases recur in every seed, so these tests treat dependent pairs as independent and their p-values are too small; the seed-level table is the analysis. Bootstrap: {} resamples of the pairs; Wilcoxon signed-rank, two-sided (scipy's default); Holm over this table.",
                stats::BOOTSTRAP_RESAMPLES
            ),
        ],
        provenance,
        warnings,
    })
}

/// p-values to two significant digits, small ones in scientific notation.
pub fn format_p(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

/// Mean of stage measures over the seeds of one cell, per stage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageMean {
    pub dataset: String,
    pub method: String,
    pub labeled_ratio: f64,
    pub stage: u64,
    pub seeds: usize,
    pub self_made: bool,
    pub loss_trained: Option<f64>,
    pub loss_self: Option<f64>,
    pub loss_cross: Option<f64>,
    pub flip_rate: Option<f64>,
    pub pseudo_label_dice_all: Option<f64>,
    pub validation_dice: Option<f64>,
}

/// Stage means per cell of a staged method (ok runs only).
pub fn stage_means(cells: &[Cell], stages: &[StageRow]) -> Vec<StageMean> {
    let mut out = Vec::new();
    for cell in cells {
        let ids: BTreeSet<&str> = cell.runs.iter().map(|r| r.run_id.as_str()).collect();
        let rows: Vec<&StageRow> = stages.iter().filter(|s| ids.contains(s.run_id.as_str())).collect();
        let numbers: BTreeSet<u64> = rows.iter().map(|s| s.stage).collect();
        for stage in numbers {
            let at: Vec<&&StageRow> = rows.iter().filter(|s| s.stage == stage).collect();
            let mean = |f: &dyn Fn(&StageRow) -> Option<f64>| {
                stats::summarise(&at.iter().filter_map(|s| f(s)).collect::<Vec<_>>()).map(|s| s.mean)
            };
            out.push(StageMean {
                dataset: cell.dataset.clone(),
                method: cell.method.clone(),
                labeled_ratio: cell.labeled_ratio,
                stage,
                seeds: at.len(),
                self_made: at.iter().any(|s| s.labels_self_made),
                loss_trained: mean(&|s| s.first_step_loss),
                loss_self: mean(&|s| s.first_step_loss_self),
                loss_cross: mean(&|s| s.first_step_loss_cross),
                flip_rate: mean(&|s| s.flip_rate),
                pseudo_label_dice_all: mean(&|s| s.pseudo_label_dice_all),
                validation_dice: mean(&|s| s.validation_dice),
            });
        }
    }
    out
}

/// One lazy-learning table per labeled ratio: staged methods x stages.
fn lazy_tables(cells: &[Cell], stages: &[StageRow]) -> Vec<Table> {
    let means = stage_means(cells, stages);
    let mut tables = Vec::new();
    let fmt = |v: Option<f64>, scale: f64, digits: usize| v.map_or("–".to_string(), |x| format!("{:.*}", digits, scale * x));
    for ratio in cells::ratios(cells) {
        let at: Vec<&StageMean> = means.iter().filter(|m| m.labeled_ratio == ratio).collect();
        if at.is_empty() {
            continue;
        }
        let rows = at
            .iter()
            .map(|m| Row {
                label: format!("{} stage {}{}", m.method, m.stage, if m.self_made { " *" } else { "" }),
                entries: vec![
                    fmt(m.loss_trained, 1.0, 3),
                    fmt(m.loss_self, 1.0, 3),
                    fmt(m.loss_cross, 1.0, 3),
                    fmt(m.loss_self.zip(m.loss_cross).map(|(s, c)| s - c), 1.0, 3),
                    fmt(m.flip_rate, 100.0, 1),
                    fmt(m.pseudo_label_dice_all, 100.0, 1),
                    fmt(m.validation_dice, 100.0, 1),
                    m.seeds.to_string(),
                ]
                .into_iter()
                .map(|value| Entry { value, ..Entry::default() })
                .collect(),
            })
            .collect();
        let dataset = at[0].dataset.clone();
        let (provenance, warnings) = provenance(&cells.iter().filter(|c| c.labeled_ratio == ratio).cloned().collect::<Vec<_>>());
        tables.push(Table {
            title: format!("{dataset}: lazy learning per stage, {}% labeled", format_ratio(ratio)),
            caption: "Means over seeds. Losses are measured at the stage's first training step, in train mode, on the pseudo-labeled images of that batch: against the labels trained on, against the student's own predictions (self), and against the latest labels made by a model that never trained on those images (cross). A loss near zero on self labels with a clear self − cross gap is the lazy learning the ATSO paper describes.".into(),
            corner: "method, stage".into(),
            columns: vec![
                "loss, trained labels".into(),
                "loss, self labels".into(),
                "loss, cross labels".into(),
                "self − cross".into(),
                "flip rate, foreground (%)".into(),
                "pseudo-label Dice, all of U (%)".into(),
                "validation Dice after (%)".into(),
                "seeds".into(),
            ],
            rows,
            notes: vec!["* the stage trained on labels made by a model whose lineage had already trained on those images.".into()],
            provenance,
            warnings,
        });
    }
    tables
}

/// Method diagnostics (diag_* columns) x labeled ratios, for methods that record any.
fn diagnostics_table(cells: &[Cell]) -> Option<Table> {
    let names = class_names(cells, "diag_");
    if names.is_empty() {
        return None;
    }
    let ratios = cells::ratios(cells);
    let mut rows = Vec::new();
    for method in cells::methods(cells) {
        for name in &names {
            let column = format!("diag_{name}");
            let entries: Vec<Entry> = ratios
                .iter()
                .map(|r| {
                    cells
                        .iter()
                        .find(|c| c.method == method && c.labeled_ratio == *r)
                        .and_then(|c| stats::summarise(&c.values(&column)))
                        .map_or(Entry::empty(), |s| Entry {
                            value: format!("{:.4}", s.mean),
                            detail: format!("n={}", s.n),
                            ..Entry::default()
                        })
                })
                .collect();
            if entries.iter().any(|e| e.value != "–") {
                rows.push(Row {
                    label: format!("{method}: {}", name.replace('_', " ")),
                    entries,
                });
            }
        }
    }
    let dataset = cells.first()?.dataset.clone();
    let (provenance, warnings) = provenance(cells);
    Some(Table {
        title: format!("{dataset}: method diagnostics"),
        caption: "Means over seeds of what methods record about themselves; for mean teacher, whether its consistency term did anything at this budget (mean weight, mean consistency loss while active, share of the total loss).".into(),
        corner: "method: diagnostic".into(),
        columns: ratios.iter().map(|r| ratio_header(cells, *r)).collect(),
        rows,
        notes: Vec::new(),
        provenance,
        warnings,
    })
}
