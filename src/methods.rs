//! Maps `[[methods]]` entries to their implementations (harness for ATSO, baselines crate for
//! the rest). The only place that knows every method.

use atso_baselines::{FullySupervised, MeanTeacher, SelfTraining, Supervised};
use atso_harness::atso::Atso;
use atso_harness::config::MethodSpec;
use atso_harness::method::Method;

/// The implementation of a method entry.
pub fn build(spec: &MethodSpec) -> Box<dyn Method> {
    match spec {
        MethodSpec::Supervised { .. } => Box::new(Supervised),
        MethodSpec::FullySupervised { .. } => Box::new(FullySupervised),
        MethodSpec::Atso { subsets, rounds, init, .. } => Box::new(Atso {
            subsets: *subsets,
            rounds: *rounds,
            init: *init,
            pseudo: spec.pseudo().expect("atso entries carry pseudo-label settings"),
        }),
        MethodSpec::SelfTraining { generations, init, .. } => Box::new(SelfTraining {
            generations: *generations,
            init: *init,
            pseudo: spec.pseudo().expect("self-training entries carry pseudo-label settings"),
        }),
        MethodSpec::MeanTeacher {
            ema_decay, consistency, ..
        } => Box::new(MeanTeacher {
            ema_decay: *ema_decay,
            consistency: *consistency,
        }),
    }
}
