//! Where a case's original files are, so evaluation can score on the native grid and write
//! predictions that outside tools read as aligned with the image.
//!
//! Training data is resized and kept in memory; the native label volume is read again from disk
//! only when a test case is scored, so memory holds one native volume at a time even for
//! full-size CT.

use super::volume::Volume;
use super::{labelids, nifti};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// How labels are derived from files that are not a label map on the image grid as such.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelRecipe {
    /// A parcellation whose values are mapped to classes (`groups[value]`).
    Grouped { file: PathBuf, groups: Vec<u8> },
    /// Tissue classes from grey- and white-matter probability maps (and the T1 for CSF).
    Tissue { t1: PathBuf, gm: PathBuf, wm: PathBuf, csf: bool },
}

impl LabelRecipe {
    /// The label volume the recipe derives from its files.
    pub fn derive(&self) -> Result<Volume> {
        match self {
            LabelRecipe::Grouped { file, groups } => {
                let mut volume = nifti::read(file)?;
                for v in volume.data.iter_mut() {
                    let index = v.round().clamp(0.0, 255.0) as usize;
                    *v = groups[index] as f32;
                }
                Ok(volume)
            }
            LabelRecipe::Tissue { t1, gm, wm, csf } => {
                let (t1, gm, wm) = (nifti::read(t1)?, nifti::read(gm)?, nifti::read(wm)?);
                if gm.dims != wm.dims || t1.dims != gm.dims {
                    bail!("MNI152: the T1, grey- and white-matter maps are on different grids");
                }
                let data = t1
                    .data
                    .iter()
                    .zip(gm.data.iter().zip(&wm.data))
                    .map(|(&t, (&g, &w))| {
                        let other = 255.0 - g - w;
                        let class = if g > other && g >= w {
                            1.0
                        } else if w > other && w > g {
                            2.0
                        } else {
                            0.0
                        };
                        if class == 0.0 && *csf && t > 0.0 {
                            3.0
                        } else {
                            class
                        }
                    })
                    .collect();
                Ok(Volume {
                    dims: t1.dims,
                    spacing: t1.spacing,
                    data,
                })
            }
        }
    }
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
            Self::Slab { labels, axis, range, .. } => Ok(labels.derive()?.crop(*axis, *range)),
            Self::Cityscapes { label } => labelids::read_labels(label),
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
