//! The embedded default data: synthetic abdominal CT, written in the Medical Segmentation
//! Decathlon layout.
//!
//! Each case is a 3D volume in Hounsfield units: air, a body outline with a fat rim, a spine,
//! a liver-like organ, a small low-contrast pancreas-like organ and optional hypodense lesions.
//! Shape, position, contrast and noise vary per case, so a model that saw few cases generalises
//! worse than one that saw many. The files go through the same MSD loader as real data.

use super::msd;
use super::nifti::{self, Datatype};
use super::prepared::{PreparedDataset, Reader};
use super::slices::SlicePlan;
use super::volume::Volume;
use crate::rng::{self, SeededRng};
use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::f32::consts::PI;
use std::path::Path;

/// Label values written by the generator.
pub const CLASSES: [&str; 4] = ["background", "liver", "pancreas", "lesion"];

/// How many phantom cases to make and how large.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhantomSpec {
    /// Number of cases (volumes).
    pub cases: usize,
    /// Voxels along x and y.
    pub size: usize,
    /// Voxels along z (slices).
    pub slices: usize,
    /// Seed of the generator (independent of run seeds: the data is fixed, runs vary).
    pub seed: u64,
    /// Added to every soft-tissue intensity (HU): a scanner or protocol shift, for the transfer
    /// setting (labeled cases from one phantom, unlabeled and test cases from a shifted one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub intensity_shift: f32,
    /// Multiplies the noise level.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub noise_scale: f32,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}
fn one() -> f32 {
    1.0
}
fn is_one(v: &f32) -> bool {
    *v == 1.0
}

impl Default for PhantomSpec {
    fn default() -> Self {
        Self {
            cases: 24,
            size: 96,
            slices: 24,
            seed: 2021,
            intensity_shift: 0.0,
            noise_scale: 1.0,
        }
    }
}

/// Writes the phantom into `root` in MSD layout (imagesTr, labelsTr, dataset.json).
pub fn write_msd(root: &Path, spec: &PhantomSpec) -> Result<()> {
    std::fs::create_dir_all(root.join("imagesTr")).with_context(|| format!("creating {}", root.display()))?;
    std::fs::create_dir_all(root.join("labelsTr"))?;
    let mut names = Vec::with_capacity(spec.cases);
    for case in 0..spec.cases {
        let (image, label) = generate_case(spec, case);
        let name = format!("phantom_{case}");
        nifti::write(&root.join(format!("imagesTr/{name}.nii.gz")), &image, Datatype::I16, 352)?;
        nifti::write(&root.join(format!("labelsTr/{name}.nii.gz")), &label, Datatype::U8, 352)?;
        names.push(name);
    }
    msd::write_dataset_json(
        root,
        "PhantomAbdomenCT",
        "Synthetic abdominal CT phantom (atso-bench)",
        "CT",
        &CLASSES,
        &names,
    )
}

/// Writes the phantom unless `root` already holds one made from the same spec (the spec is kept
/// in `phantom.json`); generated beside `root` and renamed into place (see `generated`).
pub fn ensure(root: &Path, spec: &PhantomSpec) -> Result<()> {
    super::generated::ensure(root, "phantom.json", spec, |dir| write_msd(dir, spec))
}

/// Per-case anatomy drawn from the generator's seed.
struct Anatomy {
    body: (f32, f32),
    liver_center: (f32, f32),
    liver_radii: (f32, f32),
    liver_harmonics: [(f32, f32); 3],
    liver_z: (f32, f32),
    pancreas_center: (f32, f32),
    pancreas_radii: (f32, f32),
    pancreas_angle: f32,
    pancreas_bend: f32,
    pancreas_z: (f32, f32),
    lesions: Vec<([f32; 3], f32)>,
    tissue_hu: f32,
    liver_contrast: f32,
    pancreas_contrast: f32,
    lesion_contrast: f32,
    noise_sigma: f32,
    bias: (f32, f32),
}

impl Anatomy {
    fn draw(rng: &mut SeededRng) -> Self {
        let mut u = |lo: f32, hi: f32| rng.random_range(lo..hi);
        let liver_center = (u(-0.45, -0.25), u(-0.2, 0.05));
        let liver_radii = (u(0.22, 0.34), u(0.2, 0.3));
        let lesion_count = [0usize, 1, 1, 2, 3][(u(0.0, 4.999)) as usize];
        let lesions = (0..lesion_count)
            .map(|_| {
                let angle = u(0.0, 2.0 * PI);
                let reach = u(0.0, 0.55);
                let center = [
                    liver_center.0 + reach * liver_radii.0 * angle.cos(),
                    liver_center.1 + reach * liver_radii.1 * angle.sin(),
                    u(0.35, 0.65),
                ];
                (center, u(0.06, 0.11))
            })
            .collect();
        Self {
            body: (u(0.78, 0.9), u(0.55, 0.68)),
            liver_center,
            liver_radii,
            liver_harmonics: [
                (u(0.0, 0.12), u(0.0, 2.0 * PI)),
                (u(0.0, 0.08), u(0.0, 2.0 * PI)),
                (u(0.0, 0.05), u(0.0, 2.0 * PI)),
            ],
            liver_z: (u(0.45, 0.55), u(0.38, 0.5)),
            pancreas_center: (u(0.05, 0.25), u(0.0, 0.15)),
            pancreas_radii: (u(0.17, 0.26), u(0.06, 0.09)),
            pancreas_angle: u(-0.5, 0.5),
            pancreas_bend: u(-1.2, 1.2),
            pancreas_z: (u(0.45, 0.55), u(0.18, 0.3)),
            lesions,
            tissue_hu: u(30.0, 50.0),
            liver_contrast: u(8.0, 30.0),
            pancreas_contrast: u(15.0, 35.0),
            lesion_contrast: u(-60.0, -30.0),
            noise_sigma: u(5.0, 16.0),
            bias: (u(-10.0, 10.0), u(-10.0, 10.0)),
        }
    }
}

/// One case: (CT volume in HU, label volume with values indexing `CLASSES`).
pub fn generate_case(spec: &PhantomSpec, case: usize) -> (Volume, Volume) {
    let mut rng = rng::stream(spec.seed, &format!("phantom-case-{case}"));
    let anatomy = Anatomy::draw(&mut rng);
    let dims = [spec.size, spec.size, spec.slices];
    let spacing = [300.0 / spec.size as f32, 300.0 / spec.size as f32, 60.0 / spec.slices as f32];
    let mut image = Volume::filled(dims, spacing, -1000.0);
    let mut label = Volume::filled(dims, spacing, 0.0);
    let a = &anatomy;
    for z in 0..spec.slices {
        let w = (z as f32 + 0.5) / spec.slices as f32;
        let body_scale = 1.0 + 0.04 * (2.0 * PI * w).sin();
        let liver_scale = taper(w, a.liver_z);
        let pancreas_scale = taper(w, a.pancreas_z);
        for y in 0..spec.size {
            let v = 2.0 * (y as f32 + 0.5) / spec.size as f32 - 1.0;
            for x in 0..spec.size {
                let u = 2.0 * (x as f32 + 0.5) / spec.size as f32 - 1.0;
                let body = ((u / (a.body.0 * body_scale)).powi(2) + (v / (a.body.1 * body_scale)).powi(2)).sqrt();
                if body > 1.0 {
                    continue;
                }
                let mut hu = if body > 0.9 {
                    -100.0
                } else {
                    a.tissue_hu + a.bias.0 * u + a.bias.1 * v
                };
                let mut class = 0u8;
                if ((u).powi(2) + (v - 0.72 * a.body.1).powi(2)).sqrt() < 0.085 {
                    hu = 450.0;
                }
                if liver_scale > 0.0 && inside_liver(a, u, v, liver_scale) {
                    hu = a.tissue_hu + a.liver_contrast;
                    class = 1;
                    for (center, radius) in &a.lesions {
                        let d = ((u - center[0]).powi(2) + (v - center[1]).powi(2) + (0.6 * (w - center[2])).powi(2)).sqrt();
                        if d < *radius {
                            hu = a.tissue_hu + a.liver_contrast + a.lesion_contrast;
                            class = 3;
                        }
                    }
                }
                if pancreas_scale > 0.0 && class == 0 && inside_pancreas(a, u, v, pancreas_scale) {
                    hu = a.tissue_hu + a.pancreas_contrast;
                    class = 2;
                }
                let i = image.index(x, y, z);
                image.data[i] = if body > 0.9 || hu >= 450.0 { hu } else { hu + spec.intensity_shift };
                label.data[i] = class as f32;
            }
        }
    }
    for value in image.data.iter_mut() {
        *value += a.noise_sigma * spec.noise_scale * rng::standard_normal(&mut rng);
    }
    (image, label)
}

/// Cross-section scale of an organ at depth `w` for an organ centred at `z.0` with half-extent
/// `z.1`: 0 outside, up to 1 at its centre.
fn taper(w: f32, z: (f32, f32)) -> f32 {
    let t = (w - z.0) / z.1;
    if t.abs() >= 1.0 {
        0.0
    } else {
        (1.0 - t * t).sqrt()
    }
}

fn inside_liver(a: &Anatomy, u: f32, v: f32, scale: f32) -> bool {
    let (du, dv) = (u - a.liver_center.0, v - a.liver_center.1);
    let theta = dv.atan2(du);
    let wobble: f32 = a
        .liver_harmonics
        .iter()
        .enumerate()
        .map(|(k, (amp, phase))| amp * ((k as f32 + 2.0) * theta + phase).sin())
        .sum();
    let r = ((du / a.liver_radii.0).powi(2) + (dv / a.liver_radii.1).powi(2)).sqrt();
    r < scale * (1.0 + wobble)
}

fn inside_pancreas(a: &Anatomy, u: f32, v: f32, scale: f32) -> bool {
    let (du, dv) = (u - a.pancreas_center.0, v - a.pancreas_center.1);
    let (s, c) = a.pancreas_angle.sin_cos();
    let along = c * du + s * dv;
    let across = -s * du + c * dv - a.pancreas_bend * along * along;
    (along / a.pancreas_radii.0).powi(2) + (across / (a.pancreas_radii.1 * scale.max(0.3))).powi(2) < scale
}

/// `format = "phantom"`: the embedded synthetic CT, generated into MSD layout at the dataset's
/// path when missing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhantomFormat {
    /// Generator settings (default: `PhantomSpec::default()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phantom: Option<PhantomSpec>,
}

impl Reader for PhantomFormat {
    fn describe(&self) -> &'static str {
        "synthetic abdominal CT (liver, pancreas, lesion), generated; MSD layout"
    }

    fn default_window(&self) -> [f32; 2] {
        msd::CT_WINDOW
    }

    fn check(&self, dataset: &str) -> Result<()> {
        if self.phantom.as_ref().is_some_and(|p| p.cases < 4) {
            bail!("dataset '{dataset}': phantom.cases must be at least 4 (labeled, unlabeled, validation, test)");
        }
        Ok(())
    }

    fn read(&self, dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
        ensure(root, &self.phantom.clone().unwrap_or_default())?;
        msd::read_layout(dataset, root, plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_differ_and_contain_every_organ() {
        let spec = PhantomSpec {
            cases: 3,
            size: 48,
            slices: 12,
            seed: 1,
            ..PhantomSpec::default()
        };
        let (image_a, label_a) = generate_case(&spec, 0);
        let (image_b, _) = generate_case(&spec, 1);
        assert_ne!(image_a.data, image_b.data);
        for class in [1.0, 2.0] {
            assert!(label_a.data.contains(&class), "class {class} missing");
        }
        let air = image_a.data[0];
        assert!(air < -900.0, "corner voxel should be air, got {air}");
    }

    #[test]
    fn same_seed_same_case() {
        let spec = PhantomSpec {
            cases: 1,
            size: 32,
            slices: 8,
            seed: 5,
            ..PhantomSpec::default()
        };
        assert_eq!(generate_case(&spec, 0), generate_case(&spec, 0));
    }
}
