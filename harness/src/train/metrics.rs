//! Segmentation metrics: Dice and IoU per class, computed per case (the 3D volume stacked from
//! its slices), then averaged over cases, as the medical SSL literature reports them.
//!
//! A class absent from both the prediction and the truth of a case has no defined Dice; that case
//! is left out of the class's average (recorded as missing, not as 1 or 0).

use serde::{Deserialize, Serialize};

/// Scores of one case, for the foreground classes (index 0 = class 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseScores {
    pub case_id: String,
    pub dice: Vec<Option<f64>>,
    pub iou: Vec<Option<f64>>,
}

/// Counts true positives, false positives and false negatives per class over a whole case.
#[derive(Debug, Clone)]
pub struct Confusion {
    tp: Vec<u64>,
    fp: Vec<u64>,
    fn_: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            tp: vec![0; classes],
            fp: vec![0; classes],
            fn_: vec![0; classes],
        }
    }

    /// Adds one slice (or any chunk) of predictions and truths; truth 255 is ignored.
    pub fn add(&mut self, predicted: &[u8], truth: &[u8]) {
        for (&p, &t) in predicted.iter().zip(truth) {
            if t == super::batch::IGNORE {
                continue;
            }
            if p == t {
                self.tp[p as usize] += 1;
            } else {
                self.fp[p as usize] += 1;
                if (t as usize) < self.fn_.len() {
                    self.fn_[t as usize] += 1;
                }
            }
        }
    }

    /// Foreground scores (classes 1..).
    pub fn scores(&self, case_id: &str) -> CaseScores {
        let mut dice = Vec::new();
        let mut iou = Vec::new();
        for c in 1..self.tp.len() {
            let (tp, fp, fn_) = (self.tp[c] as f64, self.fp[c] as f64, self.fn_[c] as f64);
            if tp + fp + fn_ == 0.0 {
                dice.push(None);
                iou.push(None);
            } else {
                dice.push(Some(2.0 * tp / (2.0 * tp + fp + fn_)));
                iou.push(Some(tp / (tp + fp + fn_)));
            }
        }
        CaseScores {
            case_id: case_id.to_string(),
            dice,
            iou,
        }
    }
}

/// Per-class means over cases (None where no case defines the class) and their mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub dice_per_class: Vec<Option<f64>>,
    pub iou_per_class: Vec<Option<f64>>,
    pub dice_mean: Option<f64>,
    pub iou_mean: Option<f64>,
}

/// Averages case scores: per class over the cases that define it, then over classes.
pub fn summarise(cases: &[CaseScores]) -> Summary {
    let classes = cases.first().map_or(0, |c| c.dice.len());
    let class_mean = |pick: &dyn Fn(&CaseScores) -> &Vec<Option<f64>>| -> Vec<Option<f64>> {
        (0..classes).map(|c| mean(cases.iter().filter_map(|case| pick(case)[c]))).collect()
    };
    let dice_per_class = class_mean(&|c| &c.dice);
    let iou_per_class = class_mean(&|c| &c.iou);
    Summary {
        dice_mean: mean(dice_per_class.iter().flatten().copied()),
        iou_mean: mean(iou_per_class.iter().flatten().copied()),
        dice_per_class,
        iou_per_class,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_and_iou_of_known_overlap() {
        let mut confusion = Confusion::new(2);
        // truth: 4 foreground pixels; prediction: 3 of them plus 1 false positive
        confusion.add(&[1, 1, 1, 0, 1, 0], &[1, 1, 1, 1, 0, 0]);
        let scores = confusion.scores("c");
        assert!((scores.dice[0].unwrap() - 6.0 / 8.0).abs() < 1e-12);
        assert!((scores.iou[0].unwrap() - 3.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn absent_class_is_excluded_from_the_mean() {
        let a = CaseScores {
            case_id: "a".into(),
            dice: vec![Some(0.8), None],
            iou: vec![Some(0.6), None],
        };
        let b = CaseScores {
            case_id: "b".into(),
            dice: vec![Some(0.6), Some(0.5)],
            iou: vec![Some(0.4), Some(0.3)],
        };
        let summary = summarise(&[a, b]);
        assert!((summary.dice_per_class[0].unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(summary.dice_per_class[1], Some(0.5));
        assert!((summary.dice_mean.unwrap() - 0.6).abs() < 1e-12);
    }
}
