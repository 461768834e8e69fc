//! Naive synchronous self-training: the current model relabels all unlabeled data at once and is
//! fine-tuned on it, generation after generation.
//!
//! It is ATSO's staged loop with a single subset holding every unlabeled case (K = 1), so the
//! model that relabels the set is the one that was just fine-tuned on it. Same supervised model
//! M0, same number of stages and steps as ATSO's defaults (generations = subsets x rounds = 4).

use atso_harness::atso::{run_staged, staged_settings};
use atso_harness::config::{PseudoLabelSpec, StudentInit};
use atso_harness::method::{Budget, Method, RunContext};
use atso_harness::model::UNet;

/// Synchronous self-training as configured in an experiment file.
#[derive(Debug, Clone)]
pub struct SelfTraining {
    pub generations: usize,
    pub init: StudentInit,
    pub pseudo: PseudoLabelSpec,
}

impl Method for SelfTraining {
    fn settings(&self, budget: &Budget) -> serde_json::Value {
        let mut settings = staged_settings(&self.pseudo, budget, self.init, self.generations);
        settings.insert("generations".into(), self.generations.into());
        settings.into()
    }

    fn train(&self, ctx: &mut RunContext) -> anyhow::Result<UNet> {
        if ctx.data.unlabeled.is_empty() {
            anyhow::bail!("self-training needs unlabeled cases; at labeled ratio 1 there are none");
        }
        let everything = vec![("all".to_string(), ctx.data.unlabeled.clone())];
        run_staged(ctx, everything, self.generations, self.init, &self.pseudo)
    }
}
