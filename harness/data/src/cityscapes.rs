//! The Cityscapes layout: `leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`
//! (8-bit RGB) with `gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png` (8-bit
//! grey label ids 0..33), mapped to the 19 evaluation classes (trainIds) with every other id
//! ignored (255).
//!
//! Each image is one case with one slice: images are resized to the training resolution
//! (bilinear per channel, the aspect ratio is not kept), label maps by nearest neighbour; metrics
//! are computed on the label file's own size. The `train` folder gives the labeled, unlabeled and
//! validation cases, `val` the test cases (as semi-supervised driving papers evaluate on it).

pub use super::labelids::{read_labels, train_id, CLASSES, LABEL_IDS};
use super::prepared::{FingerprintBuilder, PreparedDataset, Reader};
use super::slices::{resize_bilinear, resize_nearest, Case, Slice, SlicePlan};
use super::volume::{Volume, IGNORE};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One image of the tree and its label file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `<city>_<seq>_<frame>`.
    pub id: String,
    pub split: CityscapesSplit,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// The folders of a Cityscapes tree the harness reads: `val` is the fixed test set (Cityscapes'
/// test labels are not public).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CityscapesSplit {
    Train,
    Val,
}

impl CityscapesSplit {
    /// Its folder under `leftImg8bit/` and `gtFine/`.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
        }
    }
}

/// Lists the images of the `train` and `val` folders with their label files, checking that
/// every image has one.
pub fn index(root: &Path) -> Result<Vec<Entry>> {
    let images = root.join("leftImg8bit");
    let labels = root.join("gtFine");
    if !images.is_dir() {
        bail!(
            "{}: no leftImg8bit folder (expected the Cityscapes layout leftImg8bit/{{train,val}}/<city>/)",
            root.display()
        );
    }
    if !labels.is_dir() {
        bail!(
            "{}: no gtFine folder: the fine annotations (gtFine/{{train,val}}/<city>/*_gtFine_labelIds.png) are needed",
            root.display()
        );
    }
    let mut entries = Vec::new();
    for split in [CityscapesSplit::Train, CityscapesSplit::Val] {
        let dir = images.join(split.folder());
        if !dir.is_dir() {
            bail!("{}: missing; Cityscapes needs leftImg8bit/train and leftImg8bit/val", dir.display());
        }
        let mut cities: Vec<PathBuf> = read_dir(&dir)?.into_iter().filter(|p| p.is_dir()).collect();
        cities.sort();
        for city in cities {
            let mut files: Vec<PathBuf> = read_dir(&city)?;
            files.sort();
            for image in files {
                let Some(name) = image.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name.starts_with('.') || !name.ends_with(".png") {
                    continue;
                }
                let id = parse_name(name).with_context(|| format!("{}: unexpected file name", image.display()))?;
                let city_name = city.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let label = labels
                    .join(split.folder())
                    .join(city_name)
                    .join(format!("{id}_gtFine_labelIds.png"));
                if !label.is_file() {
                    bail!("{}: the label file of {} is missing", label.display(), image.display());
                }
                entries.push(Entry { id, split, image, label });
            }
        }
    }
    let has = |split: CityscapesSplit| entries.iter().any(|e| e.split == split);
    if !has(CityscapesSplit::Train) || !has(CityscapesSplit::Val) {
        bail!("{}: leftImg8bit/train and leftImg8bit/val must both hold images", root.display());
    }
    Ok(entries)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect())
}

/// `<city>_<seq:06>_<frame:06>_leftImg8bit.png` -> `<city>_<seq>_<frame>`.
fn parse_name(name: &str) -> Result<String> {
    let stem = name
        .strip_suffix("_leftImg8bit.png")
        .with_context(|| format!("'{name}' does not end in _leftImg8bit.png"))?;
    let parts: Vec<&str> = stem.rsplitn(3, '_').collect();
    let numbered = |s: &str| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !numbered(parts[0]) || !numbered(parts[1]) || parts[2].is_empty() {
        bail!("'{name}' is not <city>_<seq:6 digits>_<frame:6 digits>_leftImg8bit.png");
    }
    Ok(stem.to_string())
}

/// An RGB image as channel-major floats in [0, 1] and its size.
pub fn read_image(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    crate::fsio::ensure_regular_file(path)?;
    let decoded = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .decode()
        .with_context(|| format!("{}: not a readable PNG", path.display()))?;
    if decoded.color() != image::ColorType::Rgb8 && decoded.color() != image::ColorType::Rgba8 {
        bail!("{}: expected an 8-bit RGB image, got {:?}", path.display(), decoded.color());
    }
    let rgb = decoded.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut channels = vec![0f32; 3 * w * h];
    for (i, pixel) in rgb.pixels().enumerate() {
        for c in 0..3 {
            channels[c * w * h + i] = pixel.0[c] as f32 / 255.0;
        }
    }
    Ok((channels, w, h))
}

/// One entry as a case at `resolution`.
pub fn load_case(entry: &Entry, resolution: usize) -> Result<Case> {
    Ok(load_case_and_native(entry, resolution)?.0)
}

/// One entry as a case at `resolution`, with what was decoded on the way: the image's channels
/// at their native size (channel-major) and the trainId label map. Preparation fingerprints
/// those without decoding either PNG a second time.
pub fn load_case_and_native(entry: &Entry, resolution: usize) -> Result<(Case, Vec<f32>, Volume)> {
    let (channels, w, h) = read_image(&entry.image)?;
    let labels = read_labels(&entry.label)?;
    if labels.dims[..2] != [w, h] {
        bail!(
            "{}: label map is {}x{} but its image {} is {w}x{h}",
            entry.label.display(),
            labels.dims[0],
            labels.dims[1],
            entry.image.display()
        );
    }
    let image: Vec<f32> = (0..3)
        .flat_map(|c| resize_bilinear(&channels[c * w * h..(c + 1) * w * h], w, h, resolution))
        .collect();
    let label = resize_nearest(&labels.data, w, h, resolution)
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let case = Case {
        id: entry.id.clone(),
        slices: vec![Slice { image, label }],
        native: Some(super::native::NativeSource::Cityscapes {
            label: entry.label.clone(),
        }),
    };
    Ok((case, channels, labels))
}

/// `format = "cityscapes"`: a Cityscapes tree.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityscapesFormat {}

impl Reader for CityscapesFormat {
    fn describe(&self) -> &'static str {
        "Cityscapes: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png, gtFine/.../*_gtFine_labelIds.png"
    }

    /// Unused: RGB images are scaled from 8 bits.
    fn default_window(&self) -> [f32; 2] {
        [0.0, 255.0]
    }

    fn read(&self, dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
        read_tree(dataset, root, plan)
    }
}

/// Every image of the Cityscapes tree at `root` (the driving phantom's layout too); the `val`
/// images are the fixed test set, every class is scored, pixels outside the 19 are ignored.
pub(crate) fn read_tree(dataset: &str, root: &Path, plan: SlicePlan) -> Result<PreparedDataset> {
    let context = || format!("dataset '{dataset}'");
    let entries = index(root).with_context(context)?;
    let classes: Vec<String> = CLASSES.map(String::from).to_vec();
    let mut stats = FingerprintBuilder::new(classes.len());
    let mut cases = Vec::with_capacity(entries.len());
    for entry in &entries {
        let (case, intensity, labels) = load_case_and_native(entry, plan.resolution).with_context(context)?;
        stats.add(&intensity[..labels.data.len()], &labels, labels.dims, labels.spacing);
        cases.push(case);
    }
    Ok(PreparedDataset {
        name: dataset.to_string(),
        classes,
        in_channels: 3,
        first_class: 0,
        outside_label: IGNORE,
        fingerprint: stats.finish(cases.len()),
        cases,
        fixed_test: Some(
            entries
                .iter()
                .filter(|e| e.split == CityscapesSplit::Val)
                .map(|e| e.id.clone())
                .collect(),
        ),
        folds: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_the_published_pattern() {
        assert_eq!(parse_name("aachen_000012_000019_leftImg8bit.png").unwrap(), "aachen_000012_000019");
        assert_eq!(
            parse_name("bad_city_name_000001_000002_leftImg8bit.png").unwrap(),
            "bad_city_name_000001_000002"
        );
        assert!(parse_name("aachen_12_19_leftImg8bit.png").is_err());
        assert!(parse_name("aachen_000012_000019_gtFine_labelIds.png").is_err());
    }
}
