//! Where a case's original files are, so evaluation can score on the native grid and write
//! predictions that outside tools read as aligned with the image.
//!
//! Training data is resized and kept in memory; the native label volume is read again from disk
//! only when a test case is scored, so memory holds one native volume at a time even for
//! full-size CT.

use super::volume::Volume;
use super::{brain, cityscapes, nifti};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// How labels are derived from files that are not a label map on the image grid as such.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelRecipe {
    /// A parcellation whose values are mapped to classes (`groups[value]`).
    Grouped { file: PathBuf, groups: Vec<u8> },
    /// Tissue classes from grey- and white-matter probability maps (and the T1 for CSF).
    Tissue { t1: PathBuf, gm: PathBuf, wm: PathBuf, csf: bool },
}

/// The files a case came from.
#[derive(Debug, Clone, PartialEq)]
pub enum NativeSource {
    /// A label file on the image's grid (MSD, the phantom, NIH Pancreas-CT); `axis` is the one
    /// the case was sliced along. Predictions are written with the header of `geometry` (the
    /// image file, or the label file when the image is a DICOM series).
    Nifti { geometry: PathBuf, label: PathBuf, axis: usize },
    /// A slab (`range` = first slice, count along `axis`) of one subject whose labels are
    /// derived by `labels`.
    Slab {
        image: PathBuf,
        labels: LabelRecipe,
        axis: usize,
        range: (usize, usize),
    },
    /// A Cityscapes labelIds PNG (one slice).
    Cityscapes { label: PathBuf },
}

impl NativeSource {
    /// The axis the case was sliced along.
    pub fn axis(&self) -> usize {
        match self {
            Self::Nifti { axis, .. } | Self::Slab { axis, .. } => *axis,
            Self::Cityscapes { .. } => 2,
        }
    }

    /// The ground-truth label volume on its native grid.
    pub fn labels(&self) -> Result<Volume> {
        match self {
            Self::Nifti { label, .. } => nifti::read(label).with_context(|| format!("reading {}", label.display())),
            Self::Slab { labels, axis, range, .. } => Ok(brain::crop(&brain::derive_labels(labels)?, *axis, *range)),
            Self::Cityscapes { label } => cityscapes::read_labels(label),
        }
    }

    /// Writes `predicted` (a label volume on the native grid) to `path`: NIfTI with the image's
    /// geometry (a slab's header cropped to the slab), or a trainId PNG for Cityscapes.
    pub fn write_prediction(&self, path: &Path, predicted: &Volume) -> Result<()> {
        match self {
            Self::Nifti { geometry, .. } => {
                let (_, header) = nifti::read_with_header(geometry)?;
                nifti::write_labels_like(path, &header, predicted)?;
            }
            Self::Slab { image, axis, range, .. } => {
                let (_, header) = nifti::read_with_header(image)?;
                nifti::write_labels_like(path, &header.cropped(*axis, range.0, range.1), predicted)?;
            }
            Self::Cityscapes { .. } => {
                let [w, h, _] = predicted.dims;
                let pixels: Vec<u8> = predicted.data.iter().map(|&v| v.clamp(0.0, 255.0) as u8).collect();
                let image = image::GrayImage::from_raw(w as u32, h as u32, pixels).context("prediction size")?;
                let mut bytes = Vec::new();
                image::DynamicImage::ImageLuma8(image).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
                crate::fsio::write_atomic(&path.with_extension("").with_extension("png"), &bytes)?;
            }
        }
        Ok(())
    }
}
