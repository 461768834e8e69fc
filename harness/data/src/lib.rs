//! atso-data: from files on disk to normalised 2D slices grouped by case (no burn).
//!
//! Real data and the embedded phantom take the same path: volumes are written in (or come in) a
//! real on-disk layout, read back by the loader for that layout, then windowed, sliced and resized
//! by `slices`. Splits are made per case, never per slice.

pub mod brain;
pub mod cityscapes;
pub mod dataset;
pub mod dicom;
pub mod driving;
mod generated;
pub mod inspect;
pub mod install;
pub mod labelids;
pub mod msd;
pub mod native;
pub mod nifti;
pub mod nih;
pub mod phantom;
pub mod prepared;
pub mod rng;
pub mod slices;
pub mod splits;
pub mod volume;

pub use dataset::{DatasetSpec, PreparedDataset};
pub use slices::{Case, Slice};
pub use volume::{Volume, IGNORE};

// The results folder's schema (atomic writes, leftovers, naming rules) under the names the
// harness gives it.
pub(crate) use atso_schema::{fsio, leftovers, records};
