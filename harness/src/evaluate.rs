//! Scoring a trained model the way papers and outside tools do: per case, on the case's native
//! grid.
//!
//! The network sees slices resized to the training resolution; a paper's Dice is computed on the
//! original volume. Each case's predicted label slices are therefore resized back to the native
//! in-plane size by nearest neighbour (as SSL4MIS's `test_2D` zooms its predictions with
//! order 0), stacked into a volume on the label file's grid, and scored there: Dice and IoU per
//! class, HD95 in millimetres with the file's voxel spacing. Dice at the training resolution is
//! kept beside it. On request the native predictions are written as NIfTI on the image's exact
//! geometry so nibabel, MONAI or medpy can recompute every number.

use crate::data::slices::resize_nearest_to;
use crate::data::{Case, Volume};
use crate::metric_registry::{self as registry, Missing, Source};
use crate::overlap::{Confusion, EmptyClasses, Scoring};
use crate::previews::{preview_slice, Preview};
use crate::scores::{summarise, CaseScores, Summary};
use crate::surface::{self, Mask, SurfaceDistances};
use crate::train::infer;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// `[evaluation]` of an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// How a class absent from a case is scored (see `overlap`).
    #[serde(default)]
    pub empty_classes: EmptyClasses,
    /// Compute the surface distances (HD95 and ASD) per case and class (costs two distance
    /// transforms per class and case, shared by both).
    #[serde(default = "yes")]
    pub hd95: bool,
    /// Score the validation cases every this many steps during training (Dice at the training
    /// resolution, into the training curve; SSL4MIS does every 200). Off when absent. Never
    /// used to pick a model: the last step's model is evaluated. Left out of the configuration
    /// hash when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_every: Option<usize>,
    /// The HD95 of a class the truth has and the prediction misses (see [`Hd95Missed`]).
    /// Left out of the configuration hash at its default, so results recorded before it existed
    /// keep their hash (their commit says they were scored without it).
    #[serde(default, skip_serializing_if = "Hd95Missed::is_default")]
    pub hd95_missed: Hd95Missed,
}

fn yes() -> bool {
    true
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        Self {
            empty_classes: EmptyClasses::default(),
            hd95: true,
            validation_every: None,
            hd95_missed: Hd95Missed::default(),
        }
    }
}

/// What HD95 a case gets for a class its truth has and its prediction lacks entirely.
///
/// HD95 is a distance between two surfaces and has none when one is empty. Tools differ: medpy
/// raises an error, MONAI returns nan (or inf) and leaves the case out of its mean, SSL4MIS's
/// `calculate_metric_percase` scores 0, the best possible distance. Leaving the case out, or
/// scoring 0, rewards missing a class: a run that loses a small class entirely looks better on
/// HD95 than one that finds it roughly. Here a miss costs a stated penalty, by default the
/// diagonal of the case's volume in millimetres (no prediction can be farther off), so
/// `hd95_mean` averages every class present in the truth and a lost class raises it.
/// A class absent from the truth still has no HD95 (whatever the prediction holds).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Hd95Missed {
    /// The diagonal of the case's volume: sqrt(sum over axes of (size x spacing)^2), in mm
    /// (written `hd95_missed = "diagonal"`).
    #[default]
    Diagonal,
    /// A fixed distance in millimetres (`hd95_missed = 100.0`).
    Millimetres(f64),
}

impl Hd95Missed {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The penalty for a volume of `dims` voxels of `spacing` mm.
    pub fn millimetres(&self, dims: [usize; 3], spacing: [f64; 3]) -> f64 {
        match *self {
            Self::Diagonal => dims.iter().zip(spacing).map(|(&n, s)| (n as f64 * s).powi(2)).sum::<f64>().sqrt(),
            Self::Millimetres(mm) => mm,
        }
    }
}

impl Serialize for Hd95Missed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Diagonal => s.serialize_str("diagonal"),
            Self::Millimetres(mm) => s.serialize_f64(*mm),
        }
    }
}

impl<'de> Deserialize<'de> for Hd95Missed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Name(String),
            Number(f64),
        }
        match Given::deserialize(d)? {
            Given::Name(name) if name == "diagonal" => Ok(Self::Diagonal),
            Given::Number(mm) if mm.is_finite() && mm >= 0.0 => Ok(Self::Millimetres(mm)),
            Given::Name(name) => Err(serde::de::Error::custom(format!(
                "expected \"diagonal\" or a distance in millimetres, got \"{name}\""
            ))),
            Given::Number(mm) => Err(serde::de::Error::custom(format!(
                "expected a finite, non-negative distance in millimetres, got {mm}"
            ))),
        }
    }
}

/// Scores of every evaluated case and their summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub scores: Vec<CaseScores>,
    pub summary: Summary,
    /// Each case's preview slice with its predicted labels (see `previews`).
    pub previews: Vec<Preview>,
}

/// Scores `predictions` (class probabilities per slice at the training resolution, per case)
/// against `cases`. With `save_to`, each case's native prediction is written there as
/// `<case id>.nii.gz`.
pub fn score(
    cases: &[&Case],
    predictions: &[Vec<Vec<f32>>],
    scoring: &Scoring,
    spec: &EvaluationSpec,
    save_to: Option<&Path>,
) -> Result<Evaluation> {
    let mut scores = Vec::with_capacity(cases.len());
    let mut previews = Vec::with_capacity(cases.len());
    let mut dataset = Confusion::new(scoring.classes);
    for (case, probabilities) in cases.iter().zip(predictions) {
        let labels: Vec<Vec<u8>> = probabilities.iter().map(|p| infer::argmax(p, scoring.classes)).collect();
        let slice = preview_slice(case, scoring.first_class as u8);
        if let Some(predicted) = labels.get(slice) {
            previews.push(Preview {
                case_id: case.id.clone(),
                slice,
                size: (predicted.len() as f64).sqrt() as usize,
                predicted: predicted.clone(),
            });
        }
        let at_resolution = confusion_at_resolution(case, &labels, scoring.classes);
        let (native, surfaces) = match &case.native {
            Some(source) => {
                let truth = source
                    .labels()
                    .with_context(|| format!("case {}: reading its native labels", case.id))?;
                let predicted = native_prediction(&truth, source.axis(), &labels, case);
                if let Some(dir) = save_to {
                    source
                        .write_prediction(&dir.join(format!("{}.nii.gz", case.id)), &predicted)
                        .with_context(|| format!("case {}: writing its prediction", case.id))?;
                }
                let mut confusion = Confusion::new(scoring.classes);
                confusion.add(&as_labels(&predicted.data), &as_labels(&truth.data));
                let surfaces = spec.hd95.then(|| surfaces_per_class(&predicted, &truth, scoring, spec.hd95_missed));
                (confusion, surfaces)
            }
            None => (at_resolution.clone(), None),
        };
        dataset.merge(&native);
        let mut values = BTreeMap::new();
        for metric in &registry::ALL {
            let per_class: Vec<Option<f64>> = match metric.source {
                Source::Native(value) => scoring.scored().map(|c| value(&native, c, scoring.empty)).collect(),
                Source::AtResolution(value) => scoring.scored().map(|c| value(&at_resolution, c, scoring.empty)).collect(),
                Source::Surface(value) => match &surfaces {
                    Some(surfaces) => surfaces.iter().map(|s| s.value(value, metric.missing)).collect(),
                    None => vec![None; scoring.scored().len()],
                },
                Source::Dataset(_) | Source::Validation(_) => continue,
            };
            values.insert(metric.name, per_class);
        }
        scores.push(CaseScores {
            case_id: case.id.clone(),
            values,
            missed: scoring.scored().map(|c| native.missed(c)).collect(),
        });
    }
    let summary = summarise(&scores, &dataset, scoring);
    Ok(Evaluation { scores, summary, previews })
}

/// Dice of label slices per scored class (the mean over cases that define the class) and the
/// mean over classes. Staged methods record both after every stage: a class the pseudo labels
/// lose entirely takes only a third of its Dice off a three-class mean, but shows as zero here.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelDice {
    /// One entry per scored class, in the order of `Scoring::scored()` (None: no case defines
    /// the class).
    pub per_class: Vec<Option<f64>>,
    /// The mean of the classes that have a value.
    pub mean: Option<f64>,
}

/// Dice at the training resolution only (validation after each stage: cheap, no file IO).
pub fn dice_at_resolution(cases: &[&Case], predictions: &[Vec<Vec<f32>>], scoring: &Scoring) -> LabelDice {
    let labels: Vec<Vec<Vec<u8>>> = predictions
        .iter()
        .map(|probabilities| probabilities.iter().map(|p| infer::argmax(p, scoring.classes)).collect())
        .collect();
    dice_of_labels(cases, &labels, scoring)
}

/// Dice (per case, then per class, then the mean) of label slices (per case) against the cases'
/// labels at the training resolution: validation Dice, and the Dice of pseudo labels.
pub fn dice_of_labels(cases: &[&Case], labels: &[Vec<Vec<u8>>], scoring: &Scoring) -> LabelDice {
    let scores: Vec<CaseScores> = cases
        .iter()
        .zip(labels)
        .map(|(case, hard)| {
            let confusion = confusion_at_resolution(case, hard, scoring.classes);
            CaseScores {
                case_id: case.id.clone(),
                values: BTreeMap::from([(
                    registry::DICE.name,
                    scoring.scored().map(|c| confusion.dice(c, scoring.empty)).collect(),
                )]),
                missed: scoring.scored().map(|c| confusion.missed(c)).collect(),
            }
        })
        .collect();
    let summary = summarise(&scores, &Confusion::new(scoring.classes), scoring);
    LabelDice {
        per_class: summary.per_class(registry::DICE.name).to_vec(),
        mean: summary.mean(registry::DICE.name),
    }
}

/// Confusion of predicted label slices against a case's slices at the training resolution.
pub fn confusion_at_resolution(case: &Case, predicted: &[Vec<u8>], classes: usize) -> Confusion {
    let mut confusion = Confusion::new(classes);
    for (slice, labels) in case.slices.iter().zip(predicted) {
        confusion.add(labels, &slice.label);
    }
    confusion
}

/// Predicted label slices resized back to the native plane size and stacked on `truth`'s grid.
fn native_prediction(truth: &Volume, axis: usize, labels: &[Vec<u8>], case: &Case) -> Volume {
    let mut volume = Volume::filled(truth.dims, truth.spacing, 0.0);
    let size = case.slices.first().map_or(0, |s| (s.label.len() as f64).sqrt() as usize);
    for (at, slice) in labels.iter().enumerate().take(truth.dims[axis]) {
        let (w, h, _) = truth.plane(axis, at);
        let as_float: Vec<f32> = slice.iter().map(|&v| v as f32).collect();
        volume.set_plane(axis, at, &resize_nearest_to(&as_float, size, size, w, h));
    }
    volume
}

fn as_labels(values: &[f32]) -> Vec<u8> {
    values.iter().map(|&v| v.clamp(0.0, 255.0) as u8).collect()
}

/// How a class's predicted surface stands against its true one in one case.
enum ClassSurfaces {
    /// The truth lacks the class: no surface distance is defined.
    AbsentFromTruth,
    /// The truth has it, the prediction none of it: the penalty in mm.
    Missed(f64),
    Measured(SurfaceDistances),
}

impl ClassSurfaces {
    /// A surface metric's value by the registry's missing-value rule.
    fn value(&self, metric: fn(&SurfaceDistances) -> f64, missing: Missing) -> Option<f64> {
        match (self, missing) {
            (Self::Measured(distances), _) => Some(metric(distances)),
            (Self::Missed(penalty), Missing::DistancePenalty) => Some(*penalty),
            (Self::Missed(_), Missing::EmptyClassRule) | (Self::AbsentFromTruth, _) => None,
        }
    }
}

/// The surfaces of every scored class: distances computed once, read by every surface metric.
fn surfaces_per_class(predicted: &Volume, truth: &Volume, scoring: &Scoring, missed: Hd95Missed) -> Vec<ClassSurfaces> {
    let spacing = truth.spacing.map(f64::from);
    scoring
        .scored()
        .map(|class| {
            let target = class as f32;
            let p: Vec<bool> = predicted.data.iter().map(|&v| v == target).collect();
            let t: Vec<bool> = truth.data.iter().map(|&v| v == target).collect();
            if !t.iter().any(|&x| x) {
                return ClassSurfaces::AbsentFromTruth;
            }
            if !p.iter().any(|&x| x) {
                return ClassSurfaces::Missed(missed.millimetres(truth.dims, spacing));
            }
            let mask = |voxels| Mask {
                dims: truth.dims,
                spacing,
                voxels,
            };
            surface::distances(&mask(&p), &mask(&t)).map_or(ClassSurfaces::AbsentFromTruth, ClassSurfaces::Measured)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::slices::Slice;

    #[test]
    fn per_class_dice_of_labels_names_the_class_a_labeling_lost() {
        // Two cases of one 2x2 slice each, classes 0 (background) to 3; class 3 is the small one.
        let case = |id: &str, label: Vec<u8>| Case {
            id: id.into(),
            slices: vec![Slice {
                image: vec![0.0; label.len()],
                label,
            }],
            native: None,
        };
        let cases = [case("a", vec![0, 1, 2, 3]), case("b", vec![1, 1, 2, 3])];
        let refs: Vec<&Case> = cases.iter().collect();
        let scoring = Scoring {
            classes: 4,
            first_class: 1,
            empty: EmptyClasses::Monai,
        };
        let truth: Vec<Vec<Vec<u8>>> = cases.iter().map(|c| vec![c.slices[0].label.clone()]).collect();
        let exact = dice_of_labels(&refs, &truth, &scoring);
        assert_eq!(exact.per_class, [Some(1.0), Some(1.0), Some(1.0)]);
        assert_eq!(exact.mean, Some(1.0));
        // A labeling that calls class 3 background everywhere: that class, and only it, drops to
        // 0, in its own position; the mean loses a third.
        let without_3: Vec<Vec<Vec<u8>>> = truth
            .iter()
            .map(|slices| {
                slices
                    .iter()
                    .map(|s| s.iter().map(|&c| if c == 3 { 0 } else { c }).collect())
                    .collect()
            })
            .collect();
        let lost = dice_of_labels(&refs, &without_3, &scoring);
        assert_eq!(lost.per_class, [Some(1.0), Some(1.0), Some(0.0)]);
        assert!((lost.mean.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn non_square_planes_resize_by_nearest_neighbour() {
        // 2x2 map to 4 wide, 2 high: each column doubled.
        assert_eq!(
            resize_nearest_to(&[1.0, 2.0, 3.0, 4.0], 2, 2, 4, 2),
            [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
        );
    }
}
