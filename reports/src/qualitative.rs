//! The qualitative figure: a few test cases, each as the image, its truth and every method's
//! prediction overlaid, one colour per class, side by side, as semi-supervised segmentation
//! papers show them. It is drawn from the preview slices the runs kept (harness `previews`).
//!
//! Which cases, by a stated rule (printed under the figure):
//! - the middle labeled ratio (the lower middle with an even count);
//! - the smallest seed every method ran successfully at that ratio;
//! - supervised-only's run there (the first method when there is none), its test cases ranked
//!   by their Dice (a case's mean over its classes), and the cases at the 25th, 50th and 75th
//!   percentile (nearest rank: index round(q x (n - 1)) in ascending order, ties by case id);
//! - for each case, its preview slice (where the truth's foreground is largest).

use crate::cells::{self, Cell};
use crate::plot::{ensure_font, err, Rendered};
use anyhow::{Context, Result};
use atso_schema::fsio;
use base64::Engine;
use image::{GrayImage, RgbImage};
use plotters::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

/// Percentiles of the reference method's per-case Dice that pick the cases.
pub const PERCENTILES: [u32; 3] = [25, 50, 75];

/// The cases the rule picks, and where they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub ratio: f64,
    pub seed: u64,
    /// The method whose per-case Dice ranks the cases.
    pub reference: String,
    /// (case id, the reference's Dice on it, percentile).
    pub cases: Vec<(String, f64, u32)>,
}

/// Nearest-rank picks at `PERCENTILES` of `per_case` (case -> Dice), without repeats.
pub fn pick_cases(per_case: &BTreeMap<String, f64>) -> Vec<(String, f64, u32)> {
    let mut ranked: Vec<(&String, f64)> = per_case.iter().map(|(c, d)| (c, *d)).collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
    let mut picked: Vec<(String, f64, u32)> = Vec::new();
    if ranked.is_empty() {
        return picked;
    }
    for q in PERCENTILES {
        let index = (f64::from(q) / 100.0 * (ranked.len() - 1) as f64).round() as usize;
        let (case, dice) = ranked[index];
        if !picked.iter().any(|(c, _, _)| c == case) {
            picked.push((case.clone(), dice, q));
        }
    }
    picked
}

/// Applies the rule to one dataset's cells; None when no ratio has a seed every method ran.
pub fn choose(cells: &[Cell], per_case: &HashMap<String, BTreeMap<String, f64>>) -> Option<Choice> {
    let ratios = cells::ratios(cells);
    let ratio = *ratios.get(ratios.len().checked_sub(1)? / 2)?;
    let at: Vec<&Cell> = cells.iter().filter(|c| c.labeled_ratio == ratio).collect();
    let seed = at
        .first()?
        .runs
        .iter()
        .map(|r| r.seed)
        .filter(|seed| at.iter().all(|c| c.runs.iter().any(|r| r.seed == *seed)))
        .min()?;
    let reference = at
        .iter()
        .find(|c| c.method_kind == "supervised" && c.method == "supervised")
        .or_else(|| at.iter().find(|c| c.method_kind == "supervised"))
        .or(at.first())?;
    let run = reference.runs.iter().find(|r| r.seed == seed)?;
    let cases = pick_cases(per_case.get(&run.run_id)?);
    (!cases.is_empty()).then(|| Choice {
        ratio,
        seed,
        reference: reference.method.clone(),
        cases,
    })
}

/// Colour of class `index` among `count` scored classes: the Okabe-Ito colours while they
/// last, evenly spaced hues beyond (the 19 classes of driving scenes).
fn class_color(index: usize, count: usize) -> [u8; 3] {
    const OKABE_ITO: [[u8; 3]; 7] = [
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [0, 114, 178],
        [213, 94, 0],
        [204, 121, 167],
    ];
    if count <= OKABE_ITO.len() {
        return OKABE_ITO[index];
    }
    let (r, g, b) = HSLColor(index as f64 / count as f64, 0.75, 0.5).to_rgba().rgb();
    [r, g, b]
}

/// One panel: the slice's grey image with the labels (if any) laid over it.
fn overlay(image: &GrayImage, labels: Option<&GrayImage>, first_class: usize, classes: usize) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let grey = image.get_pixel(x, y).0[0] as f32;
        let label = labels.map_or(0, |l| l.get_pixel(x, y).0[0] as usize);
        let index = label.wrapping_sub(first_class);
        if label == 255 || label < first_class || index >= classes {
            return image::Rgb([grey as u8; 3]);
        }
        let color = class_color(index, classes);
        image::Rgb(color.map(|c| (0.45 * grey + 0.55 * c as f32).round() as u8))
    })
}

/// The figure's content: column headers, rows of panels, the classes and the rule.
pub struct Qualitative {
    pub title: String,
    pub columns: Vec<String>,
    /// Per row: its label lines and one panel per column (None: no preview kept).
    pub rows: Vec<(Vec<String>, Vec<Option<RgbImage>>)>,
    pub classes: Vec<(String, [u8; 3])>,
    pub rule: String,
}

/// Builds the figure for one dataset from the previews of the counted runs, or None when the
/// rule picks nothing or no preview was kept.
pub fn build(dataset: &str, cells: &[Cell], per_case: &HashMap<String, BTreeMap<String, f64>>) -> Result<Option<Qualitative>> {
    let Some(choice) = choose(cells, per_case) else {
        return Ok(None);
    };
    let at: Vec<&Cell> = cells.iter().filter(|c| c.labeled_ratio == choice.ratio).collect();
    let runs: Vec<&crate::load::Run> = at
        .iter()
        .filter_map(|c| c.runs.iter().find(|r| r.seed == choice.seed).copied())
        .collect();
    let Some(first) = runs.first() else {
        return Ok(None);
    };
    let first_class = first.metric("first_class").map_or(1, |v| v as usize);
    let class_names: Vec<String> = first
        .metrics
        .iter()
        .filter_map(|(name, _)| name.strip_prefix(atso_schema::metric_registry::DICE.per_class_prefix.unwrap_or_default()))
        .filter(|c| !atso_schema::records::RESERVED_CLASS_NAMES.contains(c))
        .map(str::to_string)
        .collect();
    let shared = atso_schema::records::previews_of_dataset(&first.folder, dataset);
    let read = |path: &Path| -> Option<GrayImage> { image::open(path).ok().map(|i| i.into_luma8()) };
    let mut rows = Vec::new();
    let mut any = false;
    for (case, dice, q) in &choice.cases {
        let Some(image) = read(&shared.join(format!("{case}.image.png"))) else {
            continue;
        };
        let truth = read(&shared.join(format!("{case}.truth.png")));
        let mut panels = vec![Some(overlay(&image, None, first_class, class_names.len()))];
        panels.push(truth.as_ref().map(|t| overlay(&image, Some(t), first_class, class_names.len())));
        for run in &runs {
            let predicted = read(&atso_schema::records::previews_of_run(&run.folder, &run.run_id).join(format!("{case}.png")));
            any |= predicted.is_some();
            panels.push(
                predicted
                    .filter(|p| p.dimensions() == image.dimensions())
                    .map(|p| overlay(&image, Some(&p), first_class, class_names.len())),
            );
        }
        rows.push((
            vec![
                format!("case {case}"),
                format!("{} Dice {:.1}% (p{q})", choice.reference, 100.0 * dice),
            ],
            panels,
        ));
    }
    if rows.is_empty() || !any {
        return Ok(None);
    }
    let mut columns = vec!["image".to_string(), "truth".to_string()];
    columns.extend(
        at.iter()
            .filter(|c| c.runs.iter().any(|r| r.seed == choice.seed))
            .map(|c| c.method.clone()),
    );
    Ok(Some(Qualitative {
        title: format!("{dataset}: test cases, {}% labeled, seed {}", cells::format_ratio(choice.ratio), choice.seed),
        columns,
        rows,
        classes: class_names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), class_color(i, class_names.len())))
            .collect(),
        rule: format!(
            "Cases at the 25th, 50th and 75th percentile of {}'s per-case test Dice (middle labeled ratio, smallest seed every method ran); each at its slice with the most foreground in the truth, at the training resolution.",
            choice.reference
        ),
    }))
}

const PANEL: u32 = 170;
const GAP: u32 = 8;
const LEFT: u32 = 190;
const TOP: u32 = 80;
const LEGEND: u32 = 190;
const BOTTOM: u32 = 40;

impl Qualitative {
    fn size(&self) -> (u32, u32) {
        let columns = self.columns.len() as u32;
        let rows = self.rows.len() as u32;
        (LEFT + columns * (PANEL + GAP) + LEGEND, TOP + rows * (PANEL + GAP) + BOTTOM)
    }

    fn origin(row: usize, column: usize) -> (u32, u32) {
        (LEFT + column as u32 * (PANEL + GAP), TOP + row as u32 * (PANEL + GAP))
    }

    /// Text items: (x, y, size, text).
    fn texts(&self) -> Vec<(i32, i32, u32, String)> {
        let (width, height) = self.size();
        let mut out = vec![(12, 12, 22, self.title.clone())];
        for (column, name) in self.columns.iter().enumerate() {
            let (x, _) = Self::origin(0, column);
            out.push((x as i32, TOP as i32 - 24, 16, name.clone()));
        }
        for (row, (lines, _)) in self.rows.iter().enumerate() {
            let (_, y) = Self::origin(row, 0);
            for (i, line) in lines.iter().enumerate() {
                out.push((12, y as i32 + 60 + 20 * i as i32, 14, line.clone()));
            }
        }
        let legend_x = (width - LEGEND + 16) as i32;
        out.push((legend_x, TOP as i32 - 24, 16, "classes".into()));
        for (i, (name, _)) in self.classes.iter().enumerate() {
            out.push((legend_x + 24, TOP as i32 + 22 * i as i32, 14, name.clone()));
        }
        out.push((12, height as i32 - 28, 13, self.rule.clone()));
        out
    }

    /// The whole figure as RGB pixels, text included.
    fn raster(&self) -> Result<RgbImage> {
        let (width, height) = self.size();
        let mut canvas = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
        for (row, (_, panels)) in self.rows.iter().enumerate() {
            for (column, panel) in panels.iter().enumerate() {
                let (x0, y0) = Self::origin(row, column);
                match panel {
                    Some(panel) => {
                        let scaled = image::imageops::resize(panel, PANEL, PANEL, image::imageops::FilterType::Nearest);
                        image::imageops::overlay(&mut canvas, &scaled, i64::from(x0), i64::from(y0));
                    }
                    None => {
                        let blank = RgbImage::from_pixel(PANEL, PANEL, image::Rgb([235, 235, 235]));
                        image::imageops::overlay(&mut canvas, &blank, i64::from(x0), i64::from(y0));
                    }
                }
            }
        }
        let legend_x = width - LEGEND + 16;
        for (i, (_, color)) in self.classes.iter().enumerate() {
            let swatch = RgbImage::from_pixel(16, 16, image::Rgb(*color));
            image::imageops::overlay(&mut canvas, &swatch, i64::from(legend_x), i64::from(TOP + 22 * i as u32));
        }
        let mut pixels = canvas.into_raw();
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
            for (x, y, size, text) in self.texts() {
                root.draw(&Text::new(text, (x, y), ("sans-serif", size).into_font())).map_err(err)?;
            }
            root.present().map_err(err)?;
        }
        RgbImage::from_raw(width, height, pixels).context("figure size")
    }

    /// The figure as SVG: each panel an embedded PNG at its own resolution (scaled without
    /// smoothing), the text as text.
    fn svg(&self) -> Result<String> {
        let (width, height) = self.size();
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n"
        );
        for (row, (_, panels)) in self.rows.iter().enumerate() {
            for (column, panel) in panels.iter().enumerate() {
                let (x, y) = Self::origin(row, column);
                match panel {
                    Some(panel) => {
                        let mut png = std::io::Cursor::new(Vec::new());
                        panel.write_to(&mut png, image::ImageFormat::Png).context("encoding a panel")?;
                        let data = base64::engine::general_purpose::STANDARD.encode(png.into_inner());
                        let _ = writeln!(
                            out,
                            "<image x=\"{x}\" y=\"{y}\" width=\"{PANEL}\" height=\"{PANEL}\" style=\"image-rendering:pixelated\" preserveAspectRatio=\"none\" href=\"data:image/png;base64,{data}\"/>"
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "<rect x=\"{x}\" y=\"{y}\" width=\"{PANEL}\" height=\"{PANEL}\" fill=\"#ebebeb\"/>"
                        );
                    }
                }
            }
        }
        let legend_x = width - LEGEND + 16;
        for (i, (_, [r, g, b])) in self.classes.iter().enumerate() {
            let _ = writeln!(
                out,
                "<rect x=\"{legend_x}\" y=\"{}\" width=\"16\" height=\"16\" fill=\"rgb({r},{g},{b})\"/>",
                TOP + 22 * i as u32
            );
        }
        for (x, y, size, text) in self.texts() {
            let _ = writeln!(
                out,
                "<text x=\"{x}\" y=\"{}\" font-family=\"sans-serif\" font-size=\"{size}\">{}</text>",
                y + size as i32,
                escape(&text)
            );
        }
        out.push_str("</svg>\n");
        Ok(out)
    }

    /// Writes `<dir>/<stem>.png` and `.svg`, each whole or not at all.
    pub fn render(&self, dir: &Path, stem: &str) -> Result<Rendered> {
        ensure_font()?;
        let png_path = dir.join(format!("{stem}.png"));
        let mut png = std::io::Cursor::new(Vec::new());
        self.raster()?
            .write_to(&mut png, image::ImageFormat::Png)
            .with_context(|| format!("encoding {}", png_path.display()))?;
        fsio::write_atomic(&png_path, &png.into_inner())?;
        let svg_path = dir.join(format!("{stem}.svg"));
        let svg = self.svg()?;
        fsio::write_atomic(&svg_path, svg.as_bytes())?;
        Ok(Rendered {
            files: vec![png_path, svg_path],
            svg,
        })
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_at_the_quartiles_by_nearest_rank() {
        // Nine cases, Dice 0.1 .. 0.9 (c8 has the lowest): indices 2, 4, 6 of the ranking.
        let per_case: BTreeMap<String, f64> = (0..9).map(|i| (format!("c{i}"), 0.1 * (9 - i) as f64)).collect();
        let picked = pick_cases(&per_case);
        let ids: Vec<(&str, u32)> = picked.iter().map(|(c, _, q)| (c.as_str(), *q)).collect();
        assert_eq!(ids, [("c6", 25), ("c4", 50), ("c2", 75)]);
        // Ties rank by case id; two cases give index round(0.25) = 0 and round(0.5) = 1 (0.5
        // rounds away from zero), and the 75th repeats the second: two picks.
        let two: BTreeMap<String, f64> = [("b".to_string(), 0.5), ("a".to_string(), 0.5)].into();
        let picked: Vec<String> = pick_cases(&two).into_iter().map(|(c, _, _)| c).collect();
        assert_eq!(picked, ["a", "b"]);
        assert!(pick_cases(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn overlays_colour_scored_classes_and_keep_the_rest_grey() {
        let image = GrayImage::from_raw(2, 2, vec![0, 100, 200, 250]).unwrap();
        let labels = GrayImage::from_raw(2, 2, vec![0, 1, 3, 255]).unwrap();
        let out = overlay(&image, Some(&labels), 1, 3);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0], "background stays grey");
        assert_eq!(out.get_pixel(1, 1).0, [250, 250, 250], "ignored pixels stay grey");
        let [r, g, b] = class_color(0, 3);
        let blend = |c: u8| (0.45 * 100.0 + 0.55 * c as f32).round() as u8;
        assert_eq!(out.get_pixel(1, 0).0, [blend(r), blend(g), blend(b)], "class 1 in the first colour");
        assert_ne!(out.get_pixel(0, 1).0, [200, 200, 200], "class 3 coloured too");
    }
}
