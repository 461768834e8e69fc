//! Floats that survive a JSON round trip, NaN and infinities included.
//!
//! serde_json writes a non-finite `f64` as `null` and then cannot read `null` back into an
//! `f64`, so a single NaN loss in a stage record used to make the whole record unreadable. Record
//! fields use these adapters instead: finite values stay JSON numbers, non-finite ones are written
//! as the strings `"NaN"`, `"inf"` and `"-inf"`, and reading accepts numbers, those strings and
//! `null` (read as NaN where a value is required).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Number(f64),
    Text(String),
    Null(()),
}

impl Repr {
    fn of(value: f64) -> Self {
        if value.is_finite() {
            Repr::Number(value)
        } else if value.is_nan() {
            Repr::Text("NaN".into())
        } else if value > 0.0 {
            Repr::Text("inf".into())
        } else {
            Repr::Text("-inf".into())
        }
    }

    fn value<E: serde::de::Error>(self) -> Result<f64, E> {
        match self {
            Repr::Number(v) => Ok(v),
            Repr::Null(()) => Ok(f64::NAN),
            Repr::Text(t) => match t.to_ascii_lowercase().as_str() {
                "nan" => Ok(f64::NAN),
                "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
                "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                _ => Err(E::custom(format!("expected a number, \"NaN\" or \"inf\", got \"{t}\""))),
            },
        }
    }
}

fn optional(value: &Option<f64>) -> Option<Repr> {
    value.map(Repr::of)
}

fn from_optional<E: serde::de::Error>(repr: Option<Repr>) -> Result<Option<f64>, E> {
    match repr {
        None | Some(Repr::Null(())) => Ok(None),
        Some(r) => r.value().map(Some),
    }
}

/// For `f64` fields.
pub mod plain {
    use super::*;

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        Repr::of(*value).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Repr::deserialize(d)?.value()
    }
}

/// For `Option<f64>` fields (`null` is `None`).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        optional(value).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        from_optional(Option::<Repr>::deserialize(d)?)
    }
}

/// For `Vec<Option<f64>>` fields.
pub mod option_vec {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[Option<f64>], s: S) -> Result<S::Ok, S::Error> {
        values.iter().map(optional).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<f64>>, D::Error> {
        Vec::<Option<Repr>>::deserialize(d)?.into_iter().map(from_optional).collect()
    }
}

/// For `Vec<(String, Option<f64>)>` fields (named values such as Dice per class).
pub mod named_option_vec {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[(String, Option<f64>)], s: S) -> Result<S::Ok, S::Error> {
        values.iter().map(|(n, v)| (n, optional(v))).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Option<f64>)>, D::Error> {
        Vec::<(String, Option<Repr>)>::deserialize(d)?
            .into_iter()
            .map(|(n, v)| Ok((n, from_optional(v)?)))
            .collect()
    }
}

/// For `BTreeMap<String, f64>` fields (named diagnostics).
pub mod map {
    use super::*;
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(values: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        values
            .iter()
            .map(|(k, v)| (k, Repr::of(*v)))
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        BTreeMap::<String, Repr>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| Ok((k, v.value()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct Sample {
        #[serde(with = "super::plain")]
        loss: f64,
        #[serde(with = "super::option")]
        dice: Option<f64>,
        #[serde(with = "super::option_vec")]
        per_class: Vec<Option<f64>>,
    }

    #[test]
    fn non_finite_values_round_trip() {
        let sample = Sample {
            loss: f64::NAN,
            dice: Some(f64::INFINITY),
            per_class: vec![Some(0.5), None, Some(f64::NEG_INFINITY)],
        };
        let text = serde_json::to_string(&sample).unwrap();
        assert_eq!(text, r#"{"loss":"NaN","dice":"inf","per_class":[0.5,null,"-inf"]}"#);
        let back: Sample = serde_json::from_str(&text).unwrap();
        assert!(back.loss.is_nan());
        assert_eq!(back.dice, Some(f64::INFINITY));
        assert_eq!(back.per_class[..2], [Some(0.5), None]);
        assert_eq!(back.per_class[2], Some(f64::NEG_INFINITY));
    }

    #[test]
    fn null_written_by_older_versions_reads_as_nan() {
        let back: Sample = serde_json::from_str(r#"{"loss":null,"dice":null,"per_class":[]}"#).unwrap();
        assert!(back.loss.is_nan());
        assert_eq!(back.dice, None);
    }
}
