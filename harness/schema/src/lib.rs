//! atso-schema: what a results folder holds and how it is written, for the harness that writes
//! it and the reports that read it.
//!
//! `records` are the run records and the tables built from them (`curves`: a training curve's
//! points), `scores` the values of the
//! metrics that `metric_registry` describes (with the computations its entries name: `overlap`
//! and `surface`), `comparisons` the family of comparisons an experiment file declares, `fsio`
//! the atomic writes every file goes through and `leftovers` the clearing of what a killed writer
//! left. Nothing here depends on burn, so `cargo tree -p atso-reports` has none.

pub mod comparisons;
pub mod curves;
pub mod fsio;
pub mod json_float;
pub mod leftovers;
pub mod metric_registry;
pub mod overlap;
pub mod records;
pub mod scores;
pub mod surface;
