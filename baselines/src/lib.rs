//! Baseline methods ATSO is compared with, one file each. Each is a short strategy over the
//! harness's `RunContext` and training engine.

pub mod fully_supervised;
pub mod mean_teacher;
pub mod self_training;
pub mod supervised;

pub use fully_supervised::FullySupervised;
pub use mean_teacher::MeanTeacher;
pub use self_training::SelfTraining;
pub use supervised::Supervised;
