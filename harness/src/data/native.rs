//! Where a case's original files are, so evaluation can score on the native grid and write
//! predictions aligned with the image.
//!
//! Training data is resized and kept in memory; the native label volume is read again from disk
//! only when a test case is scored, so memory holds one native volume at a time even for
//! full-size CT.

use super::nifti;
use super::volume::Volume;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The files a case came from and the axis it was sliced along.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeSource {
    /// The image file (its header gives the geometry predictions are written with).
    pub image: PathBuf,
    /// The label file (the ground truth on the native grid).
    pub label: PathBuf,
    pub axis: usize,
}

impl NativeSource {
    /// The ground-truth label volume on its native grid.
    pub fn labels(&self) -> Result<Volume> {
        nifti::read(&self.label).with_context(|| format!("reading {}", self.label.display()))
    }

    /// Writes `predicted` (a label volume on the native grid) to `path` as NIfTI with the
    /// image's geometry.
    pub fn write_prediction(&self, path: &Path, predicted: &Volume) -> Result<()> {
        let (_, header) = nifti::read_with_header(&self.image)?;
        nifti::write_labels_like(path, &header, predicted)?;
        Ok(())
    }
}
