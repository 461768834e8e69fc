//! Medical Segmentation Decathlon layout: `imagesTr/*.nii.gz`, `labelsTr/*.nii.gz` and a
//! `dataset.json` that names the label values and lists the training pairs.
//!
//! This is the loader users' real Task03_Liver / Task07_Pancreas folders go through, and the one
//! the embedded phantom is read back with. It tolerates what real downloads contain: paths that
//! start with "./", non-contiguous ids, and macOS `._*` files.

use super::native::NativeSource;
use super::nifti;
use super::prepared::{PreparedDataset, Reader, Volumes};
use super::slices::SlicePlan;
use super::volume::Volume;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, Serialize)]
struct DatasetJson {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    modality: serde_json::Value,
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "numTraining")]
    num_training: Option<usize>,
    #[serde(default)]
    training: Vec<PairJson>,
    #[serde(default)]
    test: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
struct PairJson {
    image: String,
    label: String,
}

/// One labelled case of an MSD task: where its two files are.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// What `dataset.json` says: the task name, the class names by label value, and the cases.
#[derive(Debug, Clone)]
pub struct Index {
    pub name: String,
    pub classes: Vec<String>,
    pub entries: Vec<Entry>,
}

/// Reads `root/dataset.json` and checks that every listed file exists.
pub fn read_index(root: &Path) -> Result<Index> {
    let json_path = root.join("dataset.json");
    crate::fsio::ensure_regular_file(&json_path)?;
    let text =
        std::fs::read_to_string(&json_path).with_context(|| format!("{}: cannot read the MSD dataset description", json_path.display()))?;
    let json: DatasetJson =
        serde_json::from_str(&text).with_context(|| format!("{}: expected MSD dataset.json with a \"labels\" map", json_path.display()))?;
    let mut classes = Vec::with_capacity(json.labels.len());
    for value in 0..json.labels.len() {
        let name = json.labels.get(&value.to_string()).with_context(|| {
            format!(
                "{}: labels must be numbered 0..{} without gaps; {value} is missing",
                json_path.display(),
                json.labels.len() - 1
            )
        })?;
        classes.push(name.clone());
    }
    let mut entries = Vec::new();
    for pair in &json.training {
        let image = root.join(pair.image.trim_start_matches("./"));
        let label = root.join(pair.label.trim_start_matches("./"));
        let file_name = image.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if file_name.starts_with('.') {
            continue;
        }
        for path in [&image, &label] {
            if !path.is_file() {
                bail!("{}: lists {} but the file does not exist", json_path.display(), path.display());
            }
        }
        let id = file_name.trim_end_matches(".gz").trim_end_matches(".nii").to_string();
        entries.push(Entry { id, image, label });
    }
    if entries.is_empty() {
        bail!("{}: \"training\" lists no cases", json_path.display());
    }
    if let Some(n) = json.num_training {
        if n != entries.len() {
            tracing::warn!(file = %json_path.display(), num_training = n, listed = entries.len(), "numTraining differs from the listed cases");
        }
    }
    Ok(Index {
        name: json.name,
        classes,
        entries,
    })
}

/// Reads one case and checks that image and label agree in shape and that label values are
/// known classes.
pub fn load_case(entry: &Entry, class_count: usize) -> Result<(Volume, Volume)> {
    let image = nifti::read(&entry.image)?;
    let label = nifti::read(&entry.label)?;
    image.ensure_label_fits(&label, &entry.label, &entry.image.display().to_string())?;
    if let Some(bad) = label
        .data
        .iter()
        .find(|&&v| v < 0.0 || v.fract() != 0.0 || v as usize >= class_count)
    {
        bail!(
            "{}: label value {bad} is not one of the {class_count} classes in dataset.json",
            entry.label.display()
        );
    }
    Ok((image, label))
}

/// Writes an MSD `dataset.json` for cases named `names` (files `imagesTr/<name>.nii.gz`,
/// `labelsTr/<name>.nii.gz`).
pub fn write_dataset_json(root: &Path, name: &str, description: &str, modality: &str, classes: &[&str], names: &[String]) -> Result<()> {
    let json = DatasetJson {
        name: name.to_string(),
        description: description.to_string(),
        modality: serde_json::json!({ "0": modality }),
        labels: classes.iter().enumerate().map(|(i, c)| (i.to_string(), c.to_string())).collect(),
        num_training: Some(names.len()),
        training: names
            .iter()
            .map(|n| PairJson {
                image: format!("./imagesTr/{n}.nii.gz"),
                label: format!("./labelsTr/{n}.nii.gz"),
            })
            .collect(),
        test: Vec::new(),
    };
    let path = root.join("dataset.json");
    crate::fsio::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())
}

/// The CT window when neither the experiment file nor a preset gives one, in HU.
pub(crate) const CT_WINDOW: [f32; 2] = [-125.0, 275.0];

/// `format = "msd"`: a Medical Segmentation Decathlon task folder.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsdFormat {
    /// A known task's fixed settings (window, class names). Written by `DatasetSpec` before the
    /// window, where run hashes have always had it.
    #[serde(default, skip_serializing)]
    pub preset: Option<MsdPreset>,
}

/// Known MSD tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MsdPreset {
    /// Task03_Liver: background, liver, cancer; HU window [-200, 250] (H-DenseUNet's for LiTS,
    /// whose scans Task03 reuses).
    MsdLiver,
    /// Task07_Pancreas: background, pancreas, cancer; HU window [-100, 240] (RSTN's).
    MsdPancreas,
}

impl MsdPreset {
    fn window(self) -> [f32; 2] {
        match self {
            Self::MsdLiver => [-200.0, 250.0],
            Self::MsdPancreas => [-100.0, 240.0],
        }
    }

    fn classes(self) -> &'static [&'static str] {
        match self {
            Self::MsdLiver => &["background", "liver", "cancer"],
            Self::MsdPancreas => &["background", "pancreas", "cancer"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::MsdLiver => "msd-liver",
            Self::MsdPancreas => "msd-pancreas",
        }
    }
}

impl Reader for MsdFormat {
    fn describe(&self) -> &'static str {
        "Medical Segmentation Decathlon task folder: dataset.json, imagesTr/, labelsTr/ (.nii/.nii.gz)"
    }

    fn default_window(&self) -> [f32; 2] {
        self.preset.map_or(CT_WINDOW, MsdPreset::window)
    }

    fn preset(&self) -> Option<&'static str> {
        self.preset.map(MsdPreset::name)
    }

    fn read(&self, dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
        let prepared = read_layout(dataset, root, plan)?;
        match self.preset {
            Some(preset) => prepared.with_class_names(preset.classes()),
            None => Ok(prepared),
        }
    }
}

/// Every case of the MSD task folder at `root` (the phantom's layout too).
pub(crate) fn read_layout(dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
    let context = || format!("dataset '{dataset}'");
    let index = read_index(root).with_context(context)?;
    let mut volumes = Volumes::new(dataset, index.classes.clone(), plan);
    for entry in &index.entries {
        let (image, label) = load_case(entry, index.classes.len()).with_context(context)?;
        volumes.add(
            &entry.id,
            &image,
            &label,
            NativeSource::Nifti {
                geometry: entry.image.clone(),
                label: entry.label.clone(),
                axis: plan.axis,
            },
        );
    }
    Ok(volumes.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::Datatype;

    fn tiny_task(root: &Path) {
        let image = Volume {
            dims: [4, 4, 2],
            spacing: [1.0; 3],
            data: (0..32).map(|i| i as f32).collect(),
        };
        let label = Volume {
            dims: [4, 4, 2],
            spacing: [1.0; 3],
            data: (0..32).map(|i| (i % 3) as f32).collect(),
        };
        for name in ["liver_0", "liver_7"] {
            nifti::write(&root.join(format!("imagesTr/{name}.nii.gz")), &image, Datatype::I16, 352).unwrap();
            nifti::write(&root.join(format!("labelsTr/{name}.nii.gz")), &label, Datatype::U8, 352).unwrap();
        }
        std::fs::write(root.join("imagesTr/._liver_0.nii.gz"), b"mac junk").unwrap();
        write_dataset_json(
            root,
            "Task03_Liver",
            "",
            "CT",
            &["background", "liver", "cancer"],
            &["liver_0".into(), "liver_7".into(), "._liver_0".into()],
        )
        .unwrap();
    }

    #[test]
    fn reads_index_skipping_dot_files() {
        let dir = tempfile::tempdir().unwrap();
        tiny_task(dir.path());
        let index = read_index(dir.path()).unwrap();
        assert_eq!(index.classes, ["background", "liver", "cancer"]);
        let ids: Vec<_> = index.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["liver_0", "liver_7"]);
        let (image, label) = load_case(&index.entries[1], 3).unwrap();
        assert_eq!(image.dims, [4, 4, 2]);
        assert_eq!(label.data[5], 2.0);
    }

    #[test]
    fn shape_mismatch_names_the_label_file() {
        let dir = tempfile::tempdir().unwrap();
        tiny_task(dir.path());
        let small = Volume {
            dims: [2, 2, 2],
            spacing: [1.0; 3],
            data: vec![0.0; 8],
        };
        nifti::write(&dir.path().join("labelsTr/liver_7.nii.gz"), &small, Datatype::U8, 352).unwrap();
        let index = read_index(dir.path()).unwrap();
        let message = format!("{:#}", load_case(&index.entries[1], 3).unwrap_err());
        assert!(
            message.contains("labelsTr/liver_7.nii.gz") && message.contains("differs"),
            "{message}"
        );
    }

    #[test]
    fn missing_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        tiny_task(dir.path());
        std::fs::remove_file(dir.path().join("imagesTr/liver_7.nii.gz")).unwrap();
        let message = format!("{:#}", read_index(dir.path()).unwrap_err());
        assert!(
            message.contains("liver_7.nii.gz") && message.contains("does not exist"),
            "{message}"
        );
    }
}
