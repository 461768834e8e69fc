//! Lazy learning across stages: reads `stages.parquet` and averages, per dataset x method x
//! stage, the student's first-step loss on its pseudo labels and the flip rate over the stage.
//! Self-labeled stages (synchronous self-training) against cross-labeled ones (ATSO) is the
//! comparison the ATSO paper argues from.

use anyhow::{Context, Result};
use polars::prelude::*;
use std::path::Path;

/// Mean measures of one dataset x method x stage over runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StageMean {
    pub dataset: String,
    pub method: String,
    pub stage: u64,
    pub first_step_pseudo_loss: f64,
    pub flip_rate: f64,
    pub pseudo_label_dice: Option<f64>,
    pub runs: usize,
}

/// Reads and averages `stages.parquet`; an empty list when the experiment has no staged method.
pub fn read(results_dir: &Path) -> Result<Vec<StageMean>> {
    let path = results_dir.join("stages.parquet");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let frame = crate::read_table(&path)?;
    average(&frame).with_context(|| format!("{}: unexpected columns", path.display()))
}

fn average(frame: &DataFrame) -> Result<Vec<StageMean>> {
    let dataset: Vec<Option<&str>> = frame.column("dataset")?.str()?.iter().collect();
    let method: Vec<Option<&str>> = frame.column("method")?.str()?.iter().collect();
    let stage: Vec<Option<u64>> = frame.column("stage")?.u64()?.iter().collect();
    let loss: Vec<Option<f64>> = frame.column("first_step_pseudo_loss")?.f64()?.iter().collect();
    let flips: Vec<Option<f64>> = frame.column("flip_rate")?.f64()?.iter().collect();
    let dice: Vec<Option<f64>> = frame.column("pseudo_label_dice")?.f64()?.iter().collect();
    let mut means: Vec<StageMean> = Vec::new();
    let mut dice_counts: Vec<usize> = Vec::new();
    for i in 0..frame.height() {
        let (d, m, st) = (dataset[i].unwrap_or_default(), method[i].unwrap_or_default(), stage[i].unwrap_or(0));
        let index = match means.iter().position(|s| s.dataset == d && s.method == m && s.stage == st) {
            Some(index) => index,
            None => {
                means.push(StageMean {
                    dataset: d.to_string(),
                    method: m.to_string(),
                    stage: st,
                    first_step_pseudo_loss: 0.0,
                    flip_rate: 0.0,
                    pseudo_label_dice: None,
                    runs: 0,
                });
                dice_counts.push(0);
                means.len() - 1
            }
        };
        // Sums first; divided into means below.
        let entry = &mut means[index];
        entry.first_step_pseudo_loss += loss[i].unwrap_or(f64::NAN);
        entry.flip_rate += flips[i].unwrap_or(f64::NAN);
        if let Some(value) = dice[i] {
            entry.pseudo_label_dice = Some(entry.pseudo_label_dice.unwrap_or(0.0) + value);
            dice_counts[index] += 1;
        }
        entry.runs += 1;
    }
    for (entry, dice_count) in means.iter_mut().zip(dice_counts) {
        entry.first_step_pseudo_loss /= entry.runs as f64;
        entry.flip_rate /= entry.runs as f64;
        entry.pseudo_label_dice = entry.pseudo_label_dice.map(|sum| sum / dice_count as f64);
    }
    Ok(means)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_per_method_and_stage() {
        let frame = DataFrame::new(
            3,
            vec![
                Column::new("dataset".into(), ["d", "d", "d"]),
                Column::new("method".into(), ["atso", "atso", "self-training"]),
                Column::new("stage".into(), [1u64, 1, 1]),
                Column::new("first_step_pseudo_loss".into(), [0.2, 0.4, 0.1]),
                Column::new("flip_rate".into(), [0.02, 0.04, 0.01]),
                Column::new("pseudo_label_dice".into(), [Some(0.5), None, Some(0.7)]),
            ],
        )
        .unwrap();
        let means = average(&frame).unwrap();
        assert_eq!(means.len(), 2);
        assert!((means[0].first_step_pseudo_loss - 0.3).abs() < 1e-12);
        assert!((means[0].flip_rate - 0.03).abs() < 1e-12);
        assert_eq!(means[0].pseudo_label_dice, Some(0.5));
        assert_eq!(means[0].runs, 2);
        assert_eq!(means[1].method, "self-training");
    }
}
