//! NIH Pancreas-CT (TCIA): one DICOM series per patient under `PANCREAS_0001/<study>/<series>/`
//! (folder names vary, so the tree is walked), labels `label0001.nii.gz .. label0082.nii.gz` in a
//! folder of their own; or the common converted layout with `PANCREAS_0001.nii.gz` images beside
//! the label files. Classes: background, pancreas.
//!
//! Axis convention (that of the label files): the label's x runs along DICOM columns, y along
//! rows, z over slices in InstanceNumber order (z = InstanceNumber - 1); `dicom::read_series`
//! builds the image on the same grid. Image and label must then agree in shape, which is checked.

use super::native::NativeSource;
use super::prepared::{PreparedDataset, Reader, Volumes};
use super::slices::SlicePlan;
use super::volume::Volume;
use super::{dicom, nifti};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The classes of the label files.
pub const CLASSES: [&str; 2] = ["background", "pancreas"];

/// Where a case's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A folder holding the DICOM series.
    Dicom(PathBuf),
    /// A converted `PANCREAS_xxxx.nii(.gz)`.
    Nifti(PathBuf),
}

/// One patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `PANCREAS_0001`.
    pub id: String,
    pub number: u32,
    pub image: ImageSource,
    pub label: PathBuf,
}

/// The number in `PANCREAS_0001` or `label0001`, when `name` is one of them.
fn numbered(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let tail = &rest[digits.len()..];
    if digits.is_empty() || !(tail.is_empty() || tail == ".nii" || tail == ".nii.gz") {
        return None;
    }
    digits.parse().ok()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if crate::fsio::is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        }
        out.push(path);
    }
    Ok(())
}

/// The folder under `patient` whose files are the series (the one with the most files).
fn series_folder(patient: &Path) -> Result<PathBuf> {
    let mut all = Vec::new();
    walk(patient, &mut all)?;
    let mut counts: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for file in all.iter().filter(|p| p.is_file()) {
        if let Some(parent) = file.parent() {
            *counts.entry(parent.to_path_buf()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(p, _)| p)
        .with_context(|| format!("{}: no DICOM files under the patient folder", patient.display()))
}

/// Finds every patient and its label file under `root`.
pub fn index(root: &Path) -> Result<Vec<Entry>> {
    if !root.is_dir() {
        bail!(
            "{}: no such folder (expected NIH Pancreas-CT: PANCREAS_xxxx folders or files and labelxxxx.nii.gz)",
            root.display()
        );
    }
    let mut all = Vec::new();
    walk(root, &mut all)?;
    let mut images: BTreeMap<u32, ImageSource> = BTreeMap::new();
    let mut labels: BTreeMap<u32, PathBuf> = BTreeMap::new();
    for path in &all {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(n) = numbered(name, "label") {
            if labels.insert(n, path.clone()).is_some() {
                bail!("{}: a second label file for case {n}", path.display());
            }
        } else if let Some(n) = numbered(name, "PANCREAS_") {
            let source = if path.is_dir() {
                ImageSource::Dicom(series_folder(path)?)
            } else {
                ImageSource::Nifti(path.clone())
            };
            if images.insert(n, source).is_some() {
                bail!("{}: case {n} has two images (a folder and a converted file?)", path.display());
            }
        }
    }
    if images.is_empty() {
        bail!(
            "{}: no PANCREAS_xxxx patient folders or converted PANCREAS_xxxx.nii.gz files",
            root.display()
        );
    }
    images
        .into_iter()
        .map(|(number, image)| {
            let label = labels
                .get(&number)
                .cloned()
                .with_context(|| format!("{}: case PANCREAS_{number:04} has no label{number:04}.nii.gz", root.display()))?;
            Ok(Entry {
                id: format!("PANCREAS_{number:04}"),
                number,
                image,
                label,
            })
        })
        .collect()
}

/// Reads a case's image (HU) and label, checking shape and label values.
pub fn load_case(entry: &Entry) -> Result<(Volume, Volume)> {
    let image = match &entry.image {
        ImageSource::Dicom(dir) => dicom::read_series(dir)?,
        ImageSource::Nifti(path) => nifti::read(path)?,
    };
    let label = nifti::read(&entry.label)?;
    let source = match &entry.image {
        ImageSource::Dicom(d) => d.display().to_string(),
        ImageSource::Nifti(p) => p.display().to_string(),
    };
    image.ensure_label_fits(&label, &entry.label, &source)?;
    if let Some(bad) = label.data.iter().find(|&&v| v != 0.0 && v != 1.0) {
        bail!("{}: label value {bad} is not background (0) or pancreas (1)", entry.label.display());
    }
    Ok((image, label))
}

/// `format = "nih-pancreas"`: NIH Pancreas-CT.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NihFormat {
    /// The dataset's fixed settings (window, classes, folds). Written by `DatasetSpec` before
    /// the window, where run hashes have always had it.
    #[serde(default, skip_serializing)]
    pub preset: Option<NihPreset>,
}

/// The NIH Pancreas-CT preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NihPreset {
    /// Background, pancreas; HU window [-100, 240]; RSTN's 4 folds over cases 1-20, 21-40,
    /// 41-61, 62-82 (pick one with `[splits] test_fold`).
    NihPancreas,
}

impl NihPreset {
    /// Case-number ranges of the cross-validation folds.
    fn folds(self) -> [(u32, u32); 4] {
        [(1, 20), (21, 40), (41, 61), (62, 82)]
    }
}

impl Reader for NihFormat {
    fn describe(&self) -> &'static str {
        "NIH Pancreas-CT: PANCREAS_xxxx DICOM series or PANCREAS_xxxx.nii.gz, labelxxxx.nii.gz"
    }

    fn default_window(&self) -> [f32; 2] {
        match self.preset {
            Some(NihPreset::NihPancreas) => [-100.0, 240.0],
            None => super::msd::CT_WINDOW,
        }
    }

    fn preset(&self) -> Option<&'static str> {
        self.preset.map(|_| "nih-pancreas")
    }

    fn read(&self, dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
        let context = || format!("dataset '{dataset}'");
        let entries = index(root).with_context(context)?;
        let mut volumes = Volumes::new(dataset, CLASSES.map(String::from).to_vec(), plan);
        for entry in &entries {
            let (image, label) = load_case(entry).with_context(context)?;
            volumes.add(
                &entry.id,
                &image,
                &label,
                NativeSource::Nifti {
                    geometry: entry.label.clone(),
                    label: entry.label.clone(),
                    axis: plan.axis,
                },
            );
        }
        let mut prepared = volumes.finish();
        if let Some(preset) = self.preset {
            let of_fold = |(first, last): (u32, u32)| {
                entries
                    .iter()
                    .filter(|e| (first..=last).contains(&e.number))
                    .map(|e| e.id.clone())
                    .collect()
            };
            prepared.folds = Some(preset.folds().into_iter().map(of_fold).collect());
            prepared = prepared.with_class_names(&CLASSES)?;
        }
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised() {
        assert_eq!(numbered("PANCREAS_0012", "PANCREAS_"), Some(12));
        assert_eq!(numbered("PANCREAS_0012.nii.gz", "PANCREAS_"), Some(12));
        assert_eq!(numbered("label0012.nii.gz", "label"), Some(12));
        assert_eq!(numbered("label0012_old.nii.gz", "label"), None);
        assert_eq!(numbered("labels", "label"), None);
    }
}
