//! atso-harness: everything a benchmark run needs between an experiment file and a results row.
//!
//! The crate is split by job: `data` turns files on disk into 2D training slices grouped by case,
//! `model` holds the U-Net, `kernels` the CPU kernels for its convolutions, `train` the one
//! training engine and its primitives (loss, schedule, augmentation, batching, inference, curve
//! points), `method` the strategy trait every method implements, `staged` the pseudo-labeling
//! loop ATSO and self-training share, `atso` the paper's method, `evaluate` scoring on each
//! case's native grid, `previews` the slices a report's qualitative figure shows, `runner` the
//! sweep driver (plans, claims, one run), `provenance` the git and machine facts stamped on
//! every row, `progress` what a sweep reports while it works.
//!
//! What a results folder holds (records and their tables, the metric registry and its
//! computations, atomic writes, the clearing of leftovers) is the atso-schema crate, which the
//! reports build on without burn; it is re-exported here under its module names.

pub mod atso;
pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod evaluate;
pub mod memory;
pub mod method;
pub mod model;
pub mod previews;
pub mod progress;
pub mod provenance;
pub mod runner;
pub mod staged;
pub mod tensorboard;
pub mod train;

pub use burn;
// The results folder's schema, from the crate reports also build on; re-exported so the
// harness names it as its own modules.
pub use atso_schema::{comparisons, curves, fsio, json_float, leftovers, metric_registry, overlap, records, scores, surface};
// Data (readers, phantoms, slices, splits) and the seeded random streams, from atso-data.
pub use atso_data::{self as data, rng};
// The U-Net's CPU kernels (burn only), from atso-kernels.
pub use atso_kernels as kernels;
