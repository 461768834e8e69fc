//! Naive synchronous self-training: the current model relabels all unlabeled data at once and is
//! fine-tuned on it, generation after generation.
//!
//! It is the staged loop with a single subset holding every unlabeled case (K = 1), so the model
//! that relabels the set is the one that was just fine-tuned on it. Same supervised model M0,
//! same number of stages and steps as ATSO's defaults (generations = subsets x rounds = 4). Its
//! student continues from the current model by default (`init = teacher`, the naive form);
//! `init = base` is the control that applies ATSO's clause (i) without the partition.

use atso_harness::method::{Budget, Method, RunContext, Trained};
use atso_harness::staged::{run_staged, staged_settings, StagedSpec};

/// Synchronous self-training as configured in an experiment file.
#[derive(Debug, Clone)]
pub struct SelfTraining {
    pub staged: StagedSpec,
}

impl Method for SelfTraining {
    fn settings(&self, budget: &Budget) -> serde_json::Value {
        let mut settings = staged_settings(&self.staged, 1, budget);
        settings.insert("generations".into(), self.staged.rounds.into());
        settings.into()
    }

    fn train(&self, ctx: &mut RunContext) -> anyhow::Result<Trained> {
        if ctx.data.unlabeled.is_empty() {
            anyhow::bail!("self-training needs unlabeled cases; at labeled ratio 1 there are none");
        }
        let everything = vec![("all".to_string(), ctx.data.unlabeled.clone())];
        run_staged(ctx, everything, &self.staged)
    }
}
