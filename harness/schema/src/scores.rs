//! The values of the registered metrics (`metric_registry`): per case, summarised per run, and as
//! a record keeps them.
//!
//! Each holds one entry per metric of the registry instead of one field per metric, and is
//! written under the keys records have always had (`dice`, `hd95` per case; `dice_mean`,
//! `class_dice` per run), so records of any age load and a metric added to the registry needs
//! nothing here.

use crate::metric_registry::{self as registry, Metric, Source};
use crate::overlap::{mean, Confusion, Scoring};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// Scores of one case: per metric with per-case values, one entry per scored class (in class
/// order from `first_class`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseScores {
    pub case_id: String,
    /// By metric name (`Metric::name`); a metric the case was not scored on is absent.
    #[serde(flatten, with = "by_name")]
    pub values: BTreeMap<&'static str, Vec<Option<f64>>>,
    /// Per scored class: the truth has it and the prediction has none of it (its Dice is 0 and
    /// its surface distances the penalty). Empty in records written before it was kept.
    #[serde(default)]
    pub missed: Vec<bool>,
}

impl CaseScores {
    /// The case's values of `metric` (empty when it was not scored on it).
    pub fn of(&self, metric: &Metric) -> &[Option<f64>] {
        self.values.get(metric.name).map_or(&[], Vec::as_slice)
    }
}

/// Per-class means over cases (None where no case defines the class) and their mean over
/// classes, per metric name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    per_class: BTreeMap<&'static str, Vec<Option<f64>>>,
}

impl Summary {
    /// The metric's value per scored class (empty when it was not computed).
    pub fn per_class(&self, name: &str) -> &[Option<f64>] {
        self.per_class.get(name).map_or(&[], Vec::as_slice)
    }

    /// The mean over the classes that have a value.
    pub fn mean(&self, name: &str) -> Option<f64> {
        mean(self.per_class(name).iter().flatten().copied())
    }
}

/// Averages case scores: per class over the cases that define it, then over classes.
/// `dataset` is the confusion summed over all cases (for the dataset-level metrics: mIoU).
pub fn summarise(cases: &[CaseScores], dataset: &Confusion, scoring: &Scoring) -> Summary {
    let classes = scoring.scored().len();
    let mut per_class = BTreeMap::new();
    for metric in &registry::ALL {
        let values = match metric.source {
            Source::Native(_) | Source::AtResolution(_) | Source::Surface(_) => (0..classes)
                .map(|c| mean(cases.iter().filter_map(|case| case.of(metric).get(c).copied().flatten())))
                .collect(),
            Source::Dataset(value) => scoring.scored().map(|c| value(dataset, c, scoring.empty)).collect(),
            Source::Validation(_) => continue,
        };
        per_class.insert(metric.name, values);
    }
    Summary { per_class }
}

/// A run's metrics as its record keeps them: each metric's mean under its column, and its
/// values per scored class (by class name) under its class key. Only values are held (no entry
/// for an undefined mean or an empty class list), so two equal runs compare equal however their
/// records were written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunMetrics {
    means: BTreeMap<&'static str, f64>,
    classes: BTreeMap<&'static str, Vec<(String, Option<f64>)>>,
}

impl RunMetrics {
    /// A run's metrics from the summaries of its test and validation cases; `scored` names the
    /// scored classes in order.
    pub fn of_run(test: &Summary, validation: &Summary, scored: &[String]) -> Self {
        let mut metrics = Self::default();
        for metric in &registry::ALL {
            let (summary, name) = match metric.source {
                Source::Validation(name) => (validation, name),
                _ => (test, metric.name),
            };
            metrics.set_mean(metric, summary.mean(name));
            if metric.class_key.is_some() {
                let values = scored.iter().cloned().zip(summary.per_class(name).iter().copied()).collect();
                metrics.set_classes(metric, values);
            }
        }
        metrics
    }

    /// The run-level value (None: undefined, or not recorded).
    pub fn mean(&self, metric: &Metric) -> Option<f64> {
        self.means.get(metric.column).copied()
    }

    pub fn set_mean(&mut self, metric: &Metric, value: Option<f64>) {
        match value {
            Some(value) => self.means.insert(metric.column, value),
            None => self.means.remove(metric.column),
        };
    }

    /// The values per scored class, by class name (empty when not recorded).
    pub fn classes(&self, metric: &Metric) -> &[(String, Option<f64>)] {
        self.classes.get(metric.name).map_or(&[], Vec::as_slice)
    }

    pub fn set_classes(&mut self, metric: &Metric, values: Vec<(String, Option<f64>)>) {
        if values.is_empty() {
            self.classes.remove(metric.name);
        } else {
            self.classes.insert(metric.name, values);
        }
    }
}

/// A value written with `json_float` (NaN and infinities survive).
#[derive(Serialize, Deserialize)]
struct Value(#[serde(with = "crate::json_float::option")] Option<f64>);

#[derive(Serialize, Deserialize)]
struct Values(#[serde(with = "crate::json_float::option_vec")] Vec<Option<f64>>);

#[derive(Serialize, Deserialize)]
struct Named(#[serde(with = "crate::json_float::named_option_vec")] Vec<(String, Option<f64>)>);

/// Every registered metric is written (null, or empty, where it has no value): a reader sees
/// which metrics the writer knew.
impl Serialize for RunMetrics {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for metric in &registry::ALL {
            map.serialize_entry(metric.column, &Value(self.mean(metric)))?;
        }
        for metric in &registry::ALL {
            if let Some(key) = metric.class_key {
                map.serialize_entry(key, &Named(self.classes(metric).to_vec()))?;
            }
        }
        map.end()
    }
}

/// Keys of metrics this version does not know, and every other key, are skipped.
impl<'de> Deserialize<'de> for RunMetrics {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = RunMetrics;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a run's metrics")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RunMetrics, A::Error> {
                let mut metrics = RunMetrics::default();
                while let Some(key) = map.next_key::<String>()? {
                    if let Some(metric) = registry::ALL.iter().find(|m| m.column == key) {
                        metrics.set_mean(metric, map.next_value::<Value>()?.0);
                    } else if let Some(metric) = registry::ALL.iter().find(|m| m.class_key == Some(key.as_str())) {
                        metrics.set_classes(metric, map.next_value::<Named>()?.0);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(metrics)
            }
        }
        d.deserialize_map(Keys)
    }
}

/// `CaseScores::values` under each metric's name.
mod by_name {
    use super::*;

    pub fn serialize<S: Serializer>(values: &BTreeMap<&'static str, Vec<Option<f64>>>, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(values.len()))?;
        for metric in registry::ALL.iter().filter(|m| m.per_case()) {
            if let Some(v) = values.get(metric.name) {
                map.serialize_entry(metric.name, &Values(v.clone()))?;
            }
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<&'static str, Vec<Option<f64>>>, D::Error> {
        struct Names;
        impl<'de> Visitor<'de> for Names {
            type Value = BTreeMap<&'static str, Vec<Option<f64>>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a case's scores")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut values = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    match registry::ALL.iter().find(|m| m.per_case() && m.name == key) {
                        Some(metric) => {
                            values.insert(metric.name, map.next_value::<Values>()?.0);
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(values)
            }
        }
        d.deserialize_map(Names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric_registry::{DICE, HD95, IOU, VALIDATION_DICE};
    use crate::overlap::EmptyClasses;

    fn scores(id: &str, dice: Vec<Option<f64>>) -> CaseScores {
        CaseScores {
            case_id: id.into(),
            values: BTreeMap::from([
                (DICE.name, dice.clone()),
                (IOU.name, dice.clone()),
                (HD95.name, vec![None; dice.len()]),
            ]),
            missed: vec![false; dice.len()],
        }
    }

    #[test]
    fn absent_class_is_excluded_from_the_mean() {
        let a = scores("a", vec![Some(0.8), None]);
        let b = scores("b", vec![Some(0.6), Some(0.5)]);
        let scoring = Scoring {
            classes: 3,
            first_class: 1,
            empty: EmptyClasses::Monai,
        };
        let summary = summarise(&[a, b], &Confusion::new(3), &scoring);
        assert!((summary.per_class("dice")[0].unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(summary.per_class("dice")[1], Some(0.5));
        assert!((summary.mean("dice").unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(summary.mean("hd95"), None);
    }

    #[test]
    fn case_scores_keep_the_keys_records_always_had() {
        let text = r#"{"case_id":"c1","dice":[0.5,null],"iou":["NaN",0.25],"hd95":[1.5,"inf"],"dice_at_resolution":[0.5,0.5],"missed":[false,true],"from_the_future":[1]}"#;
        let case: CaseScores = serde_json::from_str(text).unwrap();
        assert_eq!(case.of(&DICE), [Some(0.5), None]);
        assert!(case.of(&IOU)[0].is_some_and(f64::is_nan));
        assert_eq!(case.of(&HD95), [Some(1.5), Some(f64::INFINITY)]);
        assert_eq!(case.missed, [false, true]);
        let again: CaseScores = serde_json::from_str(&serde_json::to_string(&case).unwrap()).unwrap();
        assert_eq!(again.of(&HD95), case.of(&HD95));
        // A record written before HD95 existed has no such key: no values, not an error.
        let old: CaseScores = serde_json::from_str(r#"{"case_id":"c1","dice":[0.5],"iou":[0.5]}"#).unwrap();
        assert!(old.of(&HD95).is_empty() && old.missed.is_empty());
    }

    #[test]
    fn run_metrics_come_from_the_test_and_validation_summaries() {
        let scoring = Scoring {
            classes: 3,
            first_class: 1,
            empty: EmptyClasses::Monai,
        };
        let test = summarise(&[scores("a", vec![Some(0.8), Some(0.4)])], &Confusion::new(3), &scoring);
        let validation = summarise(&[scores("v", vec![Some(0.2), None])], &Confusion::new(3), &scoring);
        let names = ["liver".to_string(), "lesion".to_string()];
        let metrics = RunMetrics::of_run(&test, &validation, &names);
        assert!((metrics.mean(&DICE).unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(metrics.mean(&VALIDATION_DICE), Some(0.2));
        assert_eq!(
            metrics.classes(&VALIDATION_DICE),
            [("liver".to_string(), Some(0.2)), ("lesion".to_string(), None)]
        );
        assert_eq!(metrics.classes(&HD95), [("liver".to_string(), None), ("lesion".to_string(), None)]);
    }
}
