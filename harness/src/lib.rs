//! atso-harness: everything a benchmark run needs between an experiment file and a results row.
//!
//! The crate is split by job: `data` turns files on disk into 2D training slices grouped by case,
//! `model` holds the U-Net, `kernels` the CPU kernels for its convolutions, `train` the one training engine and its primitives (loss, schedule,
//! augmentation, batching, inference, metrics), `method` the strategy trait every method
//! implements, `staged` the pseudo-labeling loop ATSO and self-training share, `atso` the paper's
//! method, `evaluate` scoring on each case's native grid, `previews` the slices a report's
//! qualitative figure shows, `runner` the sweep driver (plans,
//! claims, one run), `records` the polars tables, `provenance` the git and machine facts stamped
//! on every row, `progress` what a sweep reports while it works, `fsio` the atomic writes
//! every file goes through and `leftovers` the clearing of what a killed writer left.

pub mod atso;
pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod fsio;
pub mod json_float;
pub mod kernels;
pub mod leftovers;
pub mod memory;
pub mod method;
pub mod metric_registry;
pub mod model;
pub mod previews;
pub mod progress;
pub mod provenance;
pub mod records;
pub mod rng;
pub mod runner;
pub mod scores;
pub mod staged;
pub mod tensorboard;
pub mod train;

pub use burn;
