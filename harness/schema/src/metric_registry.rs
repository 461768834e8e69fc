//! Every metric a run records, described once: how it is computed, what a case gets when a class
//! is missing, the keys and columns it is written to, how tables, plots and `atso check` show and
//! rank it.
//!
//! Evaluation (`evaluate`), the per-case and per-run values (`scores`), the records and their
//! tables (`records`), the report's tables and figures and `atso check` (atso-reports) all walk
//! this list instead of naming metrics themselves. A new metric is one entry here plus, when it
//! needs a new kind of number, the function that computes it (ASD is one entry and one function
//! in `surface`).

use crate::overlap::{Confusion, EmptyClasses};
use crate::surface::SurfaceDistances;

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name: the key of its per-case values in a record and their column in `cases.parquet`.
    pub name: &'static str,
    /// The run-level column of `runs.parquet` and key in a record (the mean over classes, or the
    /// dataset-level value).
    pub column: &'static str,
    /// Per-class columns are `<per_class_prefix><class>` (None: not kept per class).
    pub per_class_prefix: Option<&'static str>,
    /// The record's key of the per-class values (present exactly when `per_class_prefix` is).
    pub class_key: Option<&'static str>,
    /// How tables and axes name it, with its unit: `<short> (<unit>)`.
    pub label: &'static str,
    /// Its name in titles ("HD95") and its unit ("mm", "%").
    pub short: &'static str,
    pub unit: &'static str,
    /// Multiply by this for display (100 for fractions shown as %).
    pub scale: f64,
    pub higher_is_better: bool,
    /// The values it can take before scaling; intervals are clipped to it.
    pub range: (f64, f64),
    pub source: Source,
    pub missing: Missing,
    pub shown: Shown,
}

/// Where a metric's values come from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// Per case and class, from the overlap counts on the case's native grid.
    Native(fn(&Confusion, usize, EmptyClasses) -> Option<f64>),
    /// Per case and class, from the overlap counts at the training resolution.
    AtResolution(fn(&Confusion, usize, EmptyClasses) -> Option<f64>),
    /// Per case and class, from the distances (mm) between the predicted and the true surface on
    /// the native grid; computed when `[evaluation] hd95` is on (the distance transforms are
    /// shared by every surface metric).
    Surface(fn(&SurfaceDistances) -> f64),
    /// Per class from the overlap counts summed over all test cases (no per-case values).
    Dataset(fn(&Confusion, usize, EmptyClasses) -> Option<f64>),
    /// The metric of this name on the validation cases.
    Validation(&'static str),
}

/// What a case gets for a class that is absent from its truth or its prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `[evaluation] empty_classes` decides when the class is undefined; a class the prediction
    /// misses scores what the overlap gives (0).
    EmptyClassRule,
    /// Undefined where the truth lacks the class; a class the prediction misses entirely costs
    /// `[evaluation] hd95_missed` (by default the diagonal of the case's volume), so losing a
    /// class raises the mean instead of dropping out of it.
    DistancePenalty,
}

/// How the report shows a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// The headline: its tables, per class, the comparisons and the figures.
    Headline,
    /// A table, and one per class, where some run recorded it; the note goes under the table.
    Table { note: &'static str },
    /// A table where the dataset scores every class (the driving scenes' mIoU).
    WhenEveryClassScored,
    /// In the parquet/CSV tables and `atso check` only.
    TablesOnly,
}

impl Metric {
    /// Whether it has values per case (and so a column in `cases.parquet`).
    pub fn per_case(&self) -> bool {
        matches!(self.source, Source::Native(_) | Source::AtResolution(_) | Source::Surface(_))
    }

    /// The per-class column of `class`, for a metric kept per class.
    pub fn class_column(&self, class: &str) -> Option<String> {
        self.per_class_prefix.map(|prefix| format!("{prefix}{class}"))
    }
}

const FRACTION: (f64, f64) = (0.0, 1.0);
const DISTANCE: (f64, f64) = (0.0, f64::INFINITY);

/// Test Dice per case on the native grid, averaged over cases then classes: the headline.
pub const DICE: Metric = Metric {
    name: "dice",
    column: "dice_mean",
    per_class_prefix: Some("dice_"),
    class_key: Some("class_dice"),
    label: "Dice (%)",
    short: "Dice",
    unit: "%",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
    source: Source::Native(Confusion::dice),
    missing: Missing::EmptyClassRule,
    shown: Shown::Headline,
};

/// Test IoU, like Dice.
pub const IOU: Metric = Metric {
    name: "iou",
    column: "iou_mean",
    per_class_prefix: None,
    class_key: None,
    label: "IoU (%)",
    short: "IoU",
    unit: "%",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
    source: Source::Native(Confusion::iou),
    missing: Missing::EmptyClassRule,
    shown: Shown::TablesOnly,
};

/// 95th-percentile Hausdorff distance in mm (medpy's `hd95`, both directions pooled).
pub const HD95: Metric = Metric {
    name: "hd95",
    column: "hd95_mean",
    per_class_prefix: Some("hd95_"),
    class_key: Some("class_hd95"),
    label: "HD95 (mm)",
    short: "HD95",
    unit: "mm",
    scale: 1.0,
    higher_is_better: false,
    range: DISTANCE,
    source: Source::Surface(SurfaceDistances::hd95),
    missing: Missing::DistancePenalty,
    shown: Shown::Table {
        note: "A run's HD95 is the mean over every class present in a case's truth; a class the prediction misses entirely counts the penalty of `[evaluation] hd95_missed` (default: the diagonal of the case's volume in mm), so losing a class raises HD95 instead of dropping out of the mean. Runs recorded before that penalty existed averaged only the classes they predicted; their commit tells them apart.",
    },
};

/// Average surface distance in mm (medpy's `asd(prediction, truth)`, which SSL4MIS reports beside
/// Dice and HD95): the mean distance from the prediction's surface to the truth's.
pub const ASD: Metric = Metric {
    name: "asd",
    column: "asd_mean",
    per_class_prefix: Some("asd_"),
    class_key: Some("class_asd"),
    label: "ASD (mm)",
    short: "ASD",
    unit: "mm",
    scale: 1.0,
    higher_is_better: false,
    range: DISTANCE,
    source: Source::Surface(SurfaceDistances::asd),
    missing: Missing::DistancePenalty,
    shown: Shown::Table {
        note: "ASD is medpy's `asd(prediction, truth)` as SSL4MIS reports it: the mean distance from the prediction's surface to the truth's (one direction). A class the prediction misses entirely counts the penalty of `[evaluation] hd95_missed`, as for HD95.",
    },
};

/// Driving datasets: IoU per class from the confusion over all test images, then the mean.
pub const MIOU: Metric = Metric {
    name: "miou",
    column: "miou",
    per_class_prefix: None,
    class_key: None,
    label: "mIoU (%)",
    short: "mIoU",
    unit: "%",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
    source: Source::Dataset(Confusion::iou),
    missing: Missing::EmptyClassRule,
    shown: Shown::WhenEveryClassScored,
};

/// Test Dice at the training resolution (before resizing back to the native grid).
pub const DICE_AT_RESOLUTION: Metric = Metric {
    name: "dice_at_resolution",
    column: "dice_at_resolution_mean",
    per_class_prefix: None,
    class_key: None,
    label: "Dice at training size (%)",
    short: "Dice at training size",
    unit: "%",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
    source: Source::AtResolution(Confusion::dice),
    missing: Missing::EmptyClassRule,
    shown: Shown::TablesOnly,
};

/// Validation Dice of the final model (never used to pick it).
pub const VALIDATION_DICE: Metric = Metric {
    name: "val_dice",
    column: "val_dice_mean",
    per_class_prefix: Some("val_dice_"),
    class_key: Some("val_class_dice"),
    label: "validation Dice (%)",
    short: "validation Dice",
    unit: "%",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
    source: Source::Validation(DICE.name),
    missing: Missing::EmptyClassRule,
    shown: Shown::TablesOnly,
};

/// Every metric, headline first; tables list their columns in this order.
pub const ALL: [Metric; 7] = [DICE, IOU, HD95, ASD, MIOU, DICE_AT_RESOLUTION, VALIDATION_DICE];

/// The metric of this name.
pub fn by_name(name: &str) -> Option<&'static Metric> {
    ALL.iter().find(|m| m.name == name)
}

/// The metric a runs-table column holds: its run-level column, or one of its per-class columns
/// (the longest matching prefix wins: `val_dice_liver` is validation Dice, not Dice).
pub fn of_column(column: &str) -> Option<&'static Metric> {
    if let Some(metric) = ALL.iter().find(|m| m.column == column) {
        return Some(metric);
    }
    ALL.iter()
        .filter(|m| m.per_class_prefix.is_some_and(|p| column.starts_with(p)))
        .max_by_key(|m| m.per_class_prefix.map_or(0, str::len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_resolve_to_their_metric() {
        let column_of = |c: &str| of_column(c).map(|m| m.column);
        assert_eq!(column_of("dice_mean"), Some(DICE.column));
        assert_eq!(column_of("dice_liver"), Some(DICE.column));
        assert_eq!(column_of("val_dice_liver"), Some(VALIDATION_DICE.column));
        assert_eq!(column_of("dice_at_resolution_mean"), Some(DICE_AT_RESOLUTION.column));
        assert_eq!(of_column("hd95_lesion").map(|m| m.higher_is_better), Some(false));
        assert_eq!(of_column("wall_seconds").map(|m| m.name), None);
    }

    #[test]
    fn entries_are_consistent() {
        let unique = |keys: Vec<&str>| keys.iter().collect::<std::collections::BTreeSet<_>>().len() == keys.len();
        assert!(unique(ALL.iter().map(|m| m.name).collect()));
        assert!(unique(
            ALL.iter().map(|m| m.column).chain(ALL.iter().filter_map(|m| m.class_key)).collect()
        ));
        for metric in &ALL {
            assert_eq!(metric.label, format!("{} ({})", metric.short, metric.unit), "{}", metric.name);
            assert_eq!(metric.per_class_prefix.is_some(), metric.class_key.is_some(), "{}", metric.name);
            if let Source::Validation(name) = metric.source {
                assert!(by_name(name).is_some_and(Metric::per_case), "{}", metric.name);
            }
            if metric.missing == Missing::DistancePenalty {
                assert!(matches!(metric.source, Source::Surface(_)), "{}", metric.name);
            }
        }
        assert!(ALL.iter().filter(|m| m.shown == Shown::Headline).count() == 1);
    }
}
