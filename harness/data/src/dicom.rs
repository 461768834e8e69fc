//! DICOM series as volumes, read with dicom-rs.
//!
//! A series is the set of single-frame files sharing a SeriesInstanceUID in one folder (files
//! arrive in any order). Slices are ordered by their ImagePositionPatient projected on the slice
//! normal (from ImageOrientationPatient), in the direction in which InstanceNumber increases, so
//! slice z is the one with the z-th smallest InstanceNumber (the convention of the NIH
//! Pancreas-CT label files: z = InstanceNumber - 1); without positions, by InstanceNumber alone.
//! Intensities are modality values (HU for CT: pixel x RescaleSlope + RescaleIntercept). A gap
//! in the positions (a missing slice), two slices at one position or one InstanceNumber, or
//! slices of different sizes are errors that name the series.

use super::volume::Volume;
use anyhow::{bail, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject};
use dicom_pixeldata::PixelDecoder;
use std::path::{Path, PathBuf};

/// One slice's header facts.
struct SliceInfo {
    path: PathBuf,
    series: String,
    instance: Option<i64>,
    position: Option<[f64; 3]>,
    orientation: Option<[f64; 6]>,
    rows: u32,
    columns: u32,
    spacing: [f64; 2],
    thickness: Option<f64>,
}

fn floats(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    object.element(tag).ok()?.to_multi_float64().ok()
}

fn read_info(path: &Path) -> Result<(SliceInfo, DefaultDicomObject)> {
    crate::fsio::ensure_regular_file(path)?;
    let object = open_file(path).with_context(|| format!("{}: not a readable DICOM file", path.display()))?;
    let text = |tag| object.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
    let int = |tag| object.element(tag).ok().and_then(|e| e.to_int::<i64>().ok());
    let rows = int(tags::ROWS).with_context(|| format!("{}: no Rows", path.display()))? as u32;
    let columns = int(tags::COLUMNS).with_context(|| format!("{}: no Columns", path.display()))? as u32;
    let spacing = floats(&object, tags::PIXEL_SPACING).unwrap_or_else(|| vec![1.0, 1.0]);
    let info = SliceInfo {
        path: path.to_path_buf(),
        series: text(tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        instance: int(tags::INSTANCE_NUMBER),
        position: floats(&object, tags::IMAGE_POSITION_PATIENT).and_then(|v| v.try_into().ok()),
        orientation: floats(&object, tags::IMAGE_ORIENTATION_PATIENT).and_then(|v| v.try_into().ok()),
        rows,
        columns,
        spacing: [spacing.first().copied().unwrap_or(1.0), spacing.get(1).copied().unwrap_or(1.0)],
        thickness: floats(&object, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()),
    };
    Ok((info, object))
}

/// Reads the series in `dir` (its `.dcm` files, or every file when none ends in `.dcm`) as a
/// volume `[columns, rows, slices]` (x = column, y = row), with the slice spacing measured from
/// the positions.
pub fn read_series(dir: &Path) -> Result<Volume> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !crate::fsio::is_hidden(p))
        .collect();
    if files.iter().any(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm"))) {
        files.retain(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm")));
    }
    if files.is_empty() {
        bail!("{}: no DICOM files in the series folder", dir.display());
    }
    let mut slices = Vec::with_capacity(files.len());
    for path in &files {
        slices.push(read_info(path)?);
    }
    let series = slices[0].0.series.clone();
    if let Some((other, _)) = slices.iter().find(|(s, _)| s.series != series) {
        bail!(
            "{}: holds more than one series ({} and {}); put each series in its own folder",
            dir.display(),
            series,
            other.series
        );
    }
    let (rows, columns) = (slices[0].0.rows, slices[0].0.columns);
    if let Some((odd, _)) = slices.iter().find(|(s, _)| (s.rows, s.columns) != (rows, columns)) {
        bail!(
            "series {} in {}: {} is {}x{}, the others {rows}x{columns}",
            series,
            dir.display(),
            odd.path.display(),
            odd.rows,
            odd.columns
        );
    }
    order(&mut slices, dir, &series)?;
    let gaps = check_spacing(&slices, dir, &series)?;
    let (nx, ny, nz) = (columns as usize, rows as usize, slices.len());
    let mut data = Vec::with_capacity(nx * ny * nz);
    for (info, object) in &slices {
        let decoded = object
            .decode_pixel_data()
            .with_context(|| format!("{}: cannot decode the pixel data", info.path.display()))?;
        let values: Vec<f32> = decoded
            .to_vec::<f32>()
            .with_context(|| format!("{}: cannot convert the pixel data", info.path.display()))?;
        if values.len() != nx * ny {
            bail!(
                "{}: {} pixel values for a {rows}x{columns} slice",
                info.path.display(),
                values.len()
            );
        }
        // DICOM stores row by row (x fastest), as the volume does.
        data.extend(values);
    }
    let first = &slices[0].0;
    let dz = gaps.or(first.thickness).unwrap_or(1.0);
    Ok(Volume {
        dims: [nx, ny, nz],
        spacing: [first.spacing[1] as f32, first.spacing[0] as f32, dz as f32],
        data,
    })
}

/// Orders slices along the normal, following InstanceNumber's direction.
fn order(slices: &mut [(SliceInfo, DefaultDicomObject)], dir: &Path, series: &str) -> Result<()> {
    let mut numbers: Vec<i64> = slices.iter().filter_map(|(s, _)| s.instance).collect();
    numbers.sort_unstable();
    if let Some(w) = numbers.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "series {series} in {}: InstanceNumber {} appears twice (a duplicated slice)",
            dir.display(),
            w[0]
        );
    }
    let normal = slices[0].0.orientation.map(|o| {
        let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    });
    let along = |s: &SliceInfo| -> Option<f64> {
        let (n, p) = (normal?, s.position?);
        Some(n[0] * p[0] + n[1] * p[1] + n[2] * p[2])
    };
    if slices.iter().all(|(s, _)| along(s).is_some()) {
        slices.sort_by(|a, b| along(&a.0).unwrap().total_cmp(&along(&b.0).unwrap()));
        // Follow InstanceNumber's direction where it is given.
        let first = slices.first().and_then(|(s, _)| s.instance);
        let last = slices.last().and_then(|(s, _)| s.instance);
        if let (Some(a), Some(b)) = (first, last) {
            if a > b {
                slices.reverse();
            }
        }
    } else if slices.iter().all(|(s, _)| s.instance.is_some()) {
        slices.sort_by_key(|(s, _)| s.instance);
    } else {
        bail!(
            "series {series} in {}: slices have neither ImagePositionPatient with ImageOrientationPatient nor InstanceNumber; their order is unknown",
            dir.display()
        );
    }
    Ok(())
}

/// The slice spacing from the positions; errors on gaps and duplicates.
fn check_spacing(slices: &[(SliceInfo, DefaultDicomObject)], dir: &Path, series: &str) -> Result<Option<f64>> {
    let positions: Vec<[f64; 3]> = slices.iter().filter_map(|(s, _)| s.position).collect();
    if positions.len() != slices.len() || positions.len() < 2 {
        // Without positions, a missing slice shows as a gap in the instance numbers.
        let numbers: Vec<i64> = slices.iter().filter_map(|(s, _)| s.instance).collect();
        if let Some(w) = numbers.windows(2).find(|w| (w[1] - w[0]).abs() != 1) {
            bail!(
                "series {series} in {}: InstanceNumber jumps from {} to {}: a slice is missing",
                dir.display(),
                w[0],
                w[1]
            );
        }
        return Ok(None);
    }
    let steps: Vec<f64> = positions
        .windows(2)
        .map(|w| ((w[1][0] - w[0][0]).powi(2) + (w[1][1] - w[0][1]).powi(2) + (w[1][2] - w[0][2]).powi(2)).sqrt())
        .collect();
    let mut sorted = steps.clone();
    sorted.sort_by(f64::total_cmp);
    // The lower median: with few slices and one gap, the gap must not become the reference.
    let median = sorted[(sorted.len() - 1) / 2];
    for (i, step) in steps.iter().enumerate() {
        let (a, b) = (&slices[i].0, &slices[i + 1].0);
        if *step < 0.5 * median || *step < 1e-6 {
            bail!(
                "series {series} in {}: {} and {} are at the same position: a duplicated slice",
                dir.display(),
                a.path.display(),
                b.path.display()
            );
        }
        if *step > 1.5 * median {
            bail!(
                "series {series} in {}: a slice is missing between {} and {} ({step:.2} mm apart, slices are {median:.2} mm apart)",
                dir.display(),
                a.path.display(),
                b.path.display()
            );
        }
    }
    Ok(Some(median))
}
