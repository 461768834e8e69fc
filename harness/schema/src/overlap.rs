//! Overlap metrics: Dice and IoU per class from the counts of one case (the 3D volume stacked
//! from its slices), as the medical SSL literature reports them, and from the counts summed over
//! all cases, whose class mean is the driving literature's mIoU. The registry
//! (`metric_registry`) names which of these a run records; `scores` averages them.
//!
//! Empty classes follow a documented rule (`[evaluation] empty_classes`):
//! - `monai` (default, MONAI's `DiceMetric(ignore_empty=True)`): a class absent from a case's
//!   ground truth has no Dice for that case (left out of the class's average), whatever the
//!   prediction holds.
//! - `strict`: only a class absent from both truth and prediction is left out; a prediction of a
//!   class the case lacks scores 0.
//!
//! Surface distances (HD95, ASD: `surface`) are undefined (left out) when the class is absent
//! from the truth; when the truth has the class and the prediction misses it, the case gets the
//! penalty of `[evaluation] hd95_missed` (see `evaluate::Hd95Missed`), so a lost class counts
//! against a run instead of dropping out of its mean.

use serde::{Deserialize, Serialize};

/// The label value of a pixel without a label (Cityscapes' ignored ids, pseudo-labels below
/// their confidence threshold): skipped by the loss and by every metric. It lives here, at the
/// bottom of every crate, because readers produce it and training and evaluation consume it.
pub const IGNORE: u8 = 255;

/// How classes absent from a case are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EmptyClasses {
    #[default]
    Monai,
    Strict,
}

/// Which classes are scored and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    pub classes: usize,
    /// First scored class: 1 when class 0 is background (medical), 0 when every class is real
    /// (driving scenes).
    pub first_class: usize,
    pub empty: EmptyClasses,
}

impl Scoring {
    /// The scored classes.
    pub fn scored(&self) -> std::ops::Range<usize> {
        self.first_class..self.classes
    }
}

/// Counts true positives, false positives and false negatives per class.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    tp: Vec<u64>,
    fp: Vec<u64>,
    fn_: Vec<u64>,
    /// Pixels per class in the truth (for the empty-class rule).
    truth: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            tp: vec![0; classes],
            fp: vec![0; classes],
            fn_: vec![0; classes],
            truth: vec![0; classes],
        }
    }

    /// Adds one slice (or any chunk) of predictions and truths; truth 255 (ignore) is skipped.
    pub fn add(&mut self, predicted: &[u8], truth: &[u8]) {
        let classes = self.tp.len();
        for (&p, &t) in predicted.iter().zip(truth) {
            if t == IGNORE || t as usize >= classes {
                continue;
            }
            self.truth[t as usize] += 1;
            if p == t {
                self.tp[p as usize] += 1;
            } else {
                if (p as usize) < classes {
                    self.fp[p as usize] += 1;
                }
                self.fn_[t as usize] += 1;
            }
        }
    }

    /// Adds another confusion's counts.
    pub fn merge(&mut self, other: &Confusion) {
        for (mine, theirs) in [
            (&mut self.tp, &other.tp),
            (&mut self.fp, &other.fp),
            (&mut self.fn_, &other.fn_),
            (&mut self.truth, &other.truth),
        ] {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
    }

    fn defined(&self, class: usize, rule: EmptyClasses) -> bool {
        match rule {
            EmptyClasses::Monai => self.truth[class] > 0,
            EmptyClasses::Strict => self.tp[class] + self.fp[class] + self.fn_[class] > 0,
        }
    }

    /// Dice of `class`, or None when the rule leaves it undefined.
    pub fn dice(&self, class: usize, rule: EmptyClasses) -> Option<f64> {
        let (tp, fp, fn_) = (self.tp[class] as f64, self.fp[class] as f64, self.fn_[class] as f64);
        self.defined(class, rule).then(|| 2.0 * tp / (2.0 * tp + fp + fn_))
    }

    /// Whether the truth has `class` and the prediction none of it.
    pub fn missed(&self, class: usize) -> bool {
        self.truth[class] > 0 && self.tp[class] + self.fp[class] == 0
    }

    /// IoU of `class`, or None when the rule leaves it undefined.
    pub fn iou(&self, class: usize, rule: EmptyClasses) -> Option<f64> {
        let (tp, fp, fn_) = (self.tp[class] as f64, self.fp[class] as f64, self.fn_[class] as f64);
        self.defined(class, rule).then(|| tp / (tp + fp + fn_))
    }
}

/// Mean of the values, None when there are none.
pub fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
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
        assert!((confusion.dice(1, EmptyClasses::Monai).unwrap() - 6.0 / 8.0).abs() < 1e-12);
        assert!((confusion.iou(1, EmptyClasses::Monai).unwrap() - 3.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn empty_class_rules() {
        let mut confusion = Confusion::new(3);
        // class 2: predicted twice, absent from the truth
        confusion.add(&[2, 2, 1, 0], &[0, 0, 1, 0]);
        assert_eq!(confusion.dice(2, EmptyClasses::Monai), None);
        assert_eq!(confusion.dice(2, EmptyClasses::Strict), Some(0.0));
        let mut both_empty = Confusion::new(3);
        both_empty.add(&[1, 0], &[1, 0]);
        assert_eq!(both_empty.dice(2, EmptyClasses::Strict), None);
        assert_eq!(both_empty.dice(2, EmptyClasses::Monai), None);
    }

    #[test]
    fn dataset_iou_sums_confusions_before_dividing() {
        let mut a = Confusion::new(2);
        a.add(&[1, 1], &[1, 0]); // class 1: tp 1, fp 1
        let mut b = Confusion::new(2);
        b.add(&[0, 0, 1, 1], &[1, 1, 1, 1]); // class 1: tp 2, fn 2
        a.merge(&b);
        // class 1: tp 3, fp 1, fn 2 -> 3 / 6
        assert!((a.iou(1, EmptyClasses::Monai).unwrap() - 0.5).abs() < 1e-12);
    }
}
