//! atso-harness: everything a benchmark run needs between an experiment file and a results row.
//!
//! The crate is split by job: `data` turns files on disk into 2D training slices grouped by case,
//! `model` holds the U-Net, `train` the one training engine and its primitives (loss, schedule,
//! batching, inference, metrics), `method` the strategy trait every method implements, `atso` the
//! paper's method, `runner` the sweep driver, `records` the polars tables and `provenance` the
//! git facts stamped on every row.

pub mod atso;
pub mod backend;
pub mod config;
pub mod data;
pub mod method;
pub mod model;
pub mod provenance;
pub mod records;
pub mod rng;
pub mod runner;
pub mod train;

pub use burn;
