//! The Cityscapes label encoding: 8-bit grey `*_gtFine_labelIds.png` files whose label ids
//! (0..33) map to the 19 evaluation classes (trainIds), every other id ignored.
//!
//! A codec, below the loaders: the Cityscapes loader reads training cases with it, and a case's
//! native source reads its label file again through it when the case is scored.

use super::volume::{Volume, IGNORE};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The 19 evaluation classes, in trainId order.
pub const CLASSES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// Cityscapes labelIds of the 19 classes, in trainId order.
pub const LABEL_IDS: [u8; 19] = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33];

/// The trainId of a labelId (255 for ignored ids).
pub fn train_id(label_id: u8) -> u8 {
    LABEL_IDS.iter().position(|&id| id == label_id).map_or(IGNORE, |i| i as u8)
}

/// A labelIds PNG mapped to trainIds, as a one-slice volume (`[w, h, 1]`).
pub fn read_labels(path: &Path) -> Result<Volume> {
    crate::fsio::ensure_regular_file(path)?;
    let decoded = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .decode()
        .with_context(|| format!("{}: not a readable PNG", path.display()))?;
    if decoded.color() != image::ColorType::L8 {
        bail!(
            "{}: expected an 8-bit grey labelIds PNG, got {:?} (color-coded *_gtFine_color.png files are not label maps)",
            path.display(),
            decoded.color()
        );
    }
    let grey = decoded.to_luma8();
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    if let Some(bad) = grey.pixels().map(|p| p.0[0]).find(|&v| v > 33 && v != 255) {
        bail!("{}: label id {bad} is not a Cityscapes labelId (0..33)", path.display());
    }
    Ok(Volume {
        dims: [w, h, 1],
        spacing: [1.0; 3],
        data: grey.pixels().map(|p| train_id(p.0[0]) as f32).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_ids_map_to_train_ids_and_the_rest_is_ignored() {
        assert_eq!(train_id(7), 0);
        assert_eq!(train_id(26), 13);
        assert_eq!(train_id(33), 18);
        for ignored in [0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255] {
            assert_eq!(train_id(ignored), IGNORE, "{ignored}");
        }
    }
}
