//! atso-reports: from results folders to what a paper, a reviewer or a CI log needs.
//!
//! `load` reads the tables of one or more results folders; `cells` decides what may be averaged
//! (one configuration, each seed once, no silent mixing of commits); `stats` holds the interval
//! and test statistics; `report` decides what the tables say and `table` lays them out as
//! Markdown, LaTeX, CSV and HTML; `plot` draws the figures; `check` holds results to a reference
//! file or compares two commits.

pub mod cells;
pub mod check;
pub mod curves;
pub mod load;
pub mod plot;
pub mod qualitative;
pub mod report;
pub mod stats;
pub mod table;

use anyhow::{bail, Context, Result};
use atso_schema::fsio::write_atomic;
/// The metric the figures plot: the registry's headline.
use atso_schema::metric_registry::DICE as HEADLINE;
use polars::prelude::{DataFrame, ParquetReader, SerReader};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Reads a parquet table of a results directory, naming the file in any error.
pub(crate) fn read_table(path: &Path) -> Result<DataFrame> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: no such table (run `atso sweep` first)", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not a readable parquet file: {e}", path.display()))
}

/// The comparisons the experiment files of `folders` declare (`[report] comparisons`, from the
/// copies a sweep keeps in `configs/`), in order, without repeats. A copy that no longer parses
/// (written by another version) is passed over with a warning.
pub fn declared_comparisons(folders: &[PathBuf]) -> Vec<[String; 2]> {
    let mut declared: Vec<[String; 2]> = Vec::new();
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(folder.join("configs")) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let parsed = std::fs::read_to_string(&path)
                .map_err(anyhow::Error::from)
                .and_then(|text| atso_schema::comparisons::declared_in(&text));
            match parsed {
                Ok(report) => {
                    for pair in report.comparisons {
                        if !declared.contains(&pair) {
                            declared.push(pair);
                        }
                    }
                }
                Err(err) => eprintln!("warning: {}: not read for declared comparisons: {err:#}", path.display()),
            }
        }
    }
    declared
}

/// How a report is made.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Average seeds recorded at different commits (marked ‡) instead of refusing.
    pub allow_mixed: bool,
    /// Record files that could not be read while the tables were rebuilt (for the footer).
    pub unreadable_records: usize,
}

/// Files written by [`render`].
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub csv: PathBuf,
    pub latex: Vec<PathBuf>,
    pub plots: Vec<PathBuf>,
}

/// Renders the report of `folders` (merged under the aggregation rules) into `out`:
/// report.md, report.html (self-contained: tables and inline SVG plots), report.csv (one row per
/// cell and metric), latex/*.tex (one booktabs table each, plus latex/all.tex inputting them)
/// and the plots as PNG + SVG.
pub fn render(folders: &[PathBuf], out: &Path, options: &ReportOptions) -> Result<ReportFiles> {
    if folders.is_empty() {
        bail!("no results folders given");
    }
    let tables = load::read(folders)?;
    let cells = cells::build(&tables.runs, options.allow_mixed)?;
    let declared = declared_comparisons(folders);
    let mut content = report::build(&tables, &cells, &declared);
    if options.unreadable_records > 0 {
        // Every table's footer says so too: a table copied into a paper keeps the caveat.
        for table in content.sections.iter_mut().flat_map(|s| s.tables.iter_mut()) {
            table
                .provenance
                .push(format!("{} unreadable record file(s) skipped", options.unreadable_records));
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut plots = Vec::new();
    let mut svgs: Vec<(String, Vec<String>)> = Vec::new();
    for dataset in cells::datasets(&cells) {
        let selected: Vec<cells::Cell> = cells.iter().filter(|c| c.dataset == dataset).cloned().collect();
        let mut dataset_svgs = Vec::new();
        for (figure, stem) in figures(&dataset, &selected, &tables)? {
            let rendered = match figure {
                AnyFigure::Dice(f) => plot::render(&f, out, &stem)?,
                AnyFigure::Grid(f) => plot::render(&f, out, &stem)?,
                AnyFigure::Bars(f) => plot::render(&f, out, &stem)?,
                AnyFigure::Bands(f) => plot::render(&f, out, &stem)?,
                AnyFigure::Cases(f) => f.render(out, &stem)?,
            };
            plots.extend(rendered.files);
            dataset_svgs.push(rendered.svg);
        }
        svgs.push((dataset, dataset_svgs));
    }
    let markdown = out.join("report.md");
    write_atomic(&markdown, markdown_document(&content, folders, options, &plots, out).as_bytes())?;
    let html = out.join("report.html");
    write_atomic(&html, html_document(&content, folders, options, &svgs).as_bytes())?;
    let csv = out.join("report.csv");
    write_atomic(&csv, csv_document(&cells).as_bytes())?;
    let mut latex = Vec::new();
    let mut all = String::from("% Generated by `atso report`; \\input this file (needs \\usepackage{booktabs}).\n");
    for section in &content.sections {
        for (i, table) in section.tables.iter().enumerate() {
            let name = format!("{}_{i:02}.tex", slug(&section.dataset));
            let path = out.join("latex").join(&name);
            write_atomic(&path, table::latex(table).as_bytes())?;
            let _ = writeln!(all, "\\input{{latex/{name}}}");
            latex.push(path);
        }
    }
    let all_path = out.join("latex").join("all.tex");
    write_atomic(&all_path, all.as_bytes())?;
    latex.push(all_path);
    Ok(ReportFiles {
        markdown,
        html,
        csv,
        latex,
        plots,
    })
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}

enum AnyFigure {
    Dice(plot::DiceVsRatio),
    Grid(plot::PanelGrid),
    Bars(plot::GroupedBars),
    Bands(plot::BandGrid),
    Cases(qualitative::Qualitative),
}

/// The figures of one dataset: Dice vs ratio, training curves (if runs recorded them), the
/// qualitative figure (if runs kept previews), lazy learning (if staged methods ran), per-class
/// bars (if the dataset has more than one scored class).
fn figures(dataset: &str, cells: &[cells::Cell], tables: &load::Tables) -> Result<Vec<(AnyFigure, String)>> {
    let mut out = Vec::new();
    let methods = cells::methods(cells);
    let series: Vec<plot::Series> = methods
        .iter()
        .map(|m| plot::Series {
            label: m.clone(),
            points: cells
                .iter()
                .filter(|c| &c.method == m)
                .filter_map(|c| {
                    let s = stats::summarise(&c.values(HEADLINE.column))?;
                    let half = if s.ci95.is_finite() { s.ci95 } else { f64::NAN };
                    Some((
                        100.0 * c.labeled_ratio,
                        100.0 * s.mean,
                        100.0 * (s.mean - half),
                        100.0 * (s.mean + half),
                    ))
                })
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if !series.is_empty() {
        out.push((
            AnyFigure::Dice(plot::DiceVsRatio {
                title: format!("{dataset}: test Dice vs labeled ratio"),
                y_label: "test Dice (%), mean over seeds".into(),
                series,
                cap: Some(100.0),
            }),
            format!("dice_vs_ratio_{}", slug(dataset)),
        ));
    }
    if let Some(figure) = curves::figure(dataset, cells, &tables.curves) {
        out.push((AnyFigure::Bands(figure), format!("curves_{}", slug(dataset))));
    }
    if let Some(figure) = qualitative::build(dataset, cells, &report::per_case_dice(tables))? {
        out.push((AnyFigure::Cases(figure), format!("cases_{}", slug(dataset))));
    }
    let means = report::stage_means(cells, &tables.stages);
    if !means.is_empty() {
        let ratios: Vec<f64> = cells::ratios(cells)
            .into_iter()
            .filter(|r| means.iter().any(|m| m.labeled_ratio == *r))
            .collect();
        let staged = cells::unique(means.iter().map(|m| m.method.clone()));
        let color_of = |m: &str| methods.iter().position(|x| x == m).unwrap_or(0);
        let line = |method: &str, ratio: f64, dashed: bool, label: String, f: &dyn Fn(&report::StageMean) -> Option<f64>| plot::Line {
            label,
            color: color_of(method),
            dashed,
            points: means
                .iter()
                .filter(|m| m.method == method && m.labeled_ratio == ratio)
                .filter_map(|m| Some((m.stage as f64, f(m)?)))
                .collect(),
        };
        let mut panels = Vec::new();
        type Measure = (&'static str, &'static str, fn(&report::StageMean) -> Option<f64>);
        let measures: [Measure; 2] = [
            ("validation Dice after the stage", "Dice (%)", |m| {
                m.validation_dice.map(|v| 100.0 * v)
            }),
            ("flip rate over foreground", "flip rate (%)", |m| m.flip_rate.map(|v| 100.0 * v)),
        ];
        for (title, y_label, f) in measures {
            for ratio in &ratios {
                panels.push(plot::Panel {
                    title: format!("{title}, {}% labeled", cells::format_ratio(*ratio)),
                    y_label: y_label.into(),
                    lines: staged.iter().map(|m| line(m, *ratio, false, m.clone(), &f)).collect(),
                });
            }
        }
        for ratio in &ratios {
            let mut lines = Vec::new();
            for m in &staged {
                lines.push(line(m, *ratio, true, format!("{m}: self labels"), &|s| s.loss_self));
                lines.push(line(m, *ratio, false, format!("{m}: cross labels"), &|s| s.loss_cross));
            }
            panels.push(plot::Panel {
                title: format!("first-step loss, {}% labeled", cells::format_ratio(*ratio)),
                y_label: "loss".into(),
                lines,
            });
        }
        let mut legend: Vec<(String, usize, bool)> = staged.iter().map(|m| (m.clone(), color_of(m), false)).collect();
        legend.push(("loss on self labels (dashed)".into(), 6, true));
        legend.push(("loss on cross labels (solid)".into(), 6, false));
        out.push((
            AnyFigure::Grid(plot::PanelGrid {
                title: format!("{dataset}: lazy learning per stage (means over seeds)"),
                x_label: "stage".into(),
                columns: ratios.len(),
                panels,
                legend,
            }),
            format!("lazy_learning_{}", slug(dataset)),
        ));
    }
    let classes: Vec<String> = {
        let mut names = Vec::new();
        for run in cells.iter().flat_map(|c| c.runs.iter()) {
            for (name, value) in &run.metrics {
                if let Some(class) = name
                    .strip_prefix(HEADLINE.per_class_prefix.unwrap_or_default())
                    .filter(|c| !atso_schema::records::RESERVED_CLASS_NAMES.contains(c))
                {
                    if value.is_some() && !names.contains(&class.to_string()) {
                        names.push(class.to_string());
                    }
                }
            }
        }
        names
    };
    if classes.len() > 1 {
        let panels = cells::ratios(cells)
            .into_iter()
            .map(|ratio| {
                let values = methods
                    .iter()
                    .map(|m| {
                        classes
                            .iter()
                            .map(|class| {
                                let cell = cells.iter().find(|c| &c.method == m && c.labeled_ratio == ratio)?;
                                let s = stats::summarise(&cell.values(&HEADLINE.class_column(class).unwrap_or_default()))?;
                                let half = if s.ci95.is_finite() { s.ci95 } else { f64::NAN };
                                Some((100.0 * s.mean, 100.0 * (s.mean - half), 100.0 * (s.mean + half)))
                            })
                            .collect()
                    })
                    .collect();
                (format!("{}% labeled", cells::format_ratio(ratio)), values)
            })
            .collect();
        out.push((
            AnyFigure::Bars(plot::GroupedBars {
                title: format!("{dataset}: test Dice per class (mean over seeds)"),
                y_label: "Dice (%)".into(),
                categories: classes,
                methods: methods.clone(),
                panels,
                cap: Some(100.0),
            }),
            format!("dice_per_class_{}", slug(dataset)),
        ));
    }
    Ok(out)
}

fn intro(folders: &[PathBuf], options: &ReportOptions) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Results folders: {}.",
            folders.iter().map(|f| format!("`{}`", f.display())).collect::<Vec<_>>().join(", ")
        ),
        "Test metrics are computed per case on its native grid (predictions resized back), then averaged over cases and classes; Dice uses MONAI's empty-class rule unless the runs say otherwise (docs/methods.md). A cell aggregates the runs of one configuration, one row per seed (its latest ok run).".into(),
    ];
    if options.unreadable_records > 0 {
        lines.push(format!(
            "Warning: {} record file(s) could not be read and were skipped (see the warnings of `atso report`).",
            options.unreadable_records
        ));
    }
    lines
}

fn markdown_document(content: &report::Content, folders: &[PathBuf], options: &ReportOptions, plots: &[PathBuf], out: &Path) -> String {
    let mut doc = String::from("# Results\n\n");
    for line in intro(folders, options) {
        let _ = writeln!(doc, "{line}\n");
    }
    for section in &content.sections {
        let _ = writeln!(doc, "## {}\n", section.dataset);
        for plot in plots.iter().filter(|p| p.extension().is_some_and(|e| e == "png")) {
            let name = plot.strip_prefix(out).unwrap_or(plot).display().to_string();
            if name.ends_with(&format!("{}.png", slug(&section.dataset))) {
                let _ = writeln!(doc, "![{name}]({name})\n");
            }
        }
        for table in &section.tables {
            doc.push_str(&table::markdown(table));
        }
    }
    if !content.failed.is_empty() {
        let _ = writeln!(doc, "## Failed runs\n");
        for (what, error) in &content.failed {
            let _ = writeln!(doc, "- {what}: {}", error.lines().next().unwrap_or(""));
        }
        let _ = writeln!(doc);
    }
    doc
}

fn html_document(content: &report::Content, folders: &[PathBuf], options: &ReportOptions, svgs: &[(String, Vec<String>)]) -> String {
    let mut doc = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>atso-bench report</title>\n<style>\n\
         body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\n\
         table{border-collapse:collapse;margin:1em 0}th,td{border-top:1px solid #ccc;border-bottom:1px solid #ccc;padding:4px 10px;text-align:center}\n\
         tbody th{text-align:left}small{color:#555}.warning{background:#fff3cd;padding:6px}.provenance,.notes{font-size:85%;color:#444}\n\
         figure{margin:1em 0}svg{max-width:100%;height:auto}\n</style></head><body>\n<h1>Results</h1>\n",
    );
    for line in intro(folders, options) {
        let _ = writeln!(doc, "<p>{}</p>", line.replace('&', "&amp;").replace('<', "&lt;"));
    }
    for section in &content.sections {
        let _ = writeln!(doc, "<h2>{}</h2>", section.dataset.replace('<', "&lt;"));
        if let Some((_, figures)) = svgs.iter().find(|(d, _)| *d == section.dataset) {
            for svg in figures {
                let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
                let _ = writeln!(doc, "<figure>{body}</figure>");
            }
        }
        for table in &section.tables {
            doc.push_str(&table::html(table));
        }
    }
    if !content.failed.is_empty() {
        let _ = writeln!(doc, "<h2>Failed runs</h2><ul>");
        for (what, error) in &content.failed {
            let _ = writeln!(
                doc,
                "<li>{}: {}</li>",
                what.replace('<', "&lt;"),
                error.lines().next().unwrap_or("").replace('<', "&lt;")
            );
        }
        let _ = writeln!(doc, "</ul>");
    }
    doc.push_str("</body></html>\n");
    doc
}

/// One row per cell and metric (long format, for spreadsheets and scripts).
fn csv_document(cells: &[cells::Cell]) -> String {
    let mut doc = String::from("dataset,method,method_kind,labeled_ratio,n_labeled,n_train,metric,n,mean,std,ci95_low,ci95_high,failed_seeds,mixed_commits,cell_hash,commits\n");
    for cell in cells {
        let mut metrics: Vec<String> = Vec::new();
        for run in &cell.runs {
            for (name, value) in &run.metrics {
                if value.is_some() && !metrics.contains(name) {
                    metrics.push(name.clone());
                }
            }
        }
        let (labeled, total) = cell.labeled().unwrap_or((0, 0));
        let commits = cells::unique(cell.runs.iter().map(|r| cells::short(&r.git_commit).to_string())).join(" ");
        for metric in metrics {
            let Some(s) = stats::summarise(&cell.values(&metric)) else {
                continue;
            };
            let quote = |t: &str| {
                if t.contains([',', '"']) {
                    format!("\"{}\"", t.replace('"', "\"\""))
                } else {
                    t.to_string()
                }
            };
            let _ = writeln!(
                doc,
                "{},{},{},{},{labeled},{total},{metric},{},{},{},{},{},{},{},{},{}",
                quote(&cell.dataset),
                quote(&cell.method),
                cell.method_kind,
                cell.labeled_ratio,
                s.n,
                s.mean,
                s.std,
                if s.ci95.is_finite() {
                    (s.mean - s.ci95).to_string()
                } else {
                    String::new()
                },
                if s.ci95.is_finite() {
                    (s.mean + s.ci95).to_string()
                } else {
                    String::new()
                },
                cell.failed_seeds.len(),
                cell.mixed,
                cell.cell_hash,
                commits
            );
        }
    }
    doc
}
