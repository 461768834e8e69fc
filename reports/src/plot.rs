//! Figures, as PNG and SVG (and the SVG text for the HTML report): Dice against labeled ratio
//! with 95 % interval bars, the lazy-learning view per stage (one column per labeled ratio), and
//! per-class Dice bars. Legends sit in their own area beside the panels, so they never cover data.
//!
//! Text is drawn with a TrueType font found on the system (or named by `ATSO_FONT`), so the plots
//! need no C font stack at build time. Files are written whole or not at all.

use anyhow::{anyhow, Context, Result};
use atso_schema::fsio;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// A colour-blind-safe palette (Okabe-Ito), then greys.
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(100, 100, 100),
    RGBColor(0, 0, 0),
];

/// The colour of the `i`-th method.
pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// The marker of the `i`-th method at `at`: a filled circle for the first eight methods, then,
/// as the colours repeat, a triangle, then a cross, so no two methods look alike.
fn marker<'a, DB: DrawingBackend, C: Clone + 'static>(i: usize, at: C, size: i32) -> DynElement<'a, DB, C> {
    let c = color(i);
    match (i / COLORS.len()) % 3 {
        0 => Circle::new(at, size, c.filled()).into_dyn(),
        1 => TriangleMarker::new(at, size + 4, c.filled()).into_dyn(),
        _ => Cross::new(at, size + 2, c.stroke_width(3)).into_dyn(),
    }
}

/// The bar style of the `i`-th method: filled for the first eight, then outlined.
fn bar_style(i: usize) -> ShapeStyle {
    let c = color(i);
    if i < COLORS.len() {
        c.filled()
    } else {
        c.stroke_width(2)
    }
}

/// Registers a sans-serif font once per process.
pub(crate) fn ensure_font() -> Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let from_env = std::env::var("ATSO_FONT").ok();
        let candidates = from_env.iter().map(String::as_str).chain(FONT_CANDIDATES);
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no usable TrueType font found (tried $ATSO_FONT and {}); set ATSO_FONT=/path/to/font.ttf \
             or install one (Debian: apt-get install fonts-dejavu-core)",
            FONT_CANDIDATES.join(", ")
        ))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Something that can draw itself on any plotters backend.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Files written for a figure, and its SVG text (for embedding).
pub struct Rendered {
    pub files: Vec<PathBuf>,
    pub svg: String,
}

/// Writes `figure` as `<dir>/<stem>.png` and `.svg`.
pub fn render(figure: &impl Figure, dir: &Path, stem: &str) -> Result<Rendered> {
    ensure_font()?;
    let png = dir.join(format!("{stem}.png"));
    let svg_path = dir.join(format!("{stem}.svg"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, figure.size()).into_drawing_area();
        figure.draw(&root).with_context(|| format!("drawing {}", svg_path.display()))?;
        root.present().map_err(|e| anyhow!("drawing {}: {e}", svg_path.display()))?;
    }
    fsio::write_atomic(&svg_path, svg.as_bytes())?;
    // The bitmap backend writes to a path: draw into a unique temporary file, then rename.
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        // The bitmap backend picks the format from the extension: `.tmp.png`.
        .prefix(&format!(".{stem}.{}.", atso_schema::leftovers::owner_tag()))
        .suffix(".tmp.png")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file for {}", png.display()))?;
    {
        let root = BitMapBackend::new(tmp.path(), figure.size()).into_drawing_area();
        figure.draw(&root).with_context(|| format!("drawing {}", png.display()))?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
    }
    // The backend wrote through its own handle; syncing ours flushes the same file's data.
    tmp.as_file().sync_all().with_context(|| format!("syncing {}", png.display()))?;
    fsio::set_created_mode(tmp.as_file(), &png)?;
    tmp.persist(&png)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", png.display()))?;
    Ok(Rendered {
        files: vec![png, svg_path],
        svg,
    })
}

/// Tick labels with no more decimals than the axis span needs (about ten ticks a span, so the
/// decimals that tell neighbouring ticks apart).
fn tick(value: f64, span: f64) -> String {
    let decimals = if span >= 10.0 {
        0
    } else if span > 0.0 {
        ((-(span / 10.0).log10()).ceil().max(1.0) as usize).min(6)
    } else {
        2
    };
    format!("{value:.decimals$}")
}

/// A value read off a log10 axis, with two significant digits ("0.25", "1.2", "30").
fn log_tick(log10: f64) -> String {
    let value = 10f64.powf(log10);
    let decimals = (1.0 - value.log10().floor()).max(0.0) as usize;
    format!("{value:.decimals$}")
}

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("{e:?}")
}

/// A legend in its own area: one line per entry (colour, dashed or not, label).
/// `entries`: (label, method index, dashed).
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, entries: &[(String, usize, bool)]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let font = ("sans-serif", 15).into_font();
    area.draw(&Text::new(title.to_string(), (10, 30), font.clone().style(FontStyle::Normal)))
        .map_err(err)?;
    for (i, (label, method, dashed)) in entries.iter().enumerate() {
        let y = 58 + 24 * i as i32;
        let style = color(*method).stroke_width(3);
        if *dashed {
            for x in (10..40).step_by(10) {
                area.draw(&PathElement::new(vec![(x, y), (x + 6, y)], style)).map_err(err)?;
            }
        } else {
            area.draw(&PathElement::new(vec![(10, y), (40, y)], style)).map_err(err)?;
        }
        area.draw(&marker(*method, (25, y), 4)).map_err(err)?;
        area.draw(&Text::new(label.clone(), (48, y - 8), font.clone())).map_err(err)?;
    }
    Ok(())
}

/// One method's points with a 95 % interval: (x, mean, low, high).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// Test Dice against labeled ratio, one line per method, 95 % interval bars.
pub struct DiceVsRatio {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Largest meaningful value (100 for percentages): the axis and whiskers stop there.
    pub cap: Option<f64>,
}

impl Figure for DiceVsRatio {
    fn size(&self) -> (u32, u32) {
        (1100, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(&self.title, ("sans-serif", 24)).map_err(err)?;
        let (plot, legend) = root.split_horizontally(820);
        let xs = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let (x_min, x_max) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
        let (x_min, x_max) = if x_min.is_finite() { (x_min, x_max) } else { (0.0, 100.0) };
        let pad = ((x_max - x_min) * 0.06).max(2.0);
        let (low, high) = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|p| [p.1, p.2, p.3]))
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let (low, high) = if low.is_finite() { (low, high) } else { (0.0, 100.0) };
        let margin = ((high - low) * 0.08).max(2.0);
        let y_top = self.cap.map_or(high + margin, |cap| (high + margin).min(cap));
        let mut chart = ChartBuilder::on(&plot)
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((x_min - pad)..(x_max + pad), (low - margin).max(0.0)..y_top)
            .map_err(err)?;
        let (x_span, y_span) = (x_max - x_min + 2.0 * pad, y_top - (low - margin).max(0.0));
        chart
            .configure_mesh()
            .light_line_style(RGBColor(238, 238, 238))
            .x_label_formatter(&|v| tick(*v, x_span))
            .y_label_formatter(&|v| tick(*v, y_span))
            .x_desc("labeled cases (%)")
            .y_desc(self.y_label.clone())
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 17))
            .draw()
            .map_err(err)?;
        // Methods sharing an x are nudged apart so their bars do not hide each other.
        let nudge = (x_max - x_min + 2.0 * pad) * 0.008;
        let clip = |v: f64| self.cap.map_or(v, |cap| v.min(cap)).max(0.0);
        let count = self.series.len() as f64;
        let mut entries = Vec::new();
        for (i, series) in self.series.iter().enumerate() {
            let c = color(i);
            let offset = (i as f64 - (count - 1.0) / 2.0) * nudge;
            let points: Vec<(f64, f64)> = series.points.iter().map(|p| (p.0 + offset, p.1)).collect();
            // Once the colours repeat, lines are dashed too (this chart gives dashes no other meaning).
            let dashed = i >= COLORS.len();
            if dashed {
                chart
                    .draw_series(DashedLineSeries::new(points.clone(), 8, 5, c.stroke_width(2)))
                    .map_err(err)?;
            } else {
                chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(2))).map_err(err)?;
            }
            chart.draw_series(points.iter().map(|p| marker(i, *p, 5))).map_err(err)?;
            chart
                .draw_series(
                    series
                        .points
                        .iter()
                        .filter(|p| p.2.is_finite() && p.3.is_finite())
                        .map(|p| ErrorBar::new_vertical(p.0 + offset, clip(p.2), p.1, clip(p.3), c.stroke_width(2), 10)),
                )
                .map_err(err)?;
            entries.push((series.label.clone(), i, dashed));
        }
        draw_legend(&legend, "method (bars: 95% CI)", &entries)
    }
}

/// A line of one panel: label, colour index, dashed, (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub color: usize,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// One panel of a grid figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub lines: Vec<Line>,
}

/// Panels in a grid (rows x columns), x = stage, with one shared legend.
pub struct PanelGrid {
    pub title: String,
    pub x_label: String,
    pub columns: usize,
    pub panels: Vec<Panel>,
    pub legend: Vec<(String, usize, bool)>,
}

impl Figure for PanelGrid {
    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(self.columns.max(1)) as u32;
        (420 * self.columns as u32 + 300, 300 * rows + 60)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(&self.title, ("sans-serif", 22)).map_err(err)?;
        let width = 420 * self.columns as u32;
        let (grid, legend) = root.split_horizontally(width);
        let rows = self.panels.len().div_ceil(self.columns.max(1));
        let areas = grid.split_evenly((rows, self.columns.max(1)));
        for (panel, area) in self.panels.iter().zip(&areas) {
            let xs: Vec<f64> = panel.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).collect();
            let x_max = xs.iter().copied().fold(1.0, f64::max);
            let ys: Vec<f64> = panel
                .lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| p.1))
                .filter(|v| v.is_finite())
                .collect();
            let y_low = ys.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
            let y_high = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            // An all-zero panel still gets a readable axis.
            let y_high = if y_high.is_finite() && y_high - y_low > 1e-3 {
                y_high
            } else {
                y_low + 1.0
            };
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 15))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(0.5..(x_max + 0.5), y_low..(y_high * 1.12))
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(self.x_label.clone())
                .y_desc(panel.y_label.clone())
                .x_labels(x_max as usize + 1)
                .x_label_formatter(&|x| {
                    if (x - x.round()).abs() < 1e-6 {
                        format!("{}", x.round() as i64)
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|v| tick(*v, y_high * 1.12 - y_low))
                .light_line_style(RGBColor(238, 238, 238))
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 14))
                .draw()
                .map_err(err)?;
            for line in &panel.lines {
                let c = color(line.color);
                let points: Vec<(f64, f64)> = line.points.iter().copied().filter(|p| p.1.is_finite()).collect();
                if line.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(points.clone(), 8, 5, c.stroke_width(2)))
                        .map_err(err)?;
                } else {
                    chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(2))).map_err(err)?;
                }
                chart.draw_series(points.iter().map(|p| marker(line.color, *p, 4))).map_err(err)?;
            }
        }
        let entries: Vec<(String, usize, bool)> = self.legend.iter().map(|(l, c, d)| (l.clone(), *c, *d)).collect();
        draw_legend(&legend, "", &entries)
    }
}

/// Per method, per category: (mean, low, high) where measured.
pub type BarValues = Vec<Vec<Option<(f64, f64, f64)>>>;

/// Grouped bars: for each category (class), one bar per method with a 95 % interval whisker;
/// one panel per group (labeled ratio).
pub struct GroupedBars {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub methods: Vec<String>,
    /// Per panel: title and, per method, per category, (mean, low, high).
    pub panels: Vec<(String, BarValues)>,
    /// Largest meaningful value (100 for percentages).
    pub cap: Option<f64>,
}

impl Figure for GroupedBars {
    fn size(&self) -> (u32, u32) {
        let per_panel = (120 * self.categories.len().max(1) as u32).max(360);
        (per_panel * self.panels.len().max(1) as u32 + 280, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(&self.title, ("sans-serif", 22)).map_err(err)?;
        let (width, _) = root.dim_in_pixel();
        let (grid, legend) = root.split_horizontally(width.saturating_sub(280));
        let areas = grid.split_evenly((1, self.panels.len().max(1)));
        let categories = self.categories.len().max(1);
        let methods = self.methods.len().max(1);
        let top = self
            .panels
            .iter()
            .flat_map(|(_, values)| values.iter().flatten().flatten().map(|v| v.2.max(v.0)))
            .filter(|v| v.is_finite())
            .fold(1.0, f64::max);
        let top = self.cap.map_or(top * 1.08, |cap| (top * 1.08).min(cap));
        let clip = |v: f64| v.clamp(0.0, top);
        for ((title, values), area) in self.panels.iter().zip(&areas) {
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(-0.5..(categories as f64 - 0.5), 0.0..top)
                .map_err(err)?;
            let names = self.categories.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(RGBColor(238, 238, 238))
                .y_label_formatter(&|v| tick(*v, top))
                .y_desc(self.y_label.clone())
                .x_labels(categories)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 {
                        names.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 14))
                .draw()
                .map_err(err)?;
            let slot = 0.8 / methods as f64;
            for (m, per_category) in values.iter().enumerate() {
                for (k, value) in per_category.iter().enumerate() {
                    let Some((mean, low, high)) = value else { continue };
                    let left = k as f64 - 0.4 + slot * m as f64;
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(left, 0.0), (left + slot * 0.9, *mean)],
                            bar_style(m),
                        )))
                        .map_err(err)?;
                    if low.is_finite() && high.is_finite() {
                        let centre = left + slot * 0.45;
                        chart
                            .draw_series(std::iter::once(ErrorBar::new_vertical(
                                centre,
                                clip(*low),
                                *mean,
                                clip(*high),
                                BLACK.stroke_width(1),
                                6,
                            )))
                            .map_err(err)?;
                    }
                }
            }
        }
        let entries: Vec<(String, usize, bool)> = self.methods.iter().enumerate().map(|(i, m)| (m.clone(), i, false)).collect();
        draw_legend(&legend, "method (whiskers: 95% CI)", &entries)
    }
}

/// One method's curve over seeds: per x, the median and the range (lowest, highest) over the
/// seeds, and the x positions where its training phases end (stage boundaries).
#[derive(Debug, Clone, PartialEq)]
pub struct BandSeries {
    pub label: String,
    pub color: usize,
    /// (x, median, low, high).
    pub points: Vec<(f64, f64, f64, f64)>,
    pub boundaries: Vec<f64>,
}

/// A panel of a [`BandGrid`].
#[derive(Debug, Clone, PartialEq)]
pub struct BandPanel {
    pub title: String,
    pub y_label: String,
    /// Values are drawn on a log10 axis (losses span decades).
    pub log_y: bool,
    pub series: Vec<BandSeries>,
}

/// Panels of curves over training steps: a median line per method with the seeds' range as a
/// band, and each staged method's phase ends as dotted verticals in its colour.
pub struct BandGrid {
    pub title: String,
    pub x_label: String,
    pub columns: usize,
    pub panels: Vec<BandPanel>,
    pub legend: Vec<(String, usize, bool)>,
}

impl Figure for BandGrid {
    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(self.columns.max(1)) as u32;
        (460 * self.columns.max(1) as u32 + 320, 320 * rows + 60)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(&self.title, ("sans-serif", 22)).map_err(err)?;
        let (grid, legend) = root.split_horizontally(460 * self.columns.max(1) as u32);
        let rows = self.panels.len().div_ceil(self.columns.max(1));
        let areas = grid.split_evenly((rows, self.columns.max(1)));
        for (panel, area) in self.panels.iter().zip(&areas) {
            let y = |v: f64| if panel.log_y { v.max(1e-12).log10() } else { v };
            let xs = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
            let x_max = xs.fold(1.0, f64::max);
            let ys: Vec<f64> = panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().flat_map(|p| [y(p.2), y(p.3)]))
                .filter(|v| v.is_finite())
                .collect();
            let low = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let high = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (low, high) = if low.is_finite() && high - low > 1e-9 {
                (low, high)
            } else if low.is_finite() {
                (low - 0.5, low + 0.5)
            } else {
                (0.0, 1.0)
            };
            let (low, high) = if panel.log_y {
                (low - 0.05 * (high - low), high + 0.05 * (high - low))
            } else {
                (low.min(0.0), high + 0.08 * (high - low))
            };
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 15))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..x_max, low..high)
                .map_err(err)?;
            let log = panel.log_y;
            chart
                .configure_mesh()
                .x_desc(self.x_label.clone())
                .y_desc(panel.y_label.clone())
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|v| if log { log_tick(*v) } else { tick(*v, high - low) })
                .light_line_style(RGBColor(238, 238, 238))
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 14))
                .draw()
                .map_err(err)?;
            for series in &panel.series {
                let c = color(series.color);
                for &x in &series.boundaries {
                    chart
                        .draw_series(DashedLineSeries::new(vec![(x, low), (x, high)], 3, 4, c.mix(0.6).stroke_width(1)))
                        .map_err(err)?;
                }
                let points: Vec<&(f64, f64, f64, f64)> = series
                    .points
                    .iter()
                    .filter(|p| y(p.1).is_finite() && y(p.2).is_finite() && y(p.3).is_finite())
                    .collect();
                if points.len() > 1 {
                    let band: Vec<(f64, f64)> = points
                        .iter()
                        .map(|p| (p.0, y(p.3)))
                        .chain(points.iter().rev().map(|p| (p.0, y(p.2))))
                        .collect();
                    chart
                        .draw_series(std::iter::once(Polygon::new(band, c.mix(0.18).filled())))
                        .map_err(err)?;
                }
                chart
                    .draw_series(LineSeries::new(points.iter().map(|p| (p.0, y(p.1))), c.stroke_width(2)))
                    .map_err(err)?;
            }
        }
        draw_legend(&legend, "median over seeds; band: range", &self.legend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_tell_neighbouring_ticks_apart() {
        assert_eq!(tick(42.0, 80.0), "42");
        assert_eq!(tick(2.5, 4.0), "2.5");
        assert_eq!(tick(0.25, 0.6), "0.25");
        // A learning-rate axis 0..0.05: ticks 0.005 apart need three decimals.
        assert_eq!(tick(0.035, 0.05), "0.035");
        assert_eq!(log_tick(0.0), "1.0");
        assert_eq!(log_tick((0.25f64).log10()), "0.25");
        assert_eq!(log_tick((30.0f64).log10()), "30");
    }
}
