//! The metrics a run records, described once: the column each is written to, its label, the
//! scale it is shown at, which direction is better and the values it can take.
//!
//! Tables, plots and `atso check` read these entries instead of spelling column names and
//! directions themselves (a check once decided "lower is better" by a name starting with
//! "hd95"), so a metric's presentation changes in one place. The records still compute and
//! write each metric explicitly (`train::metrics`, `records`).

/// One metric as the tables and checks see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricName {
    /// The run-level column of `runs.parquet` (the mean over classes, or the dataset-level value).
    pub column: &'static str,
    /// Per-class columns are `<per_class_prefix><class>` (None: no per-class columns).
    pub per_class_prefix: Option<&'static str>,
    /// How tables and axes name it, with its unit.
    pub label: &'static str,
    /// Multiply by this for display (100 for fractions shown as %).
    pub scale: f64,
    pub higher_is_better: bool,
    /// The values it can take before scaling; intervals are clipped to it.
    pub range: (f64, f64),
}

const FRACTION: (f64, f64) = (0.0, 1.0);
const DISTANCE: (f64, f64) = (0.0, f64::INFINITY);

/// Test Dice per case on the native grid, averaged over cases then classes: the headline.
pub const DICE: MetricName = MetricName {
    column: "dice_mean",
    per_class_prefix: Some("dice_"),
    label: "Dice (%)",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
};

/// Test IoU, like Dice.
pub const IOU: MetricName = MetricName {
    column: "iou_mean",
    per_class_prefix: None,
    label: "IoU (%)",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
};

/// 95th-percentile Hausdorff distance in mm (a missed class costs `[evaluation] hd95_missed`).
pub const HD95: MetricName = MetricName {
    column: "hd95_mean",
    per_class_prefix: Some("hd95_"),
    label: "HD95 (mm)",
    scale: 1.0,
    higher_is_better: false,
    range: DISTANCE,
};

/// Driving datasets: IoU per class from the confusion over all test images, then the mean.
pub const MIOU: MetricName = MetricName {
    column: "miou",
    per_class_prefix: None,
    label: "mIoU (%)",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
};

/// Test Dice at the training resolution (before resizing back to the native grid).
pub const DICE_AT_RESOLUTION: MetricName = MetricName {
    column: "dice_at_resolution_mean",
    per_class_prefix: None,
    label: "Dice at training size (%)",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
};

/// Validation Dice of the final model (never used to pick it).
pub const VALIDATION_DICE: MetricName = MetricName {
    column: "val_dice_mean",
    per_class_prefix: Some("val_dice_"),
    label: "validation Dice (%)",
    scale: 100.0,
    higher_is_better: true,
    range: FRACTION,
};

/// Every metric, headline first.
pub const ALL: [MetricName; 6] = [DICE, IOU, HD95, MIOU, DICE_AT_RESOLUTION, VALIDATION_DICE];

/// The metric a runs-table column holds: its run-level column, or one of its per-class columns
/// (the longest matching prefix wins: `val_dice_liver` is validation Dice, not Dice).
pub fn of_column(column: &str) -> Option<&'static MetricName> {
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
        assert_eq!(of_column("dice_mean"), Some(&DICE));
        assert_eq!(of_column("dice_liver"), Some(&DICE));
        assert_eq!(of_column("val_dice_liver"), Some(&VALIDATION_DICE));
        assert_eq!(of_column("dice_at_resolution_mean"), Some(&DICE_AT_RESOLUTION));
        assert_eq!(of_column("hd95_lesion").map(|m| m.higher_is_better), Some(false));
        assert_eq!(of_column("wall_seconds"), None);
    }
}
