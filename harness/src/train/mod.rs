//! Training primitives and the one training engine every method runs through.

pub mod augment;
pub mod batch;
pub mod curves;
pub mod engine;
pub mod infer;
pub mod loss;
pub mod schedule;

pub use batch::{Example, Pool, Target};
pub use engine::{Engine, Objective, OptimizerSpec, PhaseLog, Step, StepLoss, StepReport, StepTimes, StepValues};
