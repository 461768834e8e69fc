//! Every loader on small trees written here in exactly the published layout (quirks included),
//! read back through the binary where users would: Cityscapes and the synthetic driving scenes,
//! NIH Pancreas-CT as DICOM written with dicom-rs, presets and folds, the transfer setting, the
//! installed brain templates (when present), `atso data`, and one clear error per kind of bad
//! input, with nothing already recorded touched by a failing dataset.

mod common;
use common::{atso, skip_unless_required, stderr};

use atso_harness::data::brain::{Colin27Format, Mni152Format, Mni152Labels};
use atso_harness::data::dataset::{DatasetSpec, Format};
use atso_harness::data::msd::{MsdFormat, MsdPreset};
use atso_harness::data::nifti::{self, Datatype};
use atso_harness::data::nih::{NihFormat, NihPreset};
use atso_harness::data::Volume;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::{Path, PathBuf};
use std::process::Command;

fn error_of(spec: &DatasetSpec) -> String {
    format!("{:#}", spec.prepare(32, Path::new("/")).unwrap_err())
}

// ---------------------------------------------------------------- Cityscapes and driving scenes

fn write_png(path: &Path, image: image::DynamicImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save(path).unwrap();
}

/// A two-city Cityscapes tree with the quirks of real downloads: gtFine also holds color,
/// instanceIds and polygons files, and macOS ._ files lie around.
fn cityscapes_tree(root: &Path) {
    for (split, city, frames) in [("train", "aachen", 3), ("val", "frankfurt", 2)] {
        for f in 0..frames {
            let stem = format!("{city}_{:06}_{:06}", f, 19);
            let rgb = image::RgbImage::from_fn(64, 32, |x, y| image::Rgb([(x * 4) as u8, (y * 8) as u8, 100]));
            write_png(&root.join(format!("leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")), rgb.into());
            let labels = image::GrayImage::from_fn(64, 32, |x, y| {
                image::Luma([if y > 16 {
                    7
                } else if x < 10 {
                    26
                } else {
                    23
                }])
            });
            let gt = root.join(format!("gtFine/{split}/{city}"));
            write_png(&gt.join(format!("{stem}_gtFine_labelIds.png")), labels.into());
            write_png(&gt.join(format!("{stem}_gtFine_color.png")), image::RgbImage::new(64, 32).into());
            write_png(
                &gt.join(format!("{stem}_gtFine_instanceIds.png")),
                image::GrayImage::new(64, 32).into(),
            );
            std::fs::write(gt.join(format!("{stem}_gtFine_polygons.json")), "{}").unwrap();
        }
        std::fs::write(
            root.join(format!("leftImg8bit/{split}/{city}/._{city}_000000_000019_leftImg8bit.png")),
            [0u8; 4],
        )
        .unwrap();
    }
}

fn cityscapes_spec(root: &Path) -> DatasetSpec {
    DatasetSpec {
        name: "cs".into(),
        format: Format::Cityscapes(Default::default()),
        path: root.to_path_buf(),
        ..DatasetSpec::default()
    }
}

#[test]
fn cityscapes_loader_maps_train_ids_and_takes_splits_from_the_folders() {
    let dir = tempfile::tempdir().unwrap();
    cityscapes_tree(dir.path());
    let prepared = cityscapes_spec(dir.path()).prepare(32, Path::new("/")).unwrap();
    assert_eq!(prepared.classes.len(), 19);
    assert_eq!((prepared.in_channels, prepared.first_class, prepared.outside_label), (3, 0, 255));
    assert_eq!(prepared.cases.len(), 5);
    let mut test = prepared.fixed_test.clone().unwrap();
    test.sort();
    assert_eq!(test, ["frankfurt_000000_000019", "frankfurt_000001_000019"]);
    let case = &prepared.cases[0];
    assert_eq!(case.slices[0].image.len(), 3 * 32 * 32, "three channels at the training resolution");
    let labels: std::collections::BTreeSet<u8> = case.slices[0].label.iter().copied().collect();
    // labelIds 7 (road), 26 (car), 23 (sky) -> trainIds 0, 13, 10.
    assert_eq!(labels.into_iter().collect::<Vec<_>>(), [0, 10, 13]);
}

#[test]
fn bad_cityscapes_trees_get_one_clear_error() {
    // No gtFine.
    let dir = tempfile::tempdir().unwrap();
    cityscapes_tree(dir.path());
    std::fs::remove_dir_all(dir.path().join("gtFine")).unwrap();
    let message = error_of(&cityscapes_spec(dir.path()));
    assert!(message.contains("no gtFine folder"), "{message}");
    // A labelIds PNG of the wrong size.
    let dir = tempfile::tempdir().unwrap();
    cityscapes_tree(dir.path());
    let label = dir.path().join("gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png");
    write_png(&label, image::GrayImage::new(32, 32).into());
    let message = error_of(&cityscapes_spec(dir.path()));
    assert!(
        message.contains("aachen_000001_000019_gtFine_labelIds.png") && message.contains("is 32x32 but its image"),
        "{message}"
    );
    // An RGB labelIds PNG.
    write_png(&label, image::RgbImage::new(64, 32).into());
    let message = error_of(&cityscapes_spec(dir.path()));
    assert!(message.contains("expected an 8-bit grey labelIds PNG"), "{message}");
    // A missing label file.
    std::fs::remove_file(&label).unwrap();
    let message = error_of(&cityscapes_spec(dir.path()));
    assert!(
        message.contains("aachen_000001_000019_gtFine_labelIds.png") && message.contains("missing"),
        "{message}"
    );
}

const DRIVING: &str = r#"
name = "driving"
labeled_ratios = [0.25]
seeds = [0]

[budget]
iterations = 12
batch_size = 4
resolution = 32
eval_batch_size = 16

[model]
channels = [4, 8]
dropout = [0.0, 0.1]

[[datasets]]
name = "streets"
format = "driving-phantom"
path = "data/streets"
driving = { train_images = 10, val_images = 3, width = 64, height = 32, seed = 5 }

[[methods]]
kind = "supervised"

[[methods]]
kind = "atso"

[[methods]]
kind = "self-training"

[[methods]]
kind = "mean-teacher"

[[methods]]
kind = "fully-supervised"
"#;

#[test]
fn driving_scenes_run_every_method_through_the_cityscapes_loader_with_miou() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("driving.toml"), DRIVING).unwrap();
    let output = atso(dir.path(), &["sweep", "driving.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    // The generated tree is a Cityscapes tree.
    let tree = dir.path().join("data/streets");
    assert!(tree.join("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").is_file());
    assert!(tree
        .join("gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png")
        .is_file());
    let records = atso_harness::records::load_all(&dir.path().join("results/driving")).unwrap();
    assert_eq!(records.len(), 5);
    for record in &records {
        assert_eq!(record.status, atso_harness::records::Status::Ok, "{:?}", record.error);
        assert!(
            record
                .metrics
                .mean(&atso_harness::metric_registry::MIOU)
                .is_some_and(|m| (0.0..=1.0).contains(&m)),
            "{}: mIoU {:?}",
            record.method,
            record.metrics.mean(&atso_harness::metric_registry::MIOU)
        );
        assert_eq!(record.first_class, 0, "every driving class is scored");
        assert_eq!(record.n_test, 3, "the val folder is the test set");
    }
    let report = atso(dir.path(), &["report", "results/driving"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let markdown = std::fs::read_to_string(dir.path().join("results/driving/report.md")).unwrap();
    assert!(markdown.contains("streets: mIoU (%)"), "{markdown}");
}

// ---------------------------------------------------------------- NIH Pancreas-CT as DICOM

/// Writes one CT slice as a DICOM file (explicit VR little endian), raw values `pixels`,
/// HU = raw * 1 - 1024.
fn write_dicom_slice(path: &Path, series: &str, instance: i32, z: f64, pixels: &[u16], rows: u16, cols: u16) {
    write_dicom_slice_with(path, series, instance, Some(z), "1", pixels, rows, cols)
}

/// As [`write_dicom_slice`], with the position optional (older series have only InstanceNumber)
/// and any RescaleSlope: HU = raw * slope - 1024.
#[allow(clippy::too_many_arguments)]
fn write_dicom_slice_with(path: &Path, series: &str, instance: i32, z: Option<f64>, slope: &str, pixels: &[u16], rows: u16, cols: u16) {
    let sop = format!("1.2.826.0.1.3680043.2.1125.{series}.{instance}");
    let mut object = InMemDicomObject::new_empty();
    let mut put = |tag, vr, value: PrimitiveValue| {
        object.put(DataElement::new(tag, vr, value));
    };
    put(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE.into());
    put(tags::SOP_INSTANCE_UID, VR::UI, sop.clone().into());
    put(tags::MODALITY, VR::CS, "CT".into());
    put(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        format!("1.2.826.0.1.3680043.2.1125.{series}").into(),
    );
    put(tags::INSTANCE_NUMBER, VR::IS, instance.to_string().into());
    if let Some(z) = z {
        put(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(["-100".to_string(), "-100".to_string(), format!("{z}")].as_slice().into()),
        );
    }
    put(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        PrimitiveValue::Strs(["1", "0", "0", "0", "1", "0"].map(String::from).as_slice().into()),
    );
    put(
        tags::PIXEL_SPACING,
        VR::DS,
        PrimitiveValue::Strs(["0.7".to_string(), "0.8".to_string()].into()),
    );
    put(tags::SLICE_THICKNESS, VR::DS, "2.5".into());
    put(tags::ROWS, VR::US, PrimitiveValue::from(rows));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(cols));
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2".into());
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
    put(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16));
    put(tags::RESCALE_INTERCEPT, VR::DS, "-1024".into());
    put(tags::RESCALE_SLOPE, VR::DS, slope.into());
    put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.iter().copied().collect()));
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop)
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN),
        )
        .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    file.write_to_file(path).unwrap();
}

/// Raw value of voxel (x, y, z) of the synthetic patient `case`.
fn raw(case: u32, x: usize, y: usize, z: usize) -> u16 {
    (1000 + case as usize * 7 + x * 3 + y * 5 + z * 11) as u16
}

/// `patients` NIH-style patients of 6 (cols) x 5 (rows) x 4 slices, files in scrambled order,
/// with label files in their own folder; returns the root.
fn nih_tree(root: &Path, patients: u32) -> PathBuf {
    let (cols, rows, slices) = (6usize, 5usize, 4usize);
    for case in 1..=patients {
        let series = root.join(format!(
            "Pancreas-CT/PANCREAS_{case:04}/11-24-2015-PANCREAS{case:04}-Pancreas-{case}/Pancreas-{case}"
        ));
        for z in [2usize, 0, 3, 1] {
            let pixels: Vec<u16> = (0..rows).flat_map(|y| (0..cols).map(move |x| raw(case, x, y, z))).collect();
            // Files are named in an order unrelated to the slice order, as downloads are.
            write_dicom_slice(
                &series.join(format!("1-{:03}.dcm", 9 - z)),
                &case.to_string(),
                z as i32 + 1,
                -50.0 + 2.5 * z as f64,
                &pixels,
                rows as u16,
                cols as u16,
            );
        }
        let mut label = Volume::filled([cols, rows, slices], [0.8, 0.7, 2.5], 0.0);
        for z in 1..3 {
            let i = label.index(2, 3, z);
            label.data[i] = 1.0;
        }
        nifti::write(
            &root.join(format!("TCIA_pancreas_labels-02-05-2017/label{case:04}.nii.gz")),
            &label,
            Datatype::U8,
            352,
        )
        .unwrap();
    }
    root.to_path_buf()
}

fn nih_spec(root: &Path) -> DatasetSpec {
    DatasetSpec {
        name: "nih".into(),
        format: Format::NihPancreas(NihFormat {
            preset: Some(NihPreset::NihPancreas),
        }),
        path: root.to_path_buf(),
        ..DatasetSpec::default()
    }
}

#[test]
fn nih_dicom_series_read_in_slice_order_with_hounsfield_units() {
    let dir = tempfile::tempdir().unwrap();
    nih_tree(dir.path(), 1);
    let series = dir
        .path()
        .join("Pancreas-CT/PANCREAS_0001/11-24-2015-PANCREAS0001-Pancreas-1/Pancreas-1");
    let volume = atso_harness::data::dicom::read_series(&series).unwrap();
    assert_eq!(volume.dims, [6, 5, 4], "x = columns, y = rows, z = slices");
    assert!((volume.spacing[2] - 2.5).abs() < 1e-6);
    for z in 0..4 {
        for y in 0..5 {
            for x in 0..6 {
                assert_eq!(volume.get(x, y, z), raw(1, x, y, z) as f32 - 1024.0, "voxel ({x}, {y}, {z}) in HU");
            }
        }
    }
    let prepared = nih_spec(dir.path()).prepare(8, Path::new("/")).unwrap();
    assert_eq!(prepared.classes, ["background", "pancreas"]);
    assert_eq!(prepared.cases[0].id, "PANCREAS_0001");
    assert_eq!(prepared.cases[0].slices.len(), 4);
}

#[test]
fn the_converted_nih_layout_prepares_as_the_dicom_tree_does_with_the_pancreas_window() {
    // The DICOM tree, and the same case converted the common way: PANCREAS_0001.nii.gz (HU) with
    // label0001.nii.gz beside it.
    let dicom = tempfile::tempdir().unwrap();
    nih_tree(dicom.path(), 1);
    let converted = tempfile::tempdir().unwrap();
    let volume = atso_harness::data::dicom::read_series(
        &dicom
            .path()
            .join("Pancreas-CT/PANCREAS_0001/11-24-2015-PANCREAS0001-Pancreas-1/Pancreas-1"),
    )
    .unwrap();
    nifti::write(&converted.path().join("PANCREAS_0001.nii.gz"), &volume, Datatype::I16, 352).unwrap();
    std::fs::copy(
        dicom.path().join("TCIA_pancreas_labels-02-05-2017/label0001.nii.gz"),
        converted.path().join("label0001.nii.gz"),
    )
    .unwrap();
    let spec = nih_spec(converted.path());
    assert_eq!(spec.window(), [-100.0, 240.0], "the NIH preset's HU window (RSTN's)");
    let from_nifti = spec.prepare(8, Path::new("/")).unwrap();
    let from_dicom = nih_spec(dicom.path()).prepare(8, Path::new("/")).unwrap();
    assert_eq!(from_nifti.cases[0].id, "PANCREAS_0001");
    assert_eq!(from_nifti.cases[0].slices, from_dicom.cases[0].slices, "the same slices either way");
    // HU 0 .. 100 in this phantom: inside the window, so intensities are (HU + 100) / 340.
    let all: Vec<f32> = from_nifti.cases[0].slices.iter().flat_map(|s| s.image.iter().copied()).collect();
    let (lo, hi) = all.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let hu = |x, y, z| raw(1, x, y, z) as f32 - 1024.0;
    let (hu_lo, hu_hi) = (hu(0, 0, 0), hu(5, 4, 3));
    assert!(
        (lo - (hu_lo + 100.0) / 340.0).abs() < 0.02 && (hi - (hu_hi + 100.0) / 340.0).abs() < 0.02,
        "{lo} {hi}"
    );
    let msd = DatasetSpec {
        format: Format::Msd(MsdFormat {
            preset: Some(MsdPreset::MsdPancreas),
        }),
        ..DatasetSpec::default()
    };
    assert_eq!(msd.window(), [-100.0, 240.0], "MSD Task07_Pancreas uses the same window");
}

#[test]
fn a_dicom_series_without_positions_is_ordered_by_instance_number_with_its_rescale_slope() {
    // Files named against their order; no ImagePositionPatient; RescaleSlope 2.
    let dir = tempfile::tempdir().unwrap();
    let (rows, cols) = (3u16, 4u16);
    for (file, instance) in [("c.dcm", 1), ("a.dcm", 3), ("b.dcm", 2)] {
        let pixels: Vec<u16> = (0..rows * cols).map(|i| 100 * instance as u16 + i).collect();
        write_dicom_slice_with(&dir.path().join(file), "77", instance, None, "2", &pixels, rows, cols);
    }
    let volume = atso_harness::data::dicom::read_series(dir.path()).unwrap();
    assert_eq!(volume.dims, [4, 3, 3], "x = columns, y = rows, z = slices");
    for z in 0..3 {
        for y in 0..3 {
            for x in 0..4 {
                let raw = 100.0 * (z as f32 + 1.0) + (y * 4 + x) as f32;
                assert_eq!(
                    volume.get(x, y, z),
                    2.0 * raw - 1024.0,
                    "voxel ({x}, {y}, {z}): slice z is InstanceNumber z + 1"
                );
            }
        }
    }
    // PixelSpacing is (between rows, between columns) = (y, x); the slice thickness gives z.
    assert_eq!(volume.spacing, [0.8, 0.7, 2.5]);
}

#[test]
fn a_dicom_series_with_a_missing_or_duplicated_slice_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    nih_tree(dir.path(), 1);
    let series = dir
        .path()
        .join("Pancreas-CT/PANCREAS_0001/11-24-2015-PANCREAS0001-Pancreas-1/Pancreas-1");
    // Slice z = 1 (InstanceNumber 2) was written as 1-008.dcm.
    let removed = series.join("1-008.dcm");
    let kept = std::fs::read(&removed).unwrap();
    std::fs::remove_file(&removed).unwrap();
    let message = format!("{:#}", atso_harness::data::dicom::read_series(&series).unwrap_err());
    assert!(
        message.contains("a slice is missing") && message.contains("Pancreas-1"),
        "{message}"
    );
    std::fs::write(&removed, &kept).unwrap();
    std::fs::write(series.join("copy.dcm"), &kept).unwrap();
    let message = format!("{:#}", atso_harness::data::dicom::read_series(&series).unwrap_err());
    assert!(message.contains("appears twice") || message.contains("same position"), "{message}");
}

#[test]
fn the_rstn_folds_fix_the_test_cases() {
    let dir = tempfile::tempdir().unwrap();
    nih_tree(dir.path(), 24);
    let prepared = nih_spec(dir.path()).prepare(8, Path::new("/")).unwrap();
    let folds = prepared.folds.as_ref().unwrap();
    assert_eq!(folds[0].len(), 20);
    assert_eq!(folds[1], ["PANCREAS_0021", "PANCREAS_0022", "PANCREAS_0023", "PANCREAS_0024"]);
    let splits = atso_harness::data::splits::SplitSpec {
        test_fold: Some(2),
        ..Default::default()
    };
    let ids: Vec<String> = prepared.cases.iter().map(|c| c.id.clone()).collect();
    let split = splits.split("nih", &ids, Some(&folds[1]), 0.5, 0).unwrap();
    assert_eq!(split.test, folds[1]);
    assert!(split
        .labeled
        .iter()
        .chain(&split.unlabeled)
        .chain(&split.validation)
        .all(|id| !folds[1].contains(id)));
}

#[test]
fn presets_check_the_classes_they_expect() {
    let dir = tempfile::tempdir().unwrap();
    atso_harness::data::phantom::write_msd(
        dir.path(),
        &atso_harness::data::phantom::PhantomSpec {
            cases: 4,
            size: 16,
            slices: 3,
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let spec = DatasetSpec {
        name: "liver".into(),
        format: Format::Msd(MsdFormat {
            preset: Some(MsdPreset::MsdLiver),
        }),
        path: dir.path().to_path_buf(),
        ..DatasetSpec::default()
    };
    assert_eq!(spec.window(), [-200.0, 250.0]);
    let message = error_of(&spec);
    assert!(
        message.contains("preset expects classes") && message.contains("cancer"),
        "{message}"
    );
}

// ---------------------------------------------------------------- bad NIfTI and MSD input

fn msd_task(root: &Path) {
    atso_harness::data::phantom::write_msd(
        root,
        &atso_harness::data::phantom::PhantomSpec {
            cases: 4,
            size: 16,
            slices: 3,
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
}

fn msd_spec(root: &Path) -> DatasetSpec {
    DatasetSpec {
        name: "task".into(),
        format: Format::Msd(MsdFormat::default()),
        path: root.to_path_buf(),
        ..DatasetSpec::default()
    }
}

#[test]
fn bad_volumes_and_tasks_get_one_clear_error_naming_the_file() {
    use std::io::{Read, Write};
    let image = |root: &Path| root.join("imagesTr/phantom_1.nii.gz");
    let raw_header = |path: &Path| {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    };
    let write_raw = |path: &Path, bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap();
    };
    type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Damage, Vec<&str>)> = vec![
        (
            "truncated .nii.gz",
            Box::new(|root: &Path| {
                let bytes = std::fs::read(image(root)).unwrap();
                std::fs::write(image(root), &bytes[..bytes.len() / 2]).unwrap();
            }),
            vec!["phantom_1.nii.gz"],
        ),
        (
            "wrong magic",
            Box::new(|root: &Path| {
                let mut bytes = raw_header(&image(root));
                bytes[344..348].copy_from_slice(b"xyz\0");
                write_raw(&image(root), &bytes);
            }),
            vec!["phantom_1.nii.gz", "magic"],
        ),
        (
            "unsupported datatype",
            Box::new(|root: &Path| {
                let mut bytes = raw_header(&image(root));
                bytes[70..72].copy_from_slice(&1536i16.to_le_bytes()); // float128
                write_raw(&image(root), &bytes);
            }),
            vec!["phantom_1.nii.gz", "unsupported datatype code 1536"],
        ),
        (
            "shape mismatch",
            Box::new(|root: &Path| {
                nifti::write(
                    &root.join("labelsTr/phantom_1.nii.gz"),
                    &Volume::filled([8, 8, 3], [1.0; 3], 0.0),
                    Datatype::U8,
                    352,
                )
                .unwrap();
            }),
            vec!["labelsTr/phantom_1.nii.gz", "differs from image shape"],
        ),
        (
            "label values outside the classes",
            Box::new(|root: &Path| {
                nifti::write(
                    &root.join("labelsTr/phantom_1.nii.gz"),
                    &Volume::filled([16, 16, 3], [1.0; 3], 7.0),
                    Datatype::U8,
                    352,
                )
                .unwrap();
            }),
            vec!["labelsTr/phantom_1.nii.gz", "label value 7", "4 classes"],
        ),
        (
            "missing label file",
            Box::new(|root: &Path| std::fs::remove_file(root.join("labelsTr/phantom_1.nii.gz")).unwrap()),
            vec!["dataset.json", "labelsTr/phantom_1.nii.gz", "does not exist"],
        ),
        (
            "NaN voxels",
            Box::new(|root: &Path| {
                let mut volume = Volume::filled([16, 16, 3], [1.0; 3], 1.0);
                volume.data[5] = f32::NAN;
                nifti::write(&image(root), &volume, Datatype::F32, 352).unwrap();
            }),
            vec!["phantom_1.nii.gz", "NaN or infinite"],
        ),
    ];
    for (what, damage, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        msd_task(dir.path());
        damage(dir.path());
        let message = error_of(&msd_spec(dir.path()));
        for needle in needles {
            assert!(message.contains(needle), "{what}: error lacks '{needle}': {message}");
        }
    }
    // An empty folder.
    let dir = tempfile::tempdir().unwrap();
    let message = error_of(&msd_spec(dir.path()));
    assert!(message.contains("dataset.json") && message.contains("cannot read"), "{message}");
}

#[test]
fn a_failing_dataset_touches_nothing_already_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"
name = "mixed"
labeled_ratios = [0.5]
seeds = [0]
[budget]
iterations = 4
batch_size = 4
resolution = 16
[model]
channels = [4, 8]
dropout = [0.0, 0.0]
[[datasets]]
name = "good"
format = "phantom"
path = "data/good"
phantom = { cases = 6, size = 16, slices = 3, seed = 1 }
[[methods]]
kind = "supervised"
"#;
    std::fs::write(dir.path().join("mixed.toml"), good).unwrap();
    assert!(atso(dir.path(), &["sweep", "mixed.toml"]).status.success());
    let before = std::fs::read_dir(dir.path().join("results/mixed/records")).unwrap().count();
    let with_bad = good.to_string() + "[[datasets]]\nname = \"bad\"\nformat = \"cityscapes\"\npath = \"data/nothing-here\"\n";
    std::fs::write(dir.path().join("mixed.toml"), with_bad).unwrap();
    let output = atso(dir.path(), &["sweep", "mixed.toml"]);
    // A dataset that cannot be prepared is an error in the experiment or the data: the sweep
    // stops with exit status 1 before anything trains, naming the dataset and the cause.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("'bad'") && message.contains("no leftImg8bit folder"), "{message}");
    let records = atso_harness::records::load_all(&dir.path().join("results/mixed")).unwrap();
    assert_eq!(records.len(), before, "nothing is recorded for a dataset that never prepared");
    assert!(records
        .iter()
        .all(|r| r.dataset == "good" && r.status == atso_harness::records::Status::Ok));
}

// ---------------------------------------------------------------- the transfer setting

#[test]
fn transfer_runs_train_on_one_phantom_and_test_on_a_shifted_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "transfer"
labeled_ratios = [0.5]
seeds = [0]
[budget]
iterations = 12
batch_size = 4
resolution = 16
[model]
channels = [4, 8]
dropout = [0.0, 0.0]
[[datasets]]
name = "source"
format = "phantom"
path = "data/source"
phantom = { cases = 8, size = 16, slices = 3, seed = 1 }
reference_dataset = "target"
[[datasets]]
name = "target"
format = "phantom"
path = "data/target"
phantom = { cases = 12, size = 16, slices = 3, seed = 2, intensity_shift = 40.0, noise_scale = 2.0 }
reference_only = true
[[methods]]
kind = "supervised"
[[methods]]
kind = "atso"
"#;
    std::fs::write(dir.path().join("transfer.toml"), text).unwrap();
    let output = atso(dir.path(), &["sweep", "transfer.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let records = atso_harness::records::load_all(&dir.path().join("results/transfer")).unwrap();
    assert_eq!(records.len(), 2, "the reference-only dataset has no runs of its own");
    let split: atso_harness::data::splits::Split =
        atso_harness::data::splits::Split::read(&dir.path().join("results/transfer").join(&records[0].split_file)).unwrap();
    assert_eq!(split.reference_dataset.as_deref(), Some("target"));
    // Source: 8 cases -> 2 test, 1 validation, 5 training, of which half (3) keep their labels.
    // Target: 12 cases -> 3 test, 2 validation, and all 7 training cases unlabeled. The counts
    // differ between the two, so they say which dataset each part came from.
    assert_eq!(
        (split.labeled.len(), split.unlabeled.len(), split.validation.len(), split.test.len()),
        (3, 7, 2, 3)
    );
    for record in &records {
        assert_eq!(record.n_test, 3, "{}: evaluated on the target's test cases", record.method);
        let mut evaluated: Vec<&str> = record.cases.iter().map(|c| c.case_id.as_str()).collect();
        let mut expected: Vec<&str> = split.test.iter().map(String::as_str).collect();
        evaluated.sort();
        expected.sort();
        assert_eq!(evaluated, expected, "{}", record.method);
        // The source has phantom_0..7 only: a case it lacks proves the test set is the target's.
        assert!(
            evaluated
                .iter()
                .any(|id| id.trim_start_matches("phantom_").parse::<usize>().is_ok_and(|i| i >= 8)),
            "{evaluated:?}"
        );
    }
    // `status` computes each run's identity as the sweep did (both datasets' fingerprints).
    let status = atso(dir.path(), &["status", "results/transfer", "--experiment", "transfer.toml"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let listing = String::from_utf8_lossy(&status.stdout);
    assert!(!listing.contains("missing") && listing.matches("done").count() >= 2, "{listing}");
    // The shifted phantom differs from the source: same case names, other intensities.
    let a = nifti::read(&dir.path().join("data/source/imagesTr/phantom_0.nii.gz")).unwrap();
    let b = nifti::read(&dir.path().join("data/target/imagesTr/phantom_0.nii.gz")).unwrap();
    assert_ne!(a.data, b.data);
}

// ---------------------------------------------------------------- installed brain templates

fn nibabel_sum(path: &Path) -> Option<(Vec<usize>, f64)> {
    let script = "import sys, nibabel, numpy\nimg = nibabel.load(sys.argv[1])\nd = numpy.asarray(img.dataobj, dtype=numpy.float64)\nprint(' '.join(map(str, d.shape)), repr(float(d.sum())))";
    let output = Command::new("python3").args(["-c", script]).arg(path).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (shape, sum) = fields.split_at(fields.len() - 1);
    Some((shape.iter().filter_map(|s| s.parse().ok()).collect(), sum[0].parse().ok()?))
}

#[test]
fn every_nifti_file_the_packages_ship_reads_as_nibabel_reads_it() {
    let templates = Path::new("/usr/share/mricron/templates");
    let mut files: Vec<PathBuf> = std::fs::read_dir(templates)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.to_string_lossy().ends_with(".nii.gz"));
    if files.is_empty() || nibabel_sum(&files[0]).is_none() {
        skip_unless_required(
            "ATSO_REQUIRE_DATA_TESTS",
            "needs Debian's mricron-data and python3 with nibabel (.ci/run installs both)",
        );
        return;
    }
    files.sort();
    let mut offsets = 0;
    for file in &files {
        let ours = match nifti::read(file) {
            Ok(v) => v,
            // 4D files (time series) are outside what the harness reads; they must fail cleanly.
            Err(e) => {
                assert!(e.to_string().contains("only 3D volumes"), "{}: {e}", file.display());
                continue;
            }
        };
        let (shape, sum) = nibabel_sum(file).unwrap();
        assert_eq!(shape, ours.dims.to_vec(), "{}", file.display());
        let mine: f64 = ours.data.iter().map(|&v| v as f64).sum();
        assert!(
            (mine - sum).abs() <= 1e-4 * sum.abs().max(1.0),
            "{}: sum {mine} vs nibabel {sum}",
            file.display()
        );
        let raw = std::fs::read(file).unwrap();
        let mut header = Vec::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&raw[..]).take(352).read_to_end(&mut header).unwrap();
        if f32::from_le_bytes(header[108..112].try_into().unwrap()) > 352.0 {
            offsets += 1;
        }
    }
    assert!(
        offsets > 0,
        "the packages ship files whose data start after byte 352 (the pitfall this reader avoids)"
    );
}

#[test]
fn the_installed_brain_templates_prepare_as_slab_cases() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Install from the package when it is on the machine; otherwise say why and stop.
    if !Path::new("/usr/share/mricron/templates/aal.nii.gz").is_file() {
        skip_unless_required(
            "ATSO_REQUIRE_DATA_TESTS",
            "Debian's mricron-data is not installed (.ci/run installs it)",
        );
        return;
    }
    let output = atso(dir.path(), &["data", "install", "colin27", "--into", "data"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let spec = DatasetSpec {
        name: "colin27".into(),
        format: Format::Colin27(Colin27Format {
            slab: Some(10),
            ..Default::default()
        }),
        path: data.join("colin27"),
        ..DatasetSpec::default()
    };
    let prepared = spec.prepare(32, Path::new("/")).unwrap();
    assert_eq!(prepared.classes.len(), 9, "background + 8 lobes");
    assert!(prepared.cases.len() >= 12, "{} slabs", prepared.cases.len());
    assert!(prepared.cases.iter().all(|c| c.slices.len() <= 10));
    let inspect = atso(dir.path(), &["data", "inspect", "data/colin27"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("colin27") && text.contains("cerebellum"), "{text}");
    // One file: its datatype, and an atlas's largest regions rather than 117 lines.
    let file = atso(dir.path(), &["data", "inspect", "/usr/share/mricron/templates/aal.nii.gz"]);
    assert!(file.status.success(), "{}", stderr(&file));
    let text = String::from_utf8_lossy(&file.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        ["uint8", "int16", "uint16", "int32", "float32"]
            .iter()
            .any(|t| first.ends_with(&format!("NIfTI-1, {t}"))),
        "{text}"
    );
    assert!(text.contains("distinct values (an atlas?); the 12 largest"), "{text}");
    let list = atso(dir.path(), &["data", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("colin27          installed"));
}

#[test]
fn data_prepare_writes_fingerprints_before_training() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("driving.toml"), DRIVING).unwrap();
    let output = atso(dir.path(), &["data", "prepare", "driving.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results/driving/datasets/streets.json")).unwrap()).unwrap();
    assert_eq!(json["fingerprint"]["cases"], 13);
    assert!(
        json["fingerprint"]["ignored_fraction"].as_f64().unwrap() > 0.0,
        "the ego-vehicle band is ignored"
    );
    assert!(!dir.path().join("results/driving/records").exists(), "nothing trained");
    // One generated label file: a PNG of labelIds, shown as the 19 trainIds.
    let label = find_files(&dir.path().join("data/streets/gtFine"), "_gtFine_labelIds.png")
        .into_iter()
        .next()
        .expect("the generator wrote label files");
    let inspect = atso(dir.path(), &["data", "inspect", label.to_str().unwrap()]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains(": PNG ") && text.contains("as Cityscapes trainIds") && text.contains("road"),
        "{text}"
    );
}

/// Files under `root` whose names end with `suffix`, in sorted order.
fn find_files(root: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn mni152_installs_from_the_nilearn_wheel_and_prepares() {
    let pip = Command::new("python3").args(["-m", "pip", "--version"]).output();
    if !pip.is_ok_and(|o| o.status.success()) {
        skip_unless_required(
            "ATSO_REQUIRE_DATA_TESTS",
            "python3 with pip is not available to download the nilearn wheel",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = atso(dir.path(), &["data", "install", "mni152", "--into", "data"]);
    if !output.status.success() && stderr(&output).contains("pip download") {
        skip_unless_required(
            "ATSO_REQUIRE_DATA_TESTS",
            &format!("pip could not download nilearn here: {}", stderr(&output)),
        );
        return;
    }
    assert!(output.status.success(), "{}", stderr(&output));
    let spec = DatasetSpec {
        name: "mni".into(),
        format: Format::Mni152(Mni152Format {
            labels: Some(Mni152Labels::TissueCsf),
            ..Default::default()
        }),
        path: dir.path().join("data/mni152"),
        ..DatasetSpec::default()
    };
    // The wheel's NIfTI files have their own header quirks (vox_offset 0): read as nibabel does.
    let mut installed: Vec<PathBuf> = std::fs::read_dir(dir.path().join("data/mni152"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".nii.gz"))
        .collect();
    installed.sort();
    assert!(installed.len() >= 3, "{installed:?}");
    for file in &installed {
        let Some((shape, sum)) = nibabel_sum(file) else {
            skip_unless_required("ATSO_REQUIRE_DATA_TESTS", "python3 with nibabel is not installed");
            break;
        };
        let ours = nifti::read(file).unwrap();
        assert_eq!(shape, ours.dims.to_vec(), "{}", file.display());
        let mine: f64 = ours.data.iter().map(|&v| v as f64).sum();
        assert!(
            (mine - sum).abs() <= 1e-4 * sum.abs().max(1.0),
            "{}: sum {mine} vs nibabel {sum}",
            file.display()
        );
    }
    let prepared = spec.prepare(32, Path::new("/")).unwrap();
    assert_eq!(prepared.classes, ["background", "grey-matter", "white-matter", "csf"]);
    assert!(prepared.cases.len() >= 15, "{} slabs", prepared.cases.len());
    // Grey and white matter are a fifth of the volume (the notes measured 13 % and 7 %).
    let f = &prepared.fingerprint.class_fractions;
    assert!(f[1] > 0.08 && f[1] < 0.2 && f[2] > 0.04 && f[2] < 0.12, "{f:?}");
}
