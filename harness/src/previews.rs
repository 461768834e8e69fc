//! Previews: one slice of every test case as the network saw it, its truth and each run's
//! prediction, kept as small PNG files so `atso report` can draw the figure every
//! semi-supervised segmentation paper has (a few cases, the truth and each method side by side)
//! without the data or the models.
//!
//! A case's preview slice is the one whose truth has the most pixels of scored classes (the
//! class's largest cross-section, where a method's mistakes show best); ties go to the lower
//! index. Everything is at the training resolution: the image (min-max scaled to 0..255 per
//! slice), the true labels and the predicted labels, as 8-bit PNG whose values are class indices
//! (255: ignored). Files, each written whole or not at all:
//! - `previews/data/<dataset>/<case>.image.png` and `<case>.truth.png` (the same for every run
//!   of a results folder; written once);
//! - `previews/<run_id>/<case>.png`, the run's prediction.

use crate::data::Case;
use crate::data::IGNORE;
use crate::fsio;
use anyhow::{Context, Result};
use std::path::Path;

/// One case's preview slice: its index, size and the predicted labels on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub case_id: String,
    pub slice: usize,
    pub size: usize,
    pub predicted: Vec<u8>,
}

/// The slice of `case` whose truth has the most pixels of classes `>= first_class` (not
/// ignored); the first such slice on ties, slice 0 for a case without foreground.
pub fn preview_slice(case: &Case, first_class: u8) -> usize {
    let mut best = (0, 0usize);
    for (index, slice) in case.slices.iter().enumerate() {
        let count = slice.label.iter().filter(|&&l| l >= first_class && l != IGNORE).count();
        if count > best.1 {
            best = (index, count);
        }
    }
    best.0
}

pub use atso_schema::records::{previews_of_dataset as data_dir, previews_of_run as run_dir};

fn png(values: &[u8], size: usize) -> Result<Vec<u8>> {
    let image = image::GrayImage::from_raw(size as u32, size as u32, values.to_vec()).context("preview size")?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).context("encoding a preview")?;
    Ok(bytes.into_inner())
}

/// The image of a slice scaled to 0..255 by its own minimum and maximum.
fn grey(values: &[f32]) -> Vec<u8> {
    let (low, high) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if high > low { high - low } else { 1.0 };
    values
        .iter()
        .map(|&v| ((v - low) / span * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// Writes the previews of one run: its predictions, and the dataset's images and truths where
/// they are not written yet.
pub fn write(results: &Path, dataset: &str, run_id: &str, cases: &[&Case], previews: &[Preview]) -> Result<()> {
    let shared = data_dir(results, dataset);
    let own = run_dir(results, run_id);
    for preview in previews {
        let Some(case) = cases.iter().find(|c| c.id == preview.case_id) else {
            continue;
        };
        let slice = &case.slices[preview.slice];
        let image_path = shared.join(format!("{}.image.png", case.id));
        if !image_path.is_file() {
            fsio::write_atomic(&image_path, &png(&grey(&slice.image), preview.size)?)?;
            fsio::write_atomic(&shared.join(format!("{}.truth.png", case.id)), &png(&slice.label, preview.size)?)?;
        }
        fsio::write_atomic(&own.join(format!("{}.png", case.id)), &png(&preview.predicted, preview.size)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::slices::Slice;

    #[test]
    fn the_preview_slice_has_the_most_foreground() {
        let slice = |label: Vec<u8>| Slice {
            image: vec![0.0; label.len()],
            label,
        };
        let case = Case {
            id: "c".into(),
            slices: vec![
                slice(vec![0, 0, 0, 1]),
                slice(vec![0, 2, 1, IGNORE]),
                slice(vec![1, 1, 0, 0]),
                slice(vec![IGNORE, IGNORE, IGNORE, 3]),
            ],
            native: None,
        };
        assert_eq!(preview_slice(&case, 1), 1, "two pixels, the first such slice");
        assert_eq!(preview_slice(&case, 0), 0, "every class scored: all four pixels of slice 0");
        let empty = Case {
            id: "e".into(),
            slices: vec![slice(vec![0; 4]), slice(vec![0; 4])],
            native: None,
        };
        assert_eq!(preview_slice(&empty, 1), 0);
    }

    #[test]
    fn previews_are_png_files_holding_the_class_indices() {
        let dir = tempfile::tempdir().unwrap();
        let case = Case {
            id: "c1".into(),
            slices: vec![Slice {
                image: vec![0.0, 0.5, 1.0, 2.0],
                label: vec![0, 1, 2, IGNORE],
            }],
            native: None,
        };
        let preview = Preview {
            case_id: "c1".into(),
            slice: 0,
            size: 2,
            predicted: vec![0, 1, 1, 2],
        };
        write(dir.path(), "d", "run", &[&case], &[preview]).unwrap();
        let read = |p: std::path::PathBuf| image::open(p).unwrap().into_luma8().into_raw();
        assert_eq!(read(run_dir(dir.path(), "run").join("c1.png")), [0, 1, 1, 2]);
        assert_eq!(read(data_dir(dir.path(), "d").join("c1.truth.png")), [0, 1, 2, 255]);
        assert_eq!(read(data_dir(dir.path(), "d").join("c1.image.png")), [0, 64, 128, 255]);
    }
}
