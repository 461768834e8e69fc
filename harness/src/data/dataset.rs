//! Dataset specs from experiment files, and their preparation into cases of slices.
//!
//! Like nnU-Net's planning step, preparation also fingerprints the data (case count, shapes,
//! spacing, class frequencies, intensity statistics) so a results folder says what it was run on.

use super::msd;
use super::native::NativeSource;
use super::phantom::{self, PhantomSpec};
use super::slices::{Case, SlicePlan};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// On-disk layouts the harness reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// The embedded synthetic CT, generated into MSD layout at `path` when missing.
    #[default]
    Phantom,
    /// A Medical Segmentation Decathlon task folder (dataset.json, imagesTr, labelsTr).
    Msd,
}

/// One `[[datasets]]` entry of an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Name used in results rows.
    pub name: String,
    pub format: DataFormat,
    /// Folder of the data (relative paths are taken from the working directory).
    pub path: PathBuf,
    /// Intensity window in the volume's units (HU for CT).
    #[serde(default = "default_window")]
    pub window: [f32; 2],
    /// Axis to slice along (0, 1 or 2).
    #[serde(default = "default_axis")]
    pub axis: usize,
    /// Generator settings for the phantom format.
    #[serde(default)]
    pub phantom: Option<PhantomSpec>,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            name: "phantom-ct".into(),
            format: DataFormat::Phantom,
            path: PathBuf::from("data/phantom-ct"),
            window: default_window(),
            axis: default_axis(),
            phantom: None,
        }
    }
}

fn default_window() -> [f32; 2] {
    [-125.0, 275.0]
}

fn default_axis() -> usize {
    2
}

/// Summary statistics of a prepared dataset, written next to the results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fingerprint {
    pub cases: usize,
    pub slices: usize,
    pub min_dims: [usize; 3],
    pub max_dims: [usize; 3],
    pub median_spacing: [f32; 3],
    /// Fraction of voxels per class, in class order.
    pub class_fractions: Vec<f64>,
    /// Mean and standard deviation of raw intensities inside the foreground.
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
}

impl PreparedDataset {
    /// Checks what every loader must guarantee: unique case ids and usable class names.
    pub fn check(&self) -> Result<()> {
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

impl DatasetSpec {
    /// Checks values that serde cannot (window order, axis range).
    pub fn validate(&self) -> Result<()> {
        crate::config::validate_name("datasets", "dataset name", &self.name)?;
        if self.window[0].partial_cmp(&self.window[1]) != Some(std::cmp::Ordering::Less) {
            bail!(
                "dataset '{}': window must be [low, high] with low < high, got {:?}",
                self.name,
                self.window
            );
        }
        if self.axis > 2 {
            bail!("dataset '{}': axis must be 0, 1 or 2, got {}", self.name, self.axis);
        }
        if self.format == DataFormat::Phantom && self.phantom.as_ref().is_some_and(|p| p.cases < 4) {
            bail!(
                "dataset '{}': phantom.cases must be at least 4 (labeled, unlabeled, validation, test)",
                self.name
            );
        }
        Ok(())
    }

    /// Generates (phantom) if needed, reads every case and slices it at `resolution`.
    pub fn prepare(&self, resolution: usize, base_dir: &Path) -> Result<PreparedDataset> {
        self.validate()?;
        let root = if self.path.is_absolute() {
            self.path.clone()
        } else {
            base_dir.join(&self.path)
        };
        if self.format == DataFormat::Phantom {
            phantom::ensure(&root, &self.phantom.clone().unwrap_or_default())?;
        }
        let index = msd::read_index(&root).with_context(|| format!("dataset '{}'", self.name))?;
        let plan = SlicePlan {
            window: self.window,
            axis: self.axis,
            resolution,
        };
        let mut cases = Vec::with_capacity(index.entries.len());
        let mut stats = FingerprintBuilder::new(index.classes.len());
        for entry in &index.entries {
            let (image, label) = msd::load_case(entry, index.classes.len()).with_context(|| format!("dataset '{}'", self.name))?;
            stats.add(&image, &label);
            let mut case = plan.case(&entry.id, &image, &label);
            case.native = Some(NativeSource {
                image: entry.image.clone(),
                label: entry.label.clone(),
                axis: self.axis,
            });
            cases.push(case);
        }
        let fingerprint = stats.finish(cases.iter().map(|c| c.slices.len()).sum());
        let prepared = PreparedDataset {
            name: self.name.clone(),
            classes: index.classes,
            in_channels: 1,
            first_class: 1,
            outside_label: 0,
            cases,
            fingerprint,
        };
        prepared.check()?;
        Ok(prepared)
    }
}

struct FingerprintBuilder {
    dims: Vec<[usize; 3]>,
    spacing: Vec<[f32; 3]>,
    class_counts: Vec<u64>,
    fg: (f64, f64, u64),
}

impl FingerprintBuilder {
    fn new(classes: usize) -> Self {
        Self {
            dims: Vec::new(),
            spacing: Vec::new(),
            class_counts: vec![0; classes],
            fg: (0.0, 0.0, 0),
        }
    }

    fn add(&mut self, image: &super::Volume, label: &super::Volume) {
        self.dims.push(image.dims);
        self.spacing.push(image.spacing);
        for (&v, &c) in image.data.iter().zip(&label.data) {
            self.class_counts[c as usize] += 1;
            if c > 0.0 {
                self.fg.0 += v as f64;
                self.fg.1 += (v as f64) * (v as f64);
                self.fg.2 += 1;
            }
        }
    }

    fn finish(mut self, slices: usize) -> Fingerprint {
        let total: u64 = self.class_counts.iter().sum::<u64>().max(1);
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
            foreground_mean: mean,
            foreground_std: (self.fg.1 / n - mean * mean).max(0.0).sqrt(),
        }
    }
}
