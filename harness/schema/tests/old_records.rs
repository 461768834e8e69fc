//! A run record written before the metric registry existed loads with every metric where it
//! was. The fixture is a real record of the confirmatory experiment (commit 4486dbf), trimmed to
//! two cases, two curve points, one stage and two ledger entries, with two values made
//! non-finite as records write them (`"NaN"`, `"inf"`).

use atso_schema::metric_registry::{self as registry, Metric};
use atso_schema::records::{self, RunRecord};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/record-4486dbf.json");

/// A number as records write it: a JSON number, or "NaN" / "inf".
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == "NaN" => Some(f64::NAN),
        Value::String(s) if s == "inf" => Some(f64::INFINITY),
        _ => None,
    }
}

/// Bits, so NaN compares equal to NaN.
fn bits(value: Option<f64>) -> Option<u64> {
    value.map(f64::to_bits)
}

#[test]
fn a_record_written_before_the_registry_loads_every_metric() {
    let raw: Value = serde_json::from_str(FIXTURE).unwrap();
    let record: RunRecord = serde_json::from_str(FIXTURE).unwrap();
    for (metric, key) in [
        (&registry::DICE, "dice_mean"),
        (&registry::IOU, "iou_mean"),
        (&registry::HD95, "hd95_mean"),
        (&registry::MIOU, "miou"),
        (&registry::DICE_AT_RESOLUTION, "dice_at_resolution_mean"),
        (&registry::VALIDATION_DICE, "val_dice_mean"),
    ] {
        assert!(number(&raw[key]).is_some(), "the fixture has {key}");
        assert_eq!(bits(record.metrics.mean(metric)), bits(number(&raw[key])), "{key}");
    }
    assert!(record.metrics.mean(&registry::VALIDATION_DICE).unwrap().is_nan());
    assert_eq!(record.metrics.mean(&registry::ASD), None, "no ASD before it existed");
    let per_class = |metric: &Metric, key: &str| {
        let expected: Vec<(String, Option<u64>)> = raw[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| (pair[0].as_str().unwrap().to_string(), bits(number(&pair[1]))))
            .collect();
        let loaded: Vec<(String, Option<u64>)> = record.metrics.classes(metric).iter().map(|(n, v)| (n.clone(), bits(*v))).collect();
        assert_eq!(loaded, expected, "{key}");
        assert_eq!(loaded.len(), 3, "{key}");
    };
    per_class(&registry::DICE, "class_dice");
    per_class(&registry::HD95, "class_hd95");
    per_class(&registry::VALIDATION_DICE, "val_class_dice");
    assert_eq!(record.metrics.classes(&registry::HD95)[2].1, Some(f64::INFINITY));
    for (case, raw_case) in record.cases.iter().zip(raw["cases"].as_array().unwrap()) {
        assert_eq!(case.case_id, raw_case["case_id"].as_str().unwrap());
        for (metric, key) in [
            (&registry::DICE, "dice"),
            (&registry::IOU, "iou"),
            (&registry::HD95, "hd95"),
            (&registry::DICE_AT_RESOLUTION, "dice_at_resolution"),
        ] {
            let expected: Vec<Option<u64>> = raw_case[key].as_array().unwrap().iter().map(|v| bits(number(v))).collect();
            let loaded: Vec<Option<u64>> = case.of(metric).iter().map(|v| bits(*v)).collect();
            assert_eq!(loaded, expected, "{} {key}", case.case_id);
        }
        assert!(case.of(&registry::ASD).is_empty());
        let missed: Vec<bool> = raw_case["missed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        assert_eq!(case.missed, missed);
    }
    assert_eq!(record.cases.len(), 2);
}

#[test]
fn an_old_record_round_trips_and_fills_its_table_columns() {
    let record: RunRecord = serde_json::from_str(FIXTURE).unwrap();
    let written = serde_json::to_string(&record).unwrap();
    let again: RunRecord = serde_json::from_str(&written).unwrap();
    assert_eq!(
        serde_json::to_string(&again).unwrap(),
        written,
        "a second round trip changes nothing"
    );
    let runs = records::runs_frame(std::slice::from_ref(&record)).unwrap();
    let value = |column: &str| runs.column(column).unwrap().f64().unwrap().get(0);
    assert_eq!(value("dice_mean"), record.metrics.mean(&registry::DICE));
    assert_eq!(value("hd95_lesion"), Some(f64::INFINITY));
    assert_eq!(value("val_dice_pancreas"), record.metrics.classes(&registry::VALIDATION_DICE)[1].1);
    assert_eq!(value("asd_mean"), None);
    let cases = records::cases_frame(std::slice::from_ref(&record)).unwrap();
    assert_eq!(cases.height(), 2 * 3, "two cases, three scored classes");
}
