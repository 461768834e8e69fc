//! `atso data inspect <path>`: what a file or dataset folder holds, before anything trains:
//! shape, spacing, intensity range and, for label maps, the classes present and their voxel
//! fractions. Files: NIfTI, DICOM (a file or a series folder), PNG. Folders: every known layout
//! (MSD, NIH Pancreas-CT, Cityscapes, the installed brain templates) is recognised and
//! fingerprinted through its loader.

use super::dataset::{DatasetSpec, Format};
use super::volume::Volume;
use super::{cityscapes, dicom, nifti};
use anyhow::{bail, Context, Result};
use std::fmt::Write;
use std::path::Path;

/// A human-readable description of `path`.
pub fn inspect(path: &Path) -> Result<String> {
    if path.is_dir() {
        return folder(path);
    }
    crate::fsio::ensure_regular_file(path)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        let (volume, header) = nifti::read_with_header(path)?;
        let mut out = format!("{}: NIfTI-1, {}\n", path.display(), header.datatype_name());
        let (q, s) = header.transform_codes();
        let _ = writeln!(out, "  qform_code {q}, sform_code {s}");
        describe_volume(&mut out, &volume);
        return Ok(out);
    }
    if name.ends_with(".png") {
        let decoded = image::ImageReader::open(path)?
            .decode()
            .with_context(|| format!("{}: not a readable PNG", path.display()))?;
        let mut out = format!(
            "{}: PNG {}x{}, {:?}\n",
            path.display(),
            decoded.width(),
            decoded.height(),
            decoded.color()
        );
        if decoded.color() == image::ColorType::L8 {
            let volume = Volume {
                dims: [decoded.width() as usize, decoded.height() as usize, 1],
                spacing: [1.0; 3],
                data: decoded.to_luma8().pixels().map(|p| p.0[0] as f32).collect(),
            };
            describe_volume(&mut out, &volume);
            if name.ends_with("_labelids.png") {
                let mapped = cityscapes::read_labels(path)?;
                let _ = writeln!(out, "  as Cityscapes trainIds (255 = ignored):");
                describe_classes(&mut out, &mapped, &cityscapes::CLASSES);
            }
        }
        return Ok(out);
    }
    if name.ends_with(".dcm") {
        let parent = path.parent().unwrap_or(Path::new("."));
        let mut out = format!("{}: DICOM; its series folder:\n", path.display());
        let volume = dicom::read_series(parent)?;
        describe_volume(&mut out, &volume);
        return Ok(out);
    }
    bail!(
        "{}: not a NIfTI (.nii, .nii.gz), DICOM (.dcm) or PNG file, nor a dataset folder",
        path.display()
    )
}

fn describe_volume(out: &mut String, volume: &Volume) {
    let (min, max) = volume
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let mean = volume.data.iter().map(|&v| v as f64).sum::<f64>() / volume.data.len().max(1) as f64;
    let _ = writeln!(out, "  shape {:?} (x, y, z), spacing {:?} mm", volume.dims, volume.spacing);
    let _ = writeln!(out, "  intensity range [{min}, {max}], mean {mean:.3}");
    let integral = volume.data.iter().all(|v| v.fract() == 0.0 && *v >= 0.0 && *v <= 255.0);
    if integral {
        let mut counts = [0u64; 256];
        for &v in &volume.data {
            counts[v as usize] += 1;
        }
        let present = counts.iter().filter(|&&c| c > 0).count();
        let total = volume.data.len() as f64;
        let mut listed: Vec<(usize, u64)> = counts.iter().copied().enumerate().filter(|(_, c)| *c > 0).collect();
        if present <= 40 {
            let _ = writeln!(out, "  {present} distinct values (a label map?):");
        } else {
            // An atlas (AAL has 117 regions): the largest ones, not a page of numbers.
            listed.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            listed.truncate(12);
            let _ = writeln!(out, "  {present} distinct values (an atlas?); the 12 largest:");
        }
        for (value, count) in listed {
            let _ = writeln!(out, "    {value:>3}: {:.4} %", 100.0 * count as f64 / total);
        }
    }
}

fn describe_classes(out: &mut String, labels: &Volume, names: &[&str]) {
    let total = labels.data.len() as f64;
    let mut counts = vec![0u64; 256];
    for &v in &labels.data {
        counts[v as usize] += 1;
    }
    for (value, &count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let name = names.get(value).copied().unwrap_or("ignored");
        let _ = writeln!(out, "    {name:>14}: {:.4} %", 100.0 * count as f64 / total);
    }
}

/// The format a folder looks like.
pub fn detect(path: &Path) -> Option<Format> {
    if path.join("dataset.json").is_file() {
        Some(Format::Msd(Default::default()))
    } else if path.join("leftImg8bit").is_dir() {
        Some(Format::Cityscapes(Default::default()))
    } else if path.join("aal.nii.gz").is_file() {
        Some(Format::Colin27(Default::default()))
    } else if path.join(super::brain::MNI152_FILES[0]).is_file() {
        Some(Format::Mni152(Default::default()))
    } else if std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("PANCREAS_"))
    {
        Some(Format::NihPancreas(Default::default()))
    } else {
        None
    }
}

fn folder(path: &Path) -> Result<String> {
    let is_series = std::fs::read_dir(path)?
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x.eq_ignore_ascii_case("dcm")));
    if is_series && detect(path).is_none() {
        let mut out = format!("{}: DICOM series\n", path.display());
        describe_volume(&mut out, &dicom::read_series(path)?);
        return Ok(out);
    }
    let Some(format) = detect(path) else {
        bail!(
            "{}: not a known dataset layout (MSD dataset.json, Cityscapes leftImg8bit/, NIH PANCREAS_xxxx, the installed colin27 or mni152 templates) nor a DICOM series",
            path.display()
        );
    };
    let spec = DatasetSpec {
        name: "inspected".into(),
        format: format.clone(),
        path: path.to_path_buf(),
        ..DatasetSpec::default()
    };
    let prepared = spec.prepare(32, Path::new("."))?;
    let f = &prepared.fingerprint;
    let mut out = format!("{}: {} ({})\n", path.display(), format.name(), format.describe());
    let _ = writeln!(
        out,
        "  {} cases, {} slices; in-plane x slices from {:?} to {:?}",
        f.cases, f.slices, f.min_dims, f.max_dims
    );
    let _ = writeln!(
        out,
        "  median spacing {:?} mm; foreground intensity {:.1} ± {:.1}",
        f.median_spacing, f.foreground_mean, f.foreground_std
    );
    let _ = writeln!(out, "  classes (voxel fractions):");
    for (name, fraction) in prepared.classes.iter().zip(&f.class_fractions) {
        let _ = writeln!(out, "    {name:>14}: {:.4} %", 100.0 * fraction);
    }
    if f.ignored_fraction > 0.0 {
        let _ = writeln!(out, "    {:>14}: {:.4} %", "ignored", 100.0 * f.ignored_fraction);
    }
    if let Some(test) = &prepared.fixed_test {
        let _ = writeln!(out, "  test cases fixed by the data: {}", test.len());
    }
    Ok(out)
}
