//! The training-curves figure: what a researcher looks at before reading a table. Per labeled
//! ratio, the loss (log scale), the learning rate and, where runs scored validation cases during
//! training, validation Dice over the steps; per method the median over its seeds with their
//! range as a band, and a staged method's phase ends (M0, each stage) as dotted verticals.
//!
//! Seeds of one cell share their schedule, so their curve points fall on the same steps; a step
//! some seeds lack (a failed run) is summarised over the seeds that have it.

use crate::cells::{self, Cell};
use crate::load::CurveRow;
use crate::plot::{BandGrid, BandPanel, BandSeries};
use std::collections::{BTreeMap, HashMap};

/// Median, lowest and highest of `values` (not empty).
fn median_and_range(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    };
    (median, values[0], values[n - 1])
}

/// Per step, (median, low, high) over `runs` of the value `pick` reads from their curve points.
pub fn summarise_over_seeds(runs: &[&[&CurveRow]], pick: &dyn Fn(&CurveRow) -> Option<f64>) -> Vec<(f64, f64, f64, f64)> {
    let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for points in runs {
        for point in *points {
            if let Some(value) = pick(point) {
                by_step.entry(point.step).or_default().push(value);
            }
        }
    }
    by_step
        .into_iter()
        .map(|(step, mut values)| {
            let (median, low, high) = median_and_range(&mut values);
            (step as f64, median, low, high)
        })
        .collect()
}

/// The steps at which one run's phases end, except the last (where the run ends).
pub fn phase_ends(points: &[&CurveRow]) -> Vec<f64> {
    points
        .windows(2)
        .filter(|w| w[0].phase != w[1].phase)
        .map(|w| w[0].step as f64)
        .collect()
}

/// The figure for one dataset's cells, or None when no run recorded a curve.
pub fn figure(dataset: &str, cells: &[Cell], curves: &[CurveRow]) -> Option<BandGrid> {
    let mut by_run: HashMap<&str, Vec<&CurveRow>> = HashMap::new();
    for row in curves {
        by_run.entry(row.run_id.as_str()).or_default().push(row);
    }
    for points in by_run.values_mut() {
        points.sort_by_key(|p| p.step);
    }
    let methods = cells::methods(cells);
    let ratios = cells::ratios(cells);
    let series_of = |ratio: f64, pick: &dyn Fn(&CurveRow) -> Option<f64>| -> Vec<BandSeries> {
        methods
            .iter()
            .enumerate()
            .filter_map(|(color, method)| {
                let cell = cells.iter().find(|c| &c.method == method && c.labeled_ratio == ratio)?;
                let runs: Vec<&[&CurveRow]> = cell
                    .runs
                    .iter()
                    .filter_map(|r| by_run.get(r.run_id.as_str()).map(Vec::as_slice))
                    .collect();
                let points = summarise_over_seeds(&runs, pick);
                (!points.is_empty()).then(|| BandSeries {
                    label: method.clone(),
                    color,
                    points,
                    boundaries: runs.first().map(|r| phase_ends(r)).unwrap_or_default(),
                })
            })
            .collect()
    };
    type Quantity = (&'static str, &'static str, bool, fn(&CurveRow) -> Option<f64>);
    let quantities: [Quantity; 3] = [
        ("loss", "loss (log scale)", true, |p| p.loss.filter(|v| *v > 0.0)),
        ("learning rate", "learning rate", false, |p| p.lr),
        ("validation Dice", "Dice (%)", false, |p| p.validation_dice.map(|d| 100.0 * d)),
    ];
    let mut panels = Vec::new();
    for (name, y_label, log_y, pick) in quantities {
        let row: Vec<BandPanel> = ratios
            .iter()
            .map(|ratio| BandPanel {
                title: format!("{name}, {}% labeled", cells::format_ratio(*ratio)),
                y_label: y_label.into(),
                log_y,
                series: series_of(*ratio, &pick),
            })
            .collect();
        // Validation during training is optional: its row only when some run measured it.
        if row.iter().any(|p| !p.series.is_empty()) {
            panels.extend(row);
        }
    }
    if panels.is_empty() {
        return None;
    }
    let mut legend: Vec<(String, usize, bool)> = methods.iter().enumerate().map(|(i, m)| (m.clone(), i, false)).collect();
    legend.push(("phase ends (dotted, staged methods)".into(), 6, true));
    Some(BandGrid {
        title: format!("{dataset}: training curves"),
        x_label: "step".into(),
        columns: ratios.len(),
        panels,
        legend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(run: &str, step: u64, phase: u64, loss: f64) -> CurveRow {
        CurveRow {
            run_id: run.into(),
            step,
            phase,
            phase_name: String::new(),
            lr: Some(0.1),
            loss: Some(loss),
            validation_dice: None,
        }
    }

    #[test]
    fn seeds_summarise_to_median_and_range_per_step() {
        let a = [point("a", 1, 1, 0.9), point("a", 2, 1, 0.5)];
        let b = [point("b", 1, 1, 0.7), point("b", 2, 1, 0.3)];
        let c = [point("c", 1, 1, 0.8)];
        let runs: Vec<Vec<&CurveRow>> = vec![a.iter().collect(), b.iter().collect(), c.iter().collect()];
        let slices: Vec<&[&CurveRow]> = runs.iter().map(Vec::as_slice).collect();
        let summary = summarise_over_seeds(&slices, &|p| p.loss);
        // Step 1: 0.7, 0.8, 0.9 -> median 0.8; step 2: 0.3, 0.5 (seed c has none) -> 0.4.
        assert_eq!(summary.len(), 2);
        assert_eq!(summary[0], (1.0, 0.8, 0.7, 0.9));
        assert!((summary[1].1 - 0.4).abs() < 1e-12 && summary[1].2 == 0.3 && summary[1].3 == 0.5);
    }

    #[test]
    fn phase_ends_are_the_last_steps_of_all_but_the_last_phase() {
        let rows = [
            point("a", 4, 1, 1.0),
            point("a", 8, 1, 1.0),
            point("a", 10, 2, 1.0),
            point("a", 12, 3, 1.0),
        ];
        let refs: Vec<&CurveRow> = rows.iter().collect();
        assert_eq!(phase_ends(&refs), [8.0, 10.0]);
    }
}
