//! A dataset ready for training (its classes, its cases at one resolution, its fingerprint), and
//! the one trait every on-disk format implements to produce it.
//!
//! Like nnU-Net's planning step, preparation also fingerprints the data (case count, shapes,
//! spacing, class frequencies, intensity statistics) so a results folder says what it was run on.
//! Like nnU-Net's reader/writers, each format is one type in its own file (`phantom`, `msd`,
//! `nih`, `cityscapes`, `driving`, `brain`) implementing [`Reader`]; the dataset module lists them.

use super::native::NativeSource;
use super::slices::{Case, SlicePlan};
use super::volume::Volume;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How one on-disk format becomes a prepared dataset.
pub trait Reader {
    /// What the format is, in one line (`atso data list`).
    fn describe(&self) -> &'static str;

    /// The intensity window in the volume's units when the experiment file gives none.
    fn default_window(&self) -> [f32; 2];

    /// The name of the known dataset whose fixed settings (window, class names, folds) this
    /// format was given (`preset = ...`), if any.
    fn preset(&self) -> Option<&'static str> {
        None
    }

    /// Checks the format's own settings; errors name the dataset and the key.
    fn check(&self, _dataset: &str) -> Result<()> {
        Ok(())
    }

    /// Generates the data first when the format is generated, then reads every case under
    /// `root` and slices it by `plan`; errors name the file.
    fn read(&self, dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset>;
}

/// Summary statistics of a prepared dataset, written next to the results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fingerprint {
    pub cases: usize,
    pub slices: usize,
    pub min_dims: [usize; 3],
    pub max_dims: [usize; 3],
    pub median_spacing: [f32; 3],
    /// Fraction of labeled voxels per class, in class order.
    pub class_fractions: Vec<f64>,
    /// Fraction of voxels with no label (ignored), e.g. Cityscapes ids outside the 19 classes.
    #[serde(default)]
    pub ignored_fraction: f64,
    /// Mean and standard deviation of raw intensities inside the foreground (first channel).
    pub foreground_mean: f64,
    pub foreground_std: f64,
}

/// A dataset ready for training: its classes and its cases at one resolution.
#[derive(Debug, Clone)]
pub struct PreparedDataset {
    pub name: String,
    pub classes: Vec<String>,
    /// Image channels (1 for CT/MRI, 3 for RGB).
    pub in_channels: usize,
    /// First scored class (1: class 0 is background; 0: every class is real).
    pub first_class: usize,
    /// Label of pixels an augmentation brings in from outside the image.
    pub outside_label: u8,
    pub cases: Vec<Case>,
    pub fingerprint: Fingerprint,
    /// Test cases fixed by the data itself (Cityscapes' val folder), if any.
    pub fixed_test: Option<Vec<String>>,
    /// Cross-validation folds fixed by a preset (case ids per fold), if any.
    pub folds: Option<Vec<Vec<String>>>,
}

impl PreparedDataset {
    /// The classes renamed to a preset's names, which must be as many as the data has.
    pub(crate) fn with_class_names(mut self, expected: &[&str]) -> Result<Self> {
        if self.classes.len() != expected.len() {
            bail!(
                "dataset '{}': preset expects classes {expected:?}, the data has {:?}",
                self.name,
                self.classes
            );
        }
        self.classes = expected.iter().map(|c| c.to_string()).collect();
        Ok(self)
    }

    /// Checks what every loader must guarantee: cases, unique case ids and usable class names.
    pub fn check(&self) -> Result<()> {
        if self.cases.is_empty() {
            bail!("dataset '{}': no cases", self.name);
        }
        let mut seen = std::collections::BTreeSet::new();
        for case in &self.cases {
            if !seen.insert(case.id.as_str()) {
                bail!(
                    "dataset '{}': case id '{}' appears twice; case ids must be unique",
                    self.name,
                    case.id
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for class in &self.classes {
            if class.trim().is_empty() || crate::records::RESERVED_CLASS_NAMES.contains(&class.as_str()) {
                bail!(
                    "dataset '{}': class name '{class}' is not allowed (empty, or one of {:?}, which name table columns)",
                    self.name,
                    crate::records::RESERVED_CLASS_NAMES
                );
            }
            if !names.insert(class.as_str()) {
                bail!("dataset '{}': class name '{class}' appears twice", self.name);
            }
        }
        Ok(())
    }
}

/// Collects volume cases (one label map per case on the image grid) into a prepared dataset.
pub(crate) struct Volumes {
    name: String,
    classes: Vec<String>,
    plan: SlicePlan,
    stats: FingerprintBuilder,
    cases: Vec<Case>,
}

impl Volumes {
    pub(crate) fn new(name: &str, classes: Vec<String>, plan: SlicePlan) -> Self {
        Self {
            name: name.to_string(),
            stats: FingerprintBuilder::new(classes.len()),
            classes,
            plan,
            cases: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, id: &str, image: &Volume, label: &Volume, native: NativeSource) {
        self.stats.add(&image.data, label, image.dims, image.spacing);
        let mut case = self.plan.case(id, image, label);
        case.native = Some(native);
        self.cases.push(case);
    }

    pub(crate) fn finish(self) -> PreparedDataset {
        let slices = self.cases.iter().map(|c| c.slices.len()).sum();
        PreparedDataset {
            name: self.name,
            classes: self.classes,
            in_channels: 1,
            first_class: 1,
            outside_label: 0,
            fingerprint: self.stats.finish(slices),
            cases: self.cases,
            fixed_test: None,
            folds: None,
        }
    }
}

pub(crate) struct FingerprintBuilder {
    dims: Vec<[usize; 3]>,
    spacing: Vec<[f32; 3]>,
    class_counts: Vec<u64>,
    ignored: u64,
    fg: (f64, f64, u64),
}

impl FingerprintBuilder {
    pub(crate) fn new(classes: usize) -> Self {
        Self {
            dims: Vec::new(),
            spacing: Vec::new(),
            class_counts: vec![0; classes],
            ignored: 0,
            fg: (0.0, 0.0, 0),
        }
    }

    /// Adds one case: intensities (first channel) and labels voxel by voxel.
    pub(crate) fn add(&mut self, intensities: &[f32], label: &Volume, dims: [usize; 3], spacing: [f32; 3]) {
        self.dims.push(dims);
        self.spacing.push(spacing);
        for (&v, &c) in intensities.iter().zip(&label.data) {
            let class = c as usize;
            if class >= self.class_counts.len() {
                self.ignored += 1;
                continue;
            }
            self.class_counts[class] += 1;
            if c > 0.0 {
                self.fg.0 += v as f64;
                self.fg.1 += (v as f64) * (v as f64);
                self.fg.2 += 1;
            }
        }
    }

    pub(crate) fn finish(mut self, slices: usize) -> Fingerprint {
        let total: u64 = self.class_counts.iter().sum::<u64>().max(1);
        let ignored_fraction = self.ignored as f64 / (total + self.ignored) as f64;
        let axis_stat = |f: &dyn Fn(&[usize; 3]) -> usize, pick_max: bool| {
            let values = self.dims.iter().map(f);
            if pick_max {
                values.max().unwrap_or(0)
            } else {
                values.min().unwrap_or(0)
            }
        };
        let min_dims = [
            axis_stat(&|d| d[0], false),
            axis_stat(&|d| d[1], false),
            axis_stat(&|d| d[2], false),
        ];
        let max_dims = [axis_stat(&|d| d[0], true), axis_stat(&|d| d[1], true), axis_stat(&|d| d[2], true)];
        let mut median_spacing = [0.0; 3];
        for (axis, slot) in median_spacing.iter_mut().enumerate() {
            let mut values: Vec<f32> = self.spacing.iter().map(|s| s[axis]).collect();
            values.sort_by(f32::total_cmp);
            *slot = values.get(values.len() / 2).copied().unwrap_or(0.0);
        }
        let n = self.fg.2.max(1) as f64;
        let mean = self.fg.0 / n;
        self.dims.clear();
        Fingerprint {
            cases: self.spacing.len(),
            slices,
            min_dims,
            max_dims,
            median_spacing,
            class_fractions: self.class_counts.iter().map(|&c| c as f64 / total as f64).collect(),
            ignored_fraction,
            foreground_mean: mean,
            foreground_std: (self.fg.1 / n - mean * mean).max(0.0).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::Slice;

    /// A one-case dataset with the given class names.
    fn with_classes(classes: &[&str]) -> PreparedDataset {
        PreparedDataset {
            name: "d".into(),
            classes: classes.iter().map(|c| c.to_string()).collect(),
            in_channels: 1,
            first_class: 1,
            outside_label: 0,
            cases: vec![Case {
                id: "c".into(),
                slices: vec![Slice {
                    image: vec![0.0],
                    label: vec![0],
                }],
                native: None,
            }],
            fingerprint: Fingerprint {
                cases: 1,
                slices: 1,
                min_dims: [1, 1, 1],
                max_dims: [1, 1, 1],
                median_spacing: [1.0; 3],
                class_fractions: vec![1.0, 0.0],
                ignored_fraction: 0.0,
                foreground_mean: 0.0,
                foreground_std: 0.0,
            },
            fixed_test: None,
            folds: None,
        }
    }

    #[test]
    fn class_names_that_would_collide_with_table_columns_are_refused_by_name() {
        assert!(with_classes(&["background", "liver"]).check().is_ok());
        // `dice_mean` (runs table) and `pseudo_label_dice_all` (stages table) are summaries.
        for reserved in ["mean", "at_resolution_mean", "all"] {
            let message = with_classes(&["background", reserved]).check().unwrap_err().to_string();
            assert!(message.contains(&format!("class name '{reserved}' is not allowed")), "{message}");
        }
    }
}
