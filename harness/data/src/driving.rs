//! Synthetic driving scenes written as a Cityscapes tree, so the driving half of the benchmark
//! runs with no download and goes through the same loader as real Cityscapes.
//!
//! Each scene has a horizon and a vanishing point; a road and sidewalks as trapezoids narrowing
//! to it; terrain beyond the sidewalks; buildings and sky above; trees; and poles (some with a
//! traffic sign), cars and people placed by depth, their size shrinking towards the horizon.
//! Layout, colours, textures, lighting and noise vary per image; thin classes (poles, signs),
//! rare ones (people) and an ignored ego-vehicle band make class imbalance and the ignore label
//! real. Files are written in the published naming pattern, label maps as 8-bit labelIds.

use super::cityscapes;
use super::prepared::{PreparedDataset, Reader};
use super::slices::SlicePlan;
use crate::fsio;
use crate::rng::{self, SeededRng};
use anyhow::{Context, Result};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Generator settings (`driving = { ... }` in a `[[datasets]]` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivingSpec {
    /// Images in leftImg8bit/train (labeled, unlabeled and validation cases come from these).
    pub train_images: usize,
    /// Images in leftImg8bit/val (the test cases).
    pub val_images: usize,
    /// Image width and height (Cityscapes is 2048 x 1024; keep the 2:1 ratio).
    pub width: u32,
    pub height: u32,
    pub seed: u64,
}

impl Default for DrivingSpec {
    fn default() -> Self {
        Self {
            train_images: 60,
            val_images: 20,
            width: 256,
            height: 128,
            seed: 2021,
        }
    }
}

// Cityscapes labelIds used by the generator.
const EGO_VEHICLE: u8 = 1;
const ROAD: u8 = 7;
const SIDEWALK: u8 = 8;
const BUILDING: u8 = 11;
const POLE: u8 = 17;
const TRAFFIC_SIGN: u8 = 20;
const VEGETATION: u8 = 21;
const TERRAIN: u8 = 22;
const SKY: u8 = 23;
const PERSON: u8 = 24;
const CAR: u8 = 26;

const TRAIN_CITIES: [&str; 3] = ["aachen", "bochum", "cologne"];
const VAL_CITIES: [&str; 2] = ["frankfurt", "lindau"];

/// Writes the tree into `root` unless it already holds one made from `spec` (a `driving.json`
/// marker records the spec). Generated beside `root` and renamed into place, as the phantom is.
pub fn ensure(root: &Path, spec: &DrivingSpec) -> Result<()> {
    super::generated::ensure(root, "driving.json", spec, |dir| write_tree(dir, spec))
}

fn write_tree(root: &Path, spec: &DrivingSpec) -> Result<()> {
    for (split, count, cities) in [
        ("train", spec.train_images, &TRAIN_CITIES[..]),
        ("val", spec.val_images, &VAL_CITIES[..]),
    ] {
        for i in 0..count {
            let city = cities[i % cities.len()];
            let seq = i / cities.len();
            let stem = format!("{city}_{seq:06}_{:06}", 19);
            let mut rng = rng::stream(spec.seed, &format!("driving:{split}:{i}"));
            let (image, labels) = scene(spec.width, spec.height, &mut rng);
            let image_path = root
                .join("leftImg8bit")
                .join(split)
                .join(city)
                .join(format!("{stem}_leftImg8bit.png"));
            let label_path = root
                .join("gtFine")
                .join(split)
                .join(city)
                .join(format!("{stem}_gtFine_labelIds.png"));
            write_png(&image_path, &image::DynamicImage::ImageRgb8(image))?;
            write_png(&label_path, &image::DynamicImage::ImageLuma8(labels))?;
        }
    }
    Ok(())
}

fn write_png(path: &Path, image: &image::DynamicImage) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", path.display()))?;
    fsio::write_atomic(path, &bytes)
}

/// A colour with per-image variation.
fn jitter(rng: &mut SeededRng, base: [f32; 3], spread: f32) -> [f32; 3] {
    base.map(|c| (c + rng.random_range(-spread..spread)).clamp(0.0, 255.0))
}

/// Draws one scene: the RGB image and its labelIds.
pub fn scene(width: u32, height: u32, rng: &mut SeededRng) -> (RgbImage, GrayImage) {
    let (w, h) = (width as i64, height as i64);
    let mut colors = vec![[0f32; 3]; (w * h) as usize];
    let mut labels = vec![0u8; (w * h) as usize];
    let horizon = (h as f32 * rng.random_range(0.38..0.5)) as i64;
    let vanish = w as f32 * rng.random_range(0.4..0.6);
    let road_half = w as f32 * rng.random_range(0.28..0.42); // half-width at the bottom row
    let walk = rng.random_range(0.12..0.22); // sidewalk width relative to the road half-width
    let sky = jitter(rng, [135.0, 175.0, 220.0], 30.0);
    let road = jitter(rng, [90.0, 90.0, 95.0], 20.0);
    let sidewalk = jitter(rng, [170.0, 160.0, 150.0], 25.0);
    let terrain = jitter(rng, [120.0, 140.0, 80.0], 25.0);
    let mut set = |x: i64, y: i64, label: u8, color: [f32; 3], colors: &mut Vec<[f32; 3]>| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            let i = (y * w + x) as usize;
            labels[i] = label;
            colors[i] = color;
        }
    };
    // Ground and sky.
    for y in 0..h {
        for x in 0..w {
            if y < horizon {
                let fade = y as f32 / horizon.max(1) as f32;
                set(x, y, SKY, sky.map(|c| c * (0.85 + 0.15 * fade)), &mut colors);
                continue;
            }
            let depth = (y - horizon) as f32 / (h - horizon).max(1) as f32; // 0 at the horizon
            let half = road_half * depth;
            let dx = (x as f32 - vanish).abs();
            let (label, color) = if dx <= half {
                (ROAD, road)
            } else if dx <= half * (1.0 + walk) {
                (SIDEWALK, sidewalk)
            } else {
                (TERRAIN, terrain)
            };
            set(x, y, label, color, &mut colors);
        }
    }
    // Buildings along both sides, from the horizon up.
    for side in [-1.0f32, 1.0] {
        let mut x = if side < 0.0 { 0.0 } else { vanish + road_half * 0.05 };
        let end = if side < 0.0 { vanish - road_half * 0.05 } else { w as f32 };
        while x < end {
            let facade = rng.random_range(w as f32 * 0.06..w as f32 * 0.18);
            let top = horizon - rng.random_range(h as f32 * 0.08..h as f32 * 0.32) as i64;
            let base = horizon + rng.random_range(0..(h / 40).max(1));
            let wall = jitter(rng, [150.0, 120.0, 100.0], 50.0);
            let window = wall.map(|c| c * 0.45);
            for xx in x as i64..(x + facade).min(end) as i64 {
                for yy in top.max(0)..base {
                    // A grid of windows as texture.
                    let is_window = (xx % 7 < 3) && ((yy - top) % 9 < 4) && yy < base - 2;
                    set(xx, yy, BUILDING, if is_window { window } else { wall }, &mut colors);
                }
            }
            x += facade + rng.random_range(0.0..w as f32 * 0.03);
        }
    }
    // Trees: a trunk-less crown blob over the buildings near the horizon.
    for _ in 0..rng.random_range(1..5) {
        let cx = rng.random_range(0..w);
        let cy = horizon - rng.random_range(0..(h / 6).max(1));
        let r = rng.random_range(h as f32 * 0.05..h as f32 * 0.14);
        let leaf = jitter(rng, [60.0, 120.0, 50.0], 25.0);
        for yy in (cy - r as i64)..=(cy + r as i64) {
            for xx in (cx - r as i64)..=(cx + r as i64) {
                let d = (((xx - cx) as f32).powi(2) + ((yy - cy) as f32).powi(2)).sqrt();
                let ragged = r * (0.85 + 0.15 * ((xx * 13 + yy * 7) % 5) as f32 / 5.0);
                if d <= ragged && yy < horizon + (h / 30) {
                    set(
                        xx,
                        yy,
                        VEGETATION,
                        leaf.map(|c| c * (0.8 + 0.05 * ((xx + yy) % 5) as f32)),
                        &mut colors,
                    );
                }
            }
        }
    }
    // Depth-scaled objects: (bottom row, scale) with the scale 1 at the image bottom.
    let scale_at = |y: i64| ((y - horizon) as f32 / (h - horizon).max(1) as f32).max(0.05);
    let edge_x = |y: i64, side: f32, offset: f32| vanish + side * road_half * scale_at(y) * offset;
    // Poles (some with a sign) at the outer sidewalk edges.
    for _ in 0..rng.random_range(1..4) {
        let y = rng.random_range(horizon + (h - horizon) / 6..h - h / 8);
        let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
        let x = edge_x(y, side, 1.0 + walk * 0.8) as i64;
        let s = scale_at(y);
        let tall = (h as f32 * 0.55 * s) as i64;
        let thick = ((w as f32 * 0.008 * s) as i64).max(1);
        for yy in (y - tall)..y {
            for xx in x..x + thick {
                set(xx, yy, POLE, [110.0, 110.0, 110.0], &mut colors);
            }
        }
        if rng.random::<f32>() < 0.6 {
            let size = ((h as f32 * 0.07 * s) as i64).max(2);
            let color = if rng.random::<bool>() {
                [200.0, 30.0, 30.0]
            } else {
                [30.0, 60.0, 200.0]
            };
            for yy in (y - tall)..(y - tall + size) {
                for xx in (x - size / 2)..(x + size / 2 + thick) {
                    set(xx, yy, TRAFFIC_SIGN, color, &mut colors);
                }
            }
        }
    }
    // Cars on the road, far ones first so near ones cover them.
    let mut cars: Vec<(i64, f32)> = (0..rng.random_range(0..5))
        .map(|_| {
            (
                rng.random_range(horizon + (h - horizon) / 8..h - h / 10),
                rng.random_range(-0.7f32..0.7),
            )
        })
        .collect();
    cars.sort_by_key(|c| c.0);
    for (y, lane) in cars {
        let s = scale_at(y);
        let x = edge_x(y, lane.signum(), lane.abs()) as i64;
        let (cw, ch) = ((w as f32 * 0.2 * s) as i64, (h as f32 * 0.16 * s) as i64);
        let body = jitter(rng, [120.0, 120.0, 120.0], 110.0);
        for yy in (y - ch)..y {
            for xx in (x - cw / 2)..(x + cw / 2) {
                let glass = yy < y - ch / 2 && yy > y - ch * 9 / 10 && (xx - x).abs() < cw * 2 / 5;
                set(xx, yy, CAR, if glass { [40.0, 50.0, 60.0] } else { body }, &mut colors);
            }
        }
    }
    // People on the sidewalks.
    for _ in 0..rng.random_range(0..4) {
        let y = rng.random_range(horizon + (h - horizon) / 5..h - h / 10);
        let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
        let x = edge_x(y, side, 1.0 + walk * 0.5) as i64;
        let s = scale_at(y);
        let (pw, ph) = (((w as f32 * 0.02 * s) as i64).max(1), (h as f32 * 0.3 * s) as i64);
        let clothes = jitter(rng, [90.0, 60.0, 120.0], 80.0);
        for yy in (y - ph)..y {
            let head = yy < y - ph * 5 / 6;
            for xx in (x - pw)..(x + pw) {
                set(xx, yy, PERSON, if head { [220.0, 180.0, 150.0] } else { clothes }, &mut colors);
            }
        }
    }
    // The ego vehicle's bonnet at the bottom (ignored in evaluation, as in Cityscapes).
    let bonnet = h / 16;
    for y in (h - bonnet)..h {
        for x in 0..w {
            set(x, y, EGO_VEHICLE, [20.0, 20.0, 25.0], &mut colors);
        }
    }
    // Lighting and sensor noise.
    let light = rng.random_range(0.6f32..1.25);
    let noise = rng.random_range(2.0f32..14.0);
    let mut image = RgbImage::new(width, height);
    for (i, pixel) in image.pixels_mut().enumerate() {
        let n = crate::rng::standard_normal(rng) * noise;
        *pixel = Rgb(colors[i].map(|c| (c * light + n).clamp(0.0, 255.0) as u8));
    }
    let mut label_image = GrayImage::new(width, height);
    for (i, pixel) in label_image.pixels_mut().enumerate() {
        *pixel = Luma([labels[i]]);
    }
    (image, label_image)
}

/// `format = "driving-phantom"`: synthetic driving scenes, generated as a Cityscapes tree at the
/// dataset's path when missing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivingFormat {
    /// Generator settings (default: `DrivingSpec::default()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driving: Option<DrivingSpec>,
}

impl Reader for DrivingFormat {
    fn describe(&self) -> &'static str {
        "synthetic driving scenes, generated as a Cityscapes tree"
    }

    /// Unused: RGB images are scaled from 8 bits.
    fn default_window(&self) -> [f32; 2] {
        [0.0, 255.0]
    }

    fn read(&self, dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
        ensure(root, &self.driving.clone().unwrap_or_default())?;
        cityscapes::read_tree(dataset, root, plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_vary_and_hold_the_main_classes() {
        let (a_image, a) = scene(128, 64, &mut rng::stream(1, "t"));
        let (_, b) = scene(128, 64, &mut rng::stream(2, "t"));
        assert_ne!(a.as_raw(), b.as_raw());
        for id in [ROAD, SIDEWALK, SKY, EGO_VEHICLE] {
            assert!(a.pixels().any(|p| p.0[0] == id), "labelId {id} missing");
        }
        let (again, _) = scene(128, 64, &mut rng::stream(1, "t"));
        assert_eq!(a_image.as_raw(), again.as_raw(), "the same seed draws the same scene");
    }
}
