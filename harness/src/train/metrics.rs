//! Segmentation metrics: Dice, IoU and HD95 per class, computed per case (the 3D volume stacked
//! from its slices), then averaged over cases, as the medical SSL literature reports them; and
//! the dataset-level IoU (confusion summed over all cases) whose class mean is the driving
//! literature's mIoU.
//!
//! Empty classes follow a documented rule (`[evaluation] empty_classes`):
//! - `monai` (default, MONAI's `DiceMetric(ignore_empty=True)`): a class absent from a case's
//!   ground truth has no Dice for that case (left out of the class's average), whatever the
//!   prediction holds.
//! - `strict`: only a class absent from both truth and prediction is left out; a prediction of a
//!   class the case lacks scores 0.
//!
//! HD95 is undefined (left out) when the class is absent from the truth; when the truth has the
//! class and the prediction misses it, the case gets the penalty of `[evaluation] hd95_missed`
//! (see `evaluate::Hd95Missed`), so a lost class counts against a run instead of dropping out of
//! its mean.

use serde::{Deserialize, Serialize};

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

/// Scores of one case, one entry per scored class (in class order from `first_class`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseScores {
    pub case_id: String,
    /// Dice on the case's native grid (predictions resized back), the headline number.
    #[serde(with = "crate::json_float::option_vec")]
    pub dice: Vec<Option<f64>>,
    #[serde(with = "crate::json_float::option_vec")]
    pub iou: Vec<Option<f64>>,
    /// 95th-percentile Hausdorff distance in millimetres on the native grid.
    #[serde(default, with = "crate::json_float::option_vec")]
    pub hd95: Vec<Option<f64>>,
    /// Dice at the training resolution.
    #[serde(default, with = "crate::json_float::option_vec")]
    pub dice_at_resolution: Vec<Option<f64>>,
    /// Per scored class: the truth has it and the prediction has none of it (its Dice is 0 and
    /// its HD95 the penalty). Empty in records written before it was kept.
    #[serde(default)]
    pub missed: Vec<bool>,
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
            if t == super::batch::IGNORE || t as usize >= classes {
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

/// Per-class means over cases (None where no case defines the class) and their means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    pub dice_per_class: Vec<Option<f64>>,
    pub iou_per_class: Vec<Option<f64>>,
    pub hd95_per_class: Vec<Option<f64>>,
    pub dice_mean: Option<f64>,
    pub iou_mean: Option<f64>,
    pub hd95_mean: Option<f64>,
    pub dice_at_resolution_mean: Option<f64>,
    /// Dataset-level IoU per class (confusion summed over cases) and its mean: mIoU.
    pub dataset_iou_per_class: Vec<Option<f64>>,
    pub miou: Option<f64>,
}

/// Averages case scores: per class over the cases that define it, then over classes.
/// `dataset` is the confusion summed over all cases (for mIoU).
pub fn summarise(cases: &[CaseScores], dataset: &Confusion, scoring: &Scoring) -> Summary {
    let classes = scoring.scored().len();
    let class_mean = |pick: &dyn Fn(&CaseScores) -> &Vec<Option<f64>>| -> Vec<Option<f64>> {
        (0..classes)
            .map(|c| mean(cases.iter().filter_map(|case| pick(case).get(c).copied().flatten())))
            .collect()
    };
    let dice_per_class = class_mean(&|c| &c.dice);
    let iou_per_class = class_mean(&|c| &c.iou);
    let hd95_per_class = class_mean(&|c| &c.hd95);
    let at_resolution = class_mean(&|c| &c.dice_at_resolution);
    let dataset_iou_per_class: Vec<Option<f64>> = scoring.scored().map(|c| dataset.iou(c, scoring.empty)).collect();
    Summary {
        dice_mean: mean(dice_per_class.iter().flatten().copied()),
        iou_mean: mean(iou_per_class.iter().flatten().copied()),
        hd95_mean: mean(hd95_per_class.iter().flatten().copied()),
        dice_at_resolution_mean: mean(at_resolution.iter().flatten().copied()),
        miou: mean(dataset_iou_per_class.iter().flatten().copied()),
        dice_per_class,
        iou_per_class,
        hd95_per_class,
        dataset_iou_per_class,
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
    fn absent_class_is_excluded_from_the_mean() {
        let scores = |id: &str, dice: Vec<Option<f64>>| CaseScores {
            case_id: id.into(),
            iou: dice.clone(),
            hd95: vec![None; dice.len()],
            dice_at_resolution: dice.clone(),
            missed: vec![false; dice.len()],
            dice,
        };
        let a = scores("a", vec![Some(0.8), None]);
        let b = scores("b", vec![Some(0.6), Some(0.5)]);
        let scoring = Scoring {
            classes: 3,
            first_class: 1,
            empty: EmptyClasses::Monai,
        };
        let summary = summarise(&[a, b], &Confusion::new(3), &scoring);
        assert!((summary.dice_per_class[0].unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(summary.dice_per_class[1], Some(0.5));
        assert!((summary.dice_mean.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(summary.hd95_mean, None);
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
