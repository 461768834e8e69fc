//! Real brain MRI that installs by package name (`atso data install`): the Colin27 T1 with the
//! AAL parcellation (Debian's mricron-data) and the MNI152 2009 T1 with grey/white-matter maps
//! (the nilearn wheel on PyPI).
//!
//! Each is one subject, so a "case" is a contiguous slab of slices: the volume is sliced along
//! its axis, slices without brain are dropped, and the rest is cut into slabs of `slab` slices
//! (the last may be shorter). Splits are by slab, never by random slice, so no training slice
//! is a neighbour of a test slice except across one slab boundary. What such a benchmark can
//! show: how methods use few labeled slabs of one brain on other slabs of the same brain. What it
//! cannot: generalisation across subjects, scanners or pathology.
//!
//! Labels: AAL's 116 regions grouped by the thousands digit of their code into 8 lobes
//! (`labels = "lobes"`, the default: frontal, insula, limbic, occipital, parietal, deep grey,
//! temporal, cerebellum) or into cortex, deep nuclei and cerebellum (`labels = "coarse"`); MNI152
//! tissue = argmax(255 - gm - wm, gm, wm) (`"tissue"`), with a CSF class for brain voxels that are
//! neither (`"tissue-csf"`).

use super::native::{LabelRecipe, NativeSource};
use super::nifti;
use super::prepared::{PreparedDataset, Reader, Volumes};
use super::slices::SlicePlan;
use super::volume::Volume;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Files of the installed Colin27 folder.
pub const COLIN27_FILES: [&str; 3] = ["ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt"];
/// Files of the installed MNI152 folder.
pub const MNI152_FILES: [&str; 3] = [
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
];

const LOBES: [(u32, &str); 8] = [
    (2, "frontal"),
    (3, "insula"),
    (4, "limbic"),
    (5, "occipital"),
    (6, "parietal"),
    (7, "deep-grey"),
    (8, "temporal"),
    (9, "cerebellum"),
];

/// A one-subject dataset: image, derived labels, class names.
pub struct Subject {
    pub image: Volume,
    pub labels: Volume,
    pub classes: Vec<String>,
    pub image_path: PathBuf,
    pub recipe: LabelRecipe,
}

fn need(root: &Path, files: &[&str], install: &str) -> Result<()> {
    for file in files {
        if !root.join(file).is_file() {
            bail!(
                "{}: {file} is missing; install the data with `atso data install {install} --into {}`",
                root.display(),
                root.parent().map_or(".".into(), |p| p.display().to_string())
            );
        }
    }
    Ok(())
}

/// AAL region index -> class, from `aal.nii.txt` (lines "index name code").
fn aal_groups(table: &Path, grouping: Colin27Labels) -> Result<(Vec<u8>, Vec<String>)> {
    let text = std::fs::read_to_string(table).with_context(|| format!("reading {}", table.display()))?;
    let mut groups = vec![0u8; 256];
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let parse = || -> Option<(usize, u32)> { Some((fields.first()?.parse().ok()?, fields.last()?.parse().ok()?)) };
        let Some((index, code)) = parse().filter(|(i, _)| *i < 256) else {
            bail!("{} line {}: expected \"index name code\", got \"{line}\"", table.display(), n + 1);
        };
        groups[index] = match grouping {
            Colin27Labels::Lobes => LOBES.iter().position(|(digit, _)| *digit == code / 1000).map_or(0, |p| p as u8 + 1),
            // cortex: regions 1-70 and 79-90; deep nuclei 71-78; cerebellum 91-116.
            Colin27Labels::Coarse => match index {
                1..=70 | 79..=90 => 1,
                71..=78 => 2,
                91..=116 => 3,
                _ => 0,
            },
        };
    }
    let classes = match grouping {
        Colin27Labels::Lobes => std::iter::once("background")
            .chain(LOBES.iter().map(|(_, n)| *n))
            .map(String::from)
            .collect(),
        Colin27Labels::Coarse => ["background", "cortex", "deep-nuclei", "cerebellum"].map(String::from).to_vec(),
    };
    Ok((groups, classes))
}

/// The Colin27 subject from an installed folder.
pub fn colin27(root: &Path, grouping: Colin27Labels) -> Result<Subject> {
    need(root, &COLIN27_FILES, "colin27")?;
    let (groups, classes) = aal_groups(&root.join("aal.nii.txt"), grouping)?;
    let recipe = LabelRecipe::Grouped {
        file: root.join("aal.nii.gz"),
        groups,
    };
    let image_path = root.join("ch2bet.nii.gz");
    let image = nifti::read(&image_path)?;
    let labels = recipe.derive()?;
    image.ensure_label_fits(&labels, &root.join("aal.nii.gz"), &image_path.display().to_string())?;
    Ok(Subject {
        image,
        labels,
        classes,
        image_path,
        recipe,
    })
}

/// The MNI152 subject from an installed folder.
pub fn mni152(root: &Path, labels: Mni152Labels) -> Result<Subject> {
    need(root, &MNI152_FILES, "mni152")?;
    let csf = labels == Mni152Labels::TissueCsf;
    let recipe = LabelRecipe::Tissue {
        t1: root.join(MNI152_FILES[0]),
        gm: root.join(MNI152_FILES[1]),
        wm: root.join(MNI152_FILES[2]),
        csf,
    };
    let image_path = root.join(MNI152_FILES[0]);
    let image = nifti::read(&image_path)?;
    let volume = recipe.derive()?;
    let mut classes: Vec<String> = ["background", "grey-matter", "white-matter"].map(String::from).to_vec();
    if csf {
        classes.push("csf".into());
    }
    Ok(Subject {
        image,
        labels: volume,
        classes,
        image_path,
        recipe,
    })
}

/// Contiguous slabs of brain slices along `axis`: (first slice, slice count) each.
pub fn slabs(labels: &Volume, axis: usize, slab: usize) -> Vec<(usize, usize)> {
    let with_brain: Vec<usize> = (0..labels.dims[axis])
        .filter(|&at| labels.plane(axis, at).2.iter().any(|&v| v > 0.0))
        .collect();
    let (Some(&first), Some(&last)) = (with_brain.first(), with_brain.last()) else {
        return Vec::new();
    };
    (first..=last)
        .step_by(slab.max(1))
        .map(|start| (start, slab.min(last + 1 - start)))
        .collect()
}

/// The native source of one slab.
pub fn slab_source(subject: &Subject, axis: usize, range: (usize, usize)) -> NativeSource {
    NativeSource::Slab {
        image: subject.image_path.clone(),
        labels: subject.recipe.clone(),
        axis,
        range,
    }
}

/// Colin27's label groupings (`labels = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Colin27Labels {
    /// AAL regions grouped by lobe.
    #[default]
    Lobes,
    /// Cortex, deep nuclei, cerebellum.
    Coarse,
}

/// MNI152's label sets (`labels = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mni152Labels {
    /// Grey and white matter.
    #[default]
    Tissue,
    /// Grey and white matter, and a CSF class for brain voxels that are neither.
    TissueCsf,
}

/// Slices per case of the one-subject formats when `slab` is not given.
const DEFAULT_SLAB: usize = 8;

/// `format = "colin27"`: Colin27 T1 + AAL, cut into slab cases.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Colin27Format {
    /// Label grouping (default `lobes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Colin27Labels>,
    /// Slices per case (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slab: Option<usize>,
}

/// `format = "mni152"`: MNI152 2009 T1 + tissue maps, cut into slab cases.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mni152Format {
    /// Label set (default `tissue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Mni152Labels>,
    /// Slices per case (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slab: Option<usize>,
}

/// The 8-bit templates' intensity range.
const TEMPLATE_WINDOW: [f32; 2] = [0.0, 255.0];

fn check_slab(dataset: &str, slab: Option<usize>) -> Result<()> {
    if slab == Some(0) {
        bail!("dataset '{dataset}': slab must be at least 1 slice");
    }
    Ok(())
}

impl Reader for Colin27Format {
    fn describe(&self) -> &'static str {
        "Colin27 T1 + AAL (Debian mricron-data; `atso data install colin27`), slab cases"
    }

    fn default_window(&self) -> [f32; 2] {
        TEMPLATE_WINDOW
    }

    fn check(&self, dataset: &str) -> Result<()> {
        check_slab(dataset, self.slab)
    }

    fn read(&self, dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
        let subject = colin27(root, self.labels.unwrap_or_default()).with_context(|| format!("dataset '{dataset}'"))?;
        Ok(slab_cases(dataset, &subject, plan, self.slab.unwrap_or(DEFAULT_SLAB)))
    }
}

impl Reader for Mni152Format {
    fn describe(&self) -> &'static str {
        "MNI152 2009 T1 + grey/white matter (nilearn wheel; `atso data install mni152`), slab cases"
    }

    fn default_window(&self) -> [f32; 2] {
        TEMPLATE_WINDOW
    }

    fn check(&self, dataset: &str) -> Result<()> {
        check_slab(dataset, self.slab)
    }

    fn read(&self, dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
        let subject = mni152(root, self.labels.unwrap_or_default()).with_context(|| format!("dataset '{dataset}'"))?;
        Ok(slab_cases(dataset, &subject, plan, self.slab.unwrap_or(DEFAULT_SLAB)))
    }
}

/// One case per slab of `slab` brain slices along the plan's axis.
fn slab_cases(dataset: &str, subject: &Subject, plan: SlicePlan, slab: usize) -> PreparedDataset {
    let mut volumes = Volumes::new(dataset, subject.classes.clone(), plan);
    for (i, range) in slabs(&subject.labels, plan.axis, slab).into_iter().enumerate() {
        let image = subject.image.crop(plan.axis, range);
        let label = subject.labels.crop(plan.axis, range);
        let id = format!("slab{i:02}_{}-{}", range.0, range.0 + range.1 - 1);
        volumes.add(&id, &image, &label, slab_source(subject, plan.axis, range));
    }
    volumes.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_cover_the_brain_contiguously() {
        let mut labels = Volume::filled([2, 2, 20], [1.0; 3], 0.0);
        for z in 3..17 {
            let i = labels.index(0, 0, z);
            labels.data[i] = 1.0;
        }
        let cut = slabs(&labels, 2, 5);
        assert_eq!(cut, [(3, 5), (8, 5), (13, 4)]);
        let slab = labels.crop(2, cut[2]);
        assert_eq!(slab.dims, [2, 2, 4]);
        assert!(slab.data.iter().filter(|&&v| v == 1.0).count() == 4);
    }

    #[test]
    fn aal_codes_group_into_lobes() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("aal.nii.txt");
        std::fs::write(
            &table,
            "1 Precentral_L 2001\n29 Insula_L 3001\n71 Caudate_L 7001\n91 Cerebelum_Crus1_L 9001\n",
        )
        .unwrap();
        let (groups, classes) = aal_groups(&table, Colin27Labels::Lobes).unwrap();
        assert_eq!(classes.len(), 9);
        assert_eq!([groups[1], groups[29], groups[71], groups[91]], [1, 2, 6, 8]);
        let (coarse, classes) = aal_groups(&table, Colin27Labels::Coarse).unwrap();
        assert_eq!(classes, ["background", "cortex", "deep-nuclei", "cerebellum"]);
        assert_eq!([coarse[1], coarse[71], coarse[91]], [1, 2, 3]);
        std::fs::write(&table, "garbage line\n").unwrap();
        let message = format!("{:#}", aal_groups(&table, Colin27Labels::Lobes).unwrap_err());
        assert!(message.contains("aal.nii.txt line 1"), "{message}");
    }
}
