//! Maps `[[methods]]` entries to their implementations (harness for ATSO, baselines crate for
//! the rest). The only place that knows every method.

use atso_baselines::{FullySupervised, MeanTeacher, SelfTraining, Supervised};
use atso_harness::atso::Atso;
use atso_harness::config::MethodSpec;
use atso_harness::method::Method;

/// The implementation of a method entry.
pub fn build(spec: &MethodSpec) -> Box<dyn Method> {
    match spec {
        MethodSpec::Supervised { budget_fraction, .. } => Box::new(Supervised {
            budget_fraction: *budget_fraction,
        }),
        MethodSpec::FullySupervised { .. } => Box::new(FullySupervised),
        MethodSpec::Atso { subsets, .. } => Box::new(Atso {
            subsets: *subsets,
            staged: spec.staged().expect("atso entries carry staged settings"),
        }),
        MethodSpec::SelfTraining { .. } => Box::new(SelfTraining {
            staged: spec.staged().expect("self-training entries carry staged settings"),
        }),
        MethodSpec::MeanTeacher {
            ema_decay,
            consistency,
            ema_scaling,
            ..
        } => Box::new(MeanTeacher {
            ema_decay: *ema_decay,
            consistency: *consistency,
            ema_scaling: *ema_scaling,
        }),
    }
}
