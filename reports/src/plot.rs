//! Dice vs labeled ratio, one line per method with ±1 std error bars, as PNG and SVG.
//!
//! Text is drawn with a TrueType font found on the system (or named by `ATSO_FONT`), so the plots
//! need no C font stack at build time.

use crate::aggregate::{self, Group};
use crate::stages::StageMean;
use anyhow::{anyhow, Context, Result};
use plotters::coord::types::RangedCoordf64;
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

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Registers a sans-serif font once per process.
fn ensure_font() -> Result<()> {
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

/// Draws the plot for `dataset` into `<dir>/dice_vs_ratio_<dataset>.{png,svg}`.
pub fn dice_vs_ratio(dir: &Path, dataset: &str, groups: &[Group]) -> Result<Vec<PathBuf>> {
    render_both(
        dir,
        "dice_vs_ratio",
        dataset,
        (900, 600),
        |root| draw(root, dataset, groups),
        |root| draw(root, dataset, groups),
    )
}

/// Draws one figure as `<dir>/<prefix>_<dataset>.png` and `.svg` (the same drawing code for both
/// backends).
fn render_both(
    dir: &Path,
    prefix: &str,
    dataset: &str,
    size: (u32, u32),
    draw_png: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
    draw_svg: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let stem = format!("{prefix}_{}", dataset.replace(['/', '\\', ' '], "_"));
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw_png(&root).with_context(|| format!("drawing {}", png.display()))?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw_svg(&root).with_context(|| format!("drawing {}", svg.display()))?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
    }
    Ok(vec![png, svg])
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, dataset: &str, groups: &[Group]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let ratios = aggregate::ratios(groups);
    let x_max = ratios.iter().cloned().fold(0.0, f64::max) * 100.0;
    let x_min = ratios.iter().cloned().fold(f64::INFINITY, f64::min) * 100.0;
    let pad = ((x_max - x_min) * 0.05).max(1.0);
    let (low, high) = groups
        .iter()
        .filter_map(|g| Some((g.mean()? - g.std()?, g.mean()? + g.std()?)))
        .fold((1.0f64, 0.0f64), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)));
    let y_range = ((low * 100.0 - 5.0).max(0.0))..((high * 100.0 + 5.0).min(100.0));
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{dataset}: test Dice vs labeled ratio"), ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min - pad)..(x_max + pad), y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("labeled cases (%)")
        .y_desc("Dice (%), mean ± std over seeds")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, method) in aggregate::methods(groups).iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64, f64)> = groups
            .iter()
            .filter(|g| &g.method == method)
            .filter_map(|g| Some((g.labeled_ratio * 100.0, g.mean()? * 100.0, g.std()? * 100.0)))
            .collect();
        let line: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
        method_series(&mut chart, method, color, &line)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.filled(), 8)),
            )
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

/// Draws the lazy-learning figure for `dataset` into `<dir>/lazy_learning_<dataset>.{png,svg}`:
/// first-step loss on the stage's pseudo labels (left) and flip rate (right) per stage.
pub fn lazy_learning(dir: &Path, dataset: &str, means: &[StageMean]) -> Result<Vec<PathBuf>> {
    render_both(
        dir,
        "lazy_learning",
        dataset,
        (1100, 480),
        |root| draw_stages(root, dataset, means),
        |root| draw_stages(root, dataset, means),
    )
}

/// One per-stage quantity drawn in a panel.
type Measure = fn(&StageMean) -> f64;

fn draw_stages<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, dataset: &str, means: &[StageMean]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(&format!("{dataset}: lazy learning per stage (mean over runs)"), ("sans-serif", 22))
        .map_err(err)?;
    let (left, right) = root.split_horizontally(550);
    let measures: [(&str, Measure); 2] = [
        ("first-step loss on its pseudo labels", |m| m.first_step_pseudo_loss),
        ("flip rate over the stage", |m| m.flip_rate),
    ];
    let mut methods: Vec<&str> = Vec::new();
    for m in means {
        if !methods.contains(&m.method.as_str()) {
            methods.push(&m.method);
        }
    }
    let max_stage = means.iter().map(|m| m.stage).max().unwrap_or(1) as f64;
    for (area, (label, value)) in [&left, &right].into_iter().zip(measures) {
        let top = means.iter().map(value).filter(|v| v.is_finite()).fold(0.0, f64::max) * 1.15 + 1e-6;
        let mut chart = ChartBuilder::on(area)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5..(max_stage + 0.5), 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("stage")
            .y_desc(label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for (i, method) in methods.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = means
                .iter()
                .filter(|m| m.method == *method)
                .map(|m| (m.stage as f64, value(m)))
                .collect();
            method_series(&mut chart, method, color, &points)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One method's line with point markers and a legend entry.
fn method_series<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>, method: &str, color: RGBColor, points: &[(f64, f64)]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    chart
        .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
        .map_err(err)?
        .label(method.to_string())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
        .map_err(err)?;
    Ok(())
}

/// The legend box, in `position`.
fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>, position: SeriesLabelPosition) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))
}
