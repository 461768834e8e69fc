//! Dataset specs from experiment files, and their preparation into cases of slices.
//!
//! Like nnU-Net's planning step, preparation also fingerprints the data (case count, shapes,
//! spacing, class frequencies, intensity statistics) so a results folder says what it was run on.

use super::driving::{self, DrivingSpec};
use super::native::NativeSource;
use super::phantom::{self, PhantomSpec};
use super::slices::{Case, SlicePlan};
use super::volume::IGNORE;
use super::{brain, cityscapes, msd, nih};
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
    /// NIH Pancreas-CT: DICOM series per patient (or converted PANCREAS_xxxx.nii.gz) and
    /// labelxxxx.nii.gz files.
    NihPancreas,
    /// A Cityscapes tree (leftImg8bit/, gtFine/).
    Cityscapes,
    /// Synthetic driving scenes, generated as a Cityscapes tree at `path` when missing.
    DrivingPhantom,
    /// Colin27 T1 + AAL parcellation, installed with `atso data install colin27`.
    Colin27,
    /// MNI152 2009 T1 + tissue maps, installed with `atso data install mni152`.
    Mni152,
}

impl DataFormat {
    /// Every format, for `atso data list`.
    pub const ALL: [DataFormat; 7] = [
        Self::Phantom,
        Self::Msd,
        Self::NihPancreas,
        Self::Cityscapes,
        Self::DrivingPhantom,
        Self::Colin27,
        Self::Mni152,
    ];

    /// The name used in experiment files.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// What the format is, in one line.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Phantom => "synthetic abdominal CT (liver, pancreas, lesion), generated; MSD layout",
            Self::Msd => "Medical Segmentation Decathlon task folder: dataset.json, imagesTr/, labelsTr/ (.nii/.nii.gz)",
            Self::NihPancreas => "NIH Pancreas-CT: PANCREAS_xxxx DICOM series or PANCREAS_xxxx.nii.gz, labelxxxx.nii.gz",
            Self::Cityscapes => "Cityscapes: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png, gtFine/.../*_gtFine_labelIds.png",
            Self::DrivingPhantom => "synthetic driving scenes, generated as a Cityscapes tree",
            Self::Colin27 => "Colin27 T1 + AAL (Debian mricron-data; `atso data install colin27`), slab cases",
            Self::Mni152 => "MNI152 2009 T1 + grey/white matter (nilearn wheel; `atso data install mni152`), slab cases",
        }
    }

    fn is_ct(self) -> bool {
        matches!(self, Self::Phantom | Self::Msd | Self::NihPancreas)
    }
}

/// Known datasets with their fixed settings (window, classes, cross-validation folds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// MSD Task03_Liver: background, liver, cancer; HU window [-200, 250] (H-DenseUNet's for
    /// LiTS, whose scans Task03 reuses).
    MsdLiver,
    /// MSD Task07_Pancreas: background, pancreas, cancer; HU window [-100, 240] (RSTN's).
    MsdPancreas,
    /// NIH Pancreas-CT: background, pancreas; HU window [-100, 240]; RSTN's 4 folds over cases
    /// 1-20, 21-40, 41-61, 62-82 (pick one with `[splits] test_fold`).
    NihPancreas,
}

impl Preset {
    fn format(self) -> DataFormat {
        match self {
            Self::MsdLiver | Self::MsdPancreas => DataFormat::Msd,
            Self::NihPancreas => DataFormat::NihPancreas,
        }
    }

    fn window(self) -> [f32; 2] {
        match self {
            Self::MsdLiver => [-200.0, 250.0],
            Self::MsdPancreas | Self::NihPancreas => [-100.0, 240.0],
        }
    }

    fn classes(self) -> &'static [&'static str] {
        match self {
            Self::MsdLiver => &["background", "liver", "cancer"],
            Self::MsdPancreas => &["background", "pancreas", "cancer"],
            Self::NihPancreas => &["background", "pancreas"],
        }
    }

    /// Case-number ranges of the cross-validation folds.
    fn folds(self) -> Option<[(u32, u32); 4]> {
        match self {
            Self::NihPancreas => Some([(1, 20), (21, 40), (41, 61), (62, 82)]),
            _ => None,
        }
    }
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
    /// A known dataset's fixed settings (window, expected classes, folds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Intensity window in the volume's units, mapped to [0, 1] (default: the preset's, else
    /// [-125, 275] HU for CT and [0, 255] for the 8-bit MRI templates; unused for RGB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<[f32; 2]>,
    /// Axis to slice along (0, 1 or 2).
    #[serde(default = "default_axis")]
    pub axis: usize,
    /// Generator settings for the phantom format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phantom: Option<PhantomSpec>,
    /// Generator settings for the driving-phantom format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driving: Option<DrivingSpec>,
    /// Label grouping of the brain formats (colin27: "lobes" or "coarse"; mni152: "tissue" or
    /// "tissue-csf").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Slices per case of the one-subject brain formats (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slab: Option<usize>,
    /// The transfer setting: labeled cases from this dataset, unlabeled, validation and test
    /// cases from the named one (another `[[datasets]]` entry with the same classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_dataset: Option<String>,
    /// Use this dataset only as another entry's reference: no runs of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reference_only: bool,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            name: "phantom-ct".into(),
            format: DataFormat::Phantom,
            path: PathBuf::from("data/phantom-ct"),
            preset: None,
            window: None,
            axis: default_axis(),
            phantom: None,
            driving: None,
            labels: None,
            slab: None,
            reference_dataset: None,
            reference_only: false,
        }
    }
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

impl DatasetSpec {
    /// Checks values that serde cannot (window order, axis range, keys of another format).
    pub fn validate(&self) -> Result<()> {
        crate::records::validate_name("datasets", "dataset name", &self.name)?;
        if let Some(window) = self.window {
            if window[0].partial_cmp(&window[1]) != Some(std::cmp::Ordering::Less) {
                bail!(
                    "dataset '{}': window must be [low, high] with low < high, got {window:?}",
                    self.name
                );
            }
        }
        if self.axis > 2 {
            bail!("dataset '{}': axis must be 0, 1 or 2, got {}", self.name, self.axis);
        }
        if let Some(preset) = self.preset {
            if preset.format() != self.format {
                bail!(
                    "dataset '{}': preset '{}' is for format '{}', not '{}'",
                    self.name,
                    serde_json::to_value(preset)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    preset.format().name(),
                    self.format.name()
                );
            }
        }
        let misplaced = |key: &str, present: bool, formats: &str| -> Result<()> {
            if present {
                bail!(
                    "dataset '{}': `{key}` applies to format {formats}, not '{}'",
                    self.name,
                    self.format.name()
                );
            }
            Ok(())
        };
        misplaced("phantom", self.phantom.is_some() && self.format != DataFormat::Phantom, "phantom")?;
        misplaced(
            "driving",
            self.driving.is_some() && self.format != DataFormat::DrivingPhantom,
            "driving-phantom",
        )?;
        let brain = matches!(self.format, DataFormat::Colin27 | DataFormat::Mni152);
        misplaced("labels", self.labels.is_some() && !brain, "colin27 or mni152")?;
        misplaced("slab", self.slab.is_some() && !brain, "colin27 or mni152")?;
        if self.slab == Some(0) {
            bail!("dataset '{}': slab must be at least 1 slice", self.name);
        }
        if self.format == DataFormat::Phantom && self.phantom.as_ref().is_some_and(|p| p.cases < 4) {
            bail!(
                "dataset '{}': phantom.cases must be at least 4 (labeled, unlabeled, validation, test)",
                self.name
            );
        }
        if self.reference_dataset.as_deref() == Some(self.name.as_str()) {
            bail!("dataset '{}': reference_dataset names the dataset itself", self.name);
        }
        Ok(())
    }

    /// The intensity window in use.
    pub fn window(&self) -> [f32; 2] {
        self.window
            .or(self.preset.map(Preset::window))
            .unwrap_or(if self.format.is_ct() { [-125.0, 275.0] } else { [0.0, 255.0] })
    }

    /// The data folder, relative paths taken from `base_dir`.
    pub fn root(&self, base_dir: &Path) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            base_dir.join(&self.path)
        }
    }

    /// Generates the data if the format is generated, reads every case and slices it at
    /// `resolution`; fingerprints it.
    pub fn prepare(&self, resolution: usize, base_dir: &Path) -> Result<PreparedDataset> {
        self.validate()?;
        let root = self.root(base_dir);
        let plan = SlicePlan {
            window: self.window(),
            axis: self.axis,
            resolution,
        };
        let context = || format!("dataset '{}'", self.name);
        let mut prepared = match self.format {
            DataFormat::Phantom | DataFormat::Msd => {
                if self.format == DataFormat::Phantom {
                    phantom::ensure(&root, &self.phantom.clone().unwrap_or_default())?;
                }
                let index = msd::read_index(&root).with_context(context)?;
                let mut volumes = Volumes::new(&self.name, index.classes.clone(), plan);
                for entry in &index.entries {
                    let (image, label) = msd::load_case(entry, index.classes.len()).with_context(context)?;
                    volumes.add(
                        &entry.id,
                        &image,
                        &label,
                        NativeSource::Nifti {
                            geometry: entry.image.clone(),
                            label: entry.label.clone(),
                            axis: self.axis,
                        },
                    );
                }
                volumes.finish()
            }
            DataFormat::NihPancreas => {
                let entries = nih::index(&root).with_context(context)?;
                let mut volumes = Volumes::new(&self.name, nih::CLASSES.map(String::from).to_vec(), plan);
                for entry in &entries {
                    let (image, label) = nih::load_case(entry).with_context(context)?;
                    volumes.add(
                        &entry.id,
                        &image,
                        &label,
                        NativeSource::Nifti {
                            geometry: entry.label.clone(),
                            label: entry.label.clone(),
                            axis: self.axis,
                        },
                    );
                }
                let mut prepared = volumes.finish();
                if let Some(folds) = self.preset.and_then(Preset::folds) {
                    prepared.folds = Some(
                        folds
                            .iter()
                            .map(|(first, last)| {
                                entries
                                    .iter()
                                    .filter(|e| (*first..=*last).contains(&e.number))
                                    .map(|e| e.id.clone())
                                    .collect()
                            })
                            .collect(),
                    );
                }
                prepared
            }
            DataFormat::Cityscapes | DataFormat::DrivingPhantom => {
                if self.format == DataFormat::DrivingPhantom {
                    driving::ensure(&root, &self.driving.clone().unwrap_or_default())?;
                }
                let entries = cityscapes::index(&root).with_context(context)?;
                let classes: Vec<String> = cityscapes::CLASSES.map(String::from).to_vec();
                let mut stats = FingerprintBuilder::new(classes.len());
                let mut cases = Vec::with_capacity(entries.len());
                for entry in &entries {
                    let (case, intensity, labels) = cityscapes::load_case_and_native(entry, resolution).with_context(context)?;
                    stats.add(&intensity[..labels.data.len()], &labels, labels.dims, labels.spacing);
                    cases.push(case);
                }
                PreparedDataset {
                    name: self.name.clone(),
                    classes,
                    in_channels: 3,
                    first_class: 0,
                    outside_label: IGNORE,
                    fingerprint: stats.finish(cases.len()),
                    cases,
                    fixed_test: Some(entries.iter().filter(|e| e.split == "val").map(|e| e.id.clone()).collect()),
                    folds: None,
                }
            }
            DataFormat::Colin27 | DataFormat::Mni152 => {
                let subject = if self.format == DataFormat::Colin27 {
                    brain::colin27(&root, self.labels.as_deref().unwrap_or("lobes"))
                } else {
                    brain::mni152(&root, self.labels.as_deref().unwrap_or("tissue"))
                }
                .with_context(context)?;
                let mut volumes = Volumes::new(&self.name, subject.classes.clone(), plan);
                for (i, range) in brain::slabs(&subject.labels, self.axis, self.slab.unwrap_or(8))
                    .into_iter()
                    .enumerate()
                {
                    let image = subject.image.crop(self.axis, range);
                    let label = subject.labels.crop(self.axis, range);
                    let id = format!("slab{i:02}_{}-{}", range.0, range.0 + range.1 - 1);
                    volumes.add(&id, &image, &label, brain::slab_source(&subject, self.axis, range));
                }
                volumes.finish()
            }
        };
        if let Some(preset) = self.preset {
            let expected: Vec<String> = preset.classes().iter().map(|c| c.to_string()).collect();
            if prepared.classes.len() != expected.len() {
                bail!(
                    "dataset '{}': preset expects classes {expected:?}, the data has {:?}",
                    self.name,
                    prepared.classes
                );
            }
            prepared.classes = expected;
        }
        prepared.check()?;
        Ok(prepared)
    }
}

/// Collects volume cases (one label map per case on the image grid) into a prepared dataset.
struct Volumes {
    name: String,
    classes: Vec<String>,
    plan: SlicePlan,
    stats: FingerprintBuilder,
    cases: Vec<Case>,
}

impl Volumes {
    fn new(name: &str, classes: Vec<String>, plan: SlicePlan) -> Self {
        Self {
            name: name.to_string(),
            stats: FingerprintBuilder::new(classes.len()),
            classes,
            plan,
            cases: Vec::new(),
        }
    }

    fn add(&mut self, id: &str, image: &super::Volume, label: &super::Volume, native: NativeSource) {
        self.stats.add(&image.data, label, image.dims, image.spacing);
        let mut case = self.plan.case(id, image, label);
        case.native = Some(native);
        self.cases.push(case);
    }

    fn finish(self) -> PreparedDataset {
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

struct FingerprintBuilder {
    dims: Vec<[usize; 3]>,
    spacing: Vec<[f32; 3]>,
    class_counts: Vec<u64>,
    ignored: u64,
    fg: (f64, f64, u64),
}

impl FingerprintBuilder {
    fn new(classes: usize) -> Self {
        Self {
            dims: Vec::new(),
            spacing: Vec::new(),
            class_counts: vec![0; classes],
            ignored: 0,
            fg: (0.0, 0.0, 0),
        }
    }

    /// Adds one case: intensities (first channel) and labels voxel by voxel.
    fn add(&mut self, intensities: &[f32], label: &super::Volume, dims: [usize; 3], spacing: [f32; 3]) {
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

    fn finish(mut self, slices: usize) -> Fingerprint {
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
    use crate::data::slices::Slice;

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
