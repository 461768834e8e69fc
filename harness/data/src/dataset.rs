//! Dataset entries of experiment files (`[[datasets]]`): what every format shares, and each
//! format's own settings as an enum, so a key of another format is refused with the dataset,
//! format and key named, and a new format is one file (its settings and `Reader`), declared in
//! lib.rs, and one line in `formats!` below. Preparation is the format's reader (`prepared`).

pub use super::prepared::{Fingerprint, PreparedDataset, Reader};
use super::slices::SlicePlan;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize, Serializer};
use std::path::{Path, PathBuf};

/// Declares the formats: the `Format` enum, each one's name (`format = "..."` in an experiment
/// file), every format at its defaults (`atso data list`), and the dispatch to each one's
/// reader and settings.
macro_rules! formats {
    ($($(#[$doc:meta])* $variant:ident($name:literal, $settings:ty),)+) => {
        /// An on-disk format with its own settings.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Format {
            $($(#[$doc])* $variant($settings),)+
        }

        impl Format {
            /// Every format's name, in the order `atso data list` shows them.
            pub const NAMES: &[&str] = &[$($name,)+];

            /// Every format with its default settings.
            pub fn all() -> Vec<Format> {
                vec![$(Format::$variant(<$settings>::default()),)+]
            }

            /// The name used in experiment files.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Format::$variant(_) => $name,)+
                }
            }

            /// The format's reader.
            pub fn reader(&self) -> &dyn Reader {
                match self {
                    $(Format::$variant(settings) => settings,)+
                }
            }

            /// The format named `name` with `settings` (the entry's other keys); an error names
            /// the key path inside them.
            fn read(name: &str, settings: serde_json::Value) -> std::result::Result<Format, String> {
                let read = |error: serde_path_to_error::Error<serde_json::Error>| {
                    let (key, message) = (error.path().to_string(), error.inner().to_string());
                    // An unknown key names itself.
                    if key == "." || message.starts_with("unknown field") {
                        message
                    } else {
                        format!("key `{key}`: {message}")
                    }
                };
                match name {
                    $($name => serde_path_to_error::deserialize(settings).map(Format::$variant).map_err(read),)+
                    other => Err(format!("unknown format `{other}`, expected one of {}", Format::NAMES.join(", "))),
                }
            }
        }

        impl Serialize for Settings<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                match self.0 {
                    $(Format::$variant(settings) => settings.serialize(s),)+
                }
            }
        }
    };
}

formats! {
    /// The embedded synthetic CT, generated into MSD layout at `path` when missing.
    Phantom("phantom", super::phantom::PhantomFormat),
    /// A Medical Segmentation Decathlon task folder (dataset.json, imagesTr, labelsTr).
    Msd("msd", super::msd::MsdFormat),
    /// NIH Pancreas-CT: DICOM series per patient (or converted PANCREAS_xxxx.nii.gz) and
    /// labelxxxx.nii.gz files.
    NihPancreas("nih-pancreas", super::nih::NihFormat),
    /// A Cityscapes tree (leftImg8bit/, gtFine/).
    Cityscapes("cityscapes", super::cityscapes::CityscapesFormat),
    /// Synthetic driving scenes, generated as a Cityscapes tree at `path` when missing.
    DrivingPhantom("driving-phantom", super::driving::DrivingFormat),
    /// Colin27 T1 + AAL parcellation, installed with `atso data install colin27`.
    Colin27("colin27", super::brain::Colin27Format),
    /// MNI152 2009 T1 + tissue maps, installed with `atso data install mni152`.
    Mni152("mni152", super::brain::Mni152Format),
}

impl Format {
    /// What the format is, in one line.
    pub fn describe(&self) -> &'static str {
        self.reader().describe()
    }
}

/// A format's own settings, written without its tag (see `DatasetSpec`'s serialisation).
struct Settings<'a>(&'a Format);

/// One `[[datasets]]` entry of an experiment file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Entry")]
pub struct DatasetSpec {
    /// Name used in results rows.
    pub name: String,
    /// The on-disk format and its own settings (generator settings, preset, label grouping).
    pub format: Format,
    /// Folder of the data (relative paths are taken from the working directory).
    pub path: PathBuf,
    /// Intensity window in the volume's units, mapped to [0, 1] (default: the format's: a
    /// preset's, else [-125, 275] HU for CT and [0, 255] for the 8-bit MRI templates; unused
    /// for RGB).
    pub window: Option<[f32; 2]>,
    /// Axis to slice along (0, 1 or 2).
    pub axis: usize,
    /// The transfer setting: labeled cases from this dataset, unlabeled, validation and test
    /// cases from the named one (another `[[datasets]]` entry with the same classes).
    pub reference_dataset: Option<String>,
    /// Use this dataset only as another entry's reference: no runs of its own.
    pub reference_only: bool,
}

/// A `[[datasets]]` entry as read: the shared keys, and the rest, which the format named by
/// `format` reads (its settings refuse keys they do not know, and the error says which dataset
/// and format refused them).
#[derive(Deserialize)]
struct Entry {
    name: String,
    path: PathBuf,
    #[serde(default)]
    window: Option<[f32; 2]>,
    #[serde(default = "default_axis")]
    axis: usize,
    #[serde(default)]
    reference_dataset: Option<String>,
    #[serde(default)]
    reference_only: bool,
    #[serde(flatten)]
    format: serde_json::Map<String, serde_json::Value>,
}

impl TryFrom<Entry> for DatasetSpec {
    type Error = String;

    fn try_from(e: Entry) -> std::result::Result<Self, String> {
        let mut settings = e.format;
        let format = match settings.remove("format") {
            Some(serde_json::Value::String(name)) => Format::read(&name, serde_json::Value::Object(settings))
                .map_err(|err| format!("dataset '{}', format '{name}': {err}", e.name))?,
            Some(other) => return Err(format!("dataset '{}': format must be a name, got {other}", e.name)),
            None => {
                return Err(format!(
                    "dataset '{}': missing field `format` (one of {})",
                    e.name,
                    Format::NAMES.join(", ")
                ))
            }
        };
        Ok(Self {
            name: e.name,
            format,
            path: e.path,
            window: e.window,
            axis: e.axis,
            reference_dataset: e.reference_dataset,
            reference_only: e.reference_only,
        })
    }
}

/// Written with the keys in the order of the flat struct this replaced (name, format, path,
/// preset, window, axis, the format's settings, reference_dataset, reference_only): run hashes
/// are computed from this text, so results recorded before keep their identity.
impl Serialize for DatasetSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            name: &'a str,
            format: &'static str,
            path: &'a Path,
            #[serde(skip_serializing_if = "Option::is_none")]
            preset: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            window: Option<[f32; 2]>,
            axis: usize,
            #[serde(flatten)]
            settings: Settings<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reference_dataset: Option<&'a str>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            reference_only: bool,
        }
        Written {
            name: &self.name,
            format: self.format.name(),
            path: &self.path,
            preset: self.format.reader().preset(),
            window: self.window,
            axis: self.axis,
            settings: Settings(&self.format),
            reference_dataset: self.reference_dataset.as_deref(),
            reference_only: self.reference_only,
        }
        .serialize(s)
    }
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            name: "phantom-ct".into(),
            format: Format::Phantom(Default::default()),
            path: PathBuf::from("data/phantom-ct"),
            window: None,
            axis: default_axis(),
            reference_dataset: None,
            reference_only: false,
        }
    }
}

fn default_axis() -> usize {
    2
}

impl DatasetSpec {
    /// Checks values that serde cannot (window order, axis range, the format's own values).
    pub fn validate(&self) -> Result<()> {
        crate::records::validate_name("datasets", "dataset name", &self.name)?;
        if let Some(window) = self.window {
            if window[0].partial_cmp(&window[1]) != Some(std::cmp::Ordering::Less) {
                bail!(
                    "dataset '{}': window must be [low, high] with low < high, got {window:?}",
                    self.name
                );
            }
        }
        if self.axis > 2 {
            bail!("dataset '{}': axis must be 0, 1 or 2, got {}", self.name, self.axis);
        }
        self.format.reader().check(&self.name)?;
        if self.reference_dataset.as_deref() == Some(self.name.as_str()) {
            bail!("dataset '{}': reference_dataset names the dataset itself", self.name);
        }
        Ok(())
    }

    /// The intensity window in use.
    pub fn window(&self) -> [f32; 2] {
        self.window.unwrap_or_else(|| self.format.reader().default_window())
    }

    /// The data folder, relative paths taken from `base_dir`.
    pub fn root(&self, base_dir: &Path) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            base_dir.join(&self.path)
        }
    }

    /// Generates the data if the format is generated, reads every case and slices it at
    /// `resolution`; fingerprints it.
    pub fn prepare(&self, resolution: usize, base_dir: &Path) -> Result<PreparedDataset> {
        self.validate()?;
        let plan = SlicePlan {
            window: self.window(),
            axis: self.axis,
            resolution,
        };
        let prepared = self.format.reader().read(&self.name, &self.root(base_dir), plan)?;
        prepared.check()?;
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<DatasetSpec, String> {
        toml::from_str::<DatasetSpec>(text).map_err(|e| e.to_string())
    }

    /// Each format's entry is written as the flat struct before it wrote it (these strings are
    /// that struct's output at commit 94f7b89): run hashes, computed from this text, hold.
    #[test]
    fn entries_are_written_as_before_so_run_hashes_hold() {
        for (toml, json) in [
            (
                "name = \"a\"\nformat = \"msd\"\npath = \"/x/Task03\"\npreset = \"msd-liver\"\nwindow = [-100.0, 200.0]\naxis = 1",
                r#"{"name":"a","format":"msd","path":"/x/Task03","preset":"msd-liver","window":[-100.0,200.0],"axis":1}"#,
            ),
            (
                "name = \"b\"\nformat = \"nih-pancreas\"\npath = \"nih\"\npreset = \"nih-pancreas\"",
                r#"{"name":"b","format":"nih-pancreas","path":"nih","preset":"nih-pancreas","axis":2}"#,
            ),
            (
                "name = \"c\"\nformat = \"colin27\"\npath = \"c27\"\nlabels = \"coarse\"\nslab = 6",
                r#"{"name":"c","format":"colin27","path":"c27","axis":2,"labels":"coarse","slab":6}"#,
            ),
            (
                "name = \"d\"\nformat = \"mni152\"\npath = \"m\"\nlabels = \"tissue-csf\"",
                r#"{"name":"d","format":"mni152","path":"m","axis":2,"labels":"tissue-csf"}"#,
            ),
            (
                "name = \"e\"\nformat = \"driving-phantom\"\npath = \"dr\"\ndriving = { train_images = 12, val_images = 4, width = 64, height = 32, seed = 3 }",
                r#"{"name":"e","format":"driving-phantom","path":"dr","axis":2,"driving":{"train_images":12,"val_images":4,"width":64,"height":32,"seed":3}}"#,
            ),
            ("name = \"f\"\nformat = \"cityscapes\"\npath = \"cs\"", r#"{"name":"f","format":"cityscapes","path":"cs","axis":2}"#),
            (
                "name = \"g\"\nformat = \"msd\"\npath = \"g\"\nreference_dataset = \"z\"",
                r#"{"name":"g","format":"msd","path":"g","axis":2,"reference_dataset":"z"}"#,
            ),
            (
                "name = \"h\"\nformat = \"msd\"\npath = \"h\"\nreference_only = true",
                r#"{"name":"h","format":"msd","path":"h","axis":2,"reference_only":true}"#,
            ),
            (
                "name = \"p\"\nformat = \"phantom\"\npath = \"p\"\nphantom = { cases = 80, size = 64, slices = 16, seed = 2021, noise_scale = 1.5 }",
                r#"{"name":"p","format":"phantom","path":"p","axis":2,"phantom":{"cases":80,"size":64,"slices":16,"seed":2021,"noise_scale":1.5}}"#,
            ),
        ] {
            let spec = parse(toml).unwrap();
            assert_eq!(serde_json::to_string(&spec).unwrap(), json);
            assert_eq!(serde_json::from_str::<DatasetSpec>(json).unwrap(), spec, "{json} reads back");
        }
    }

    #[test]
    fn a_key_of_another_format_is_refused_naming_dataset_format_and_key() {
        for (toml, expected) in [
            (
                "name = \"i\"\nformat = \"msd\"\npath = \"h\"\nphantom = { cases = 8, size = 32, slices = 6, seed = 3 }",
                "dataset 'i', format 'msd': unknown field `phantom`",
            ),
            (
                "name = \"j\"\nformat = \"phantom\"\npath = \"h\"\nlabels = \"lobes\"",
                "dataset 'j', format 'phantom': unknown field `labels`",
            ),
            (
                "name = \"k\"\nformat = \"msd\"\npath = \"h\"\nslab = 4",
                "dataset 'k', format 'msd': unknown field `slab`",
            ),
            (
                "name = \"n\"\nformat = \"nih-pancreas\"\npath = \"h\"\npreset = \"msd-liver\"",
                "dataset 'n', format 'nih-pancreas': key `preset`: unknown variant `msd-liver`, expected `nih-pancreas`",
            ),
            (
                "name = \"c\"\nformat = \"colin27\"\npath = \"h\"\nlabels = \"tissue\"",
                "dataset 'c', format 'colin27': key `labels`: unknown variant `tissue`, expected `lobes` or `coarse`",
            ),
            (
                "name = \"s\"\nformat = \"tiff\"\npath = \"h\"",
                "dataset 's', format 'tiff': unknown format `tiff`, expected one of phantom, msd",
            ),
            ("name = \"t\"\npath = \"h\"", "dataset 't': missing field `format`"),
            (
                "name = \"p\"\nformat = \"phantom\"\npath = \"h\"\nphantom = { cases = \"8\", size = 32, slices = 6, seed = 3 }",
                "dataset 'p', format 'phantom': key `phantom.cases`: invalid type: string \"8\", expected usize",
            ),
        ] {
            let message = parse(toml).unwrap_err();
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn values_serde_cannot_check_are_checked_by_the_format() {
        let check = |toml: &str| parse(toml).unwrap().validate().map_err(|e| e.to_string());
        assert_eq!(
            check("name = \"l\"\nformat = \"colin27\"\npath = \"h\"\nslab = 0").unwrap_err(),
            "dataset 'l': slab must be at least 1 slice"
        );
        assert!(
            check("name = \"m\"\nformat = \"phantom\"\npath = \"h\"\nphantom = { cases = 2, size = 32, slices = 6, seed = 3 }")
                .unwrap_err()
                .contains("phantom.cases must be at least 4")
        );
        assert!(check("name = \"q\"\nformat = \"msd\"\npath = \"h\"\naxis = 3")
            .unwrap_err()
            .contains("axis must be 0, 1 or 2"));
    }

    #[test]
    fn every_format_is_listed_by_its_name_with_its_window() {
        let names: Vec<&str> = Format::all().iter().map(Format::name).collect();
        assert_eq!(
            names,
            [
                "phantom",
                "msd",
                "nih-pancreas",
                "cityscapes",
                "driving-phantom",
                "colin27",
                "mni152"
            ]
        );
        let window = |format: Format| {
            DatasetSpec {
                format,
                ..DatasetSpec::default()
            }
            .window()
        };
        assert_eq!(window(Format::Phantom(Default::default())), [-125.0, 275.0]);
        assert_eq!(window(Format::Colin27(Default::default())), [0.0, 255.0]);
    }
}
