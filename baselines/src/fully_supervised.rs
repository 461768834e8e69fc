//! Fully supervised upper bound: true labels on every training case (labeled and unlabeled),
//! same budget as every other method.

use atso_harness::method::{train_supervised, Budget, Method, RunContext, Trained};

/// Trains on the true labels of all training cases.
pub struct FullySupervised;

impl Method for FullySupervised {
    fn settings(&self, budget: &Budget) -> serde_json::Value {
        serde_json::json!({ "labeled_per_batch": budget.batch_size, "uses_unlabeled_truth": true })
    }

    fn train(&self, ctx: &mut RunContext) -> anyhow::Result<Trained> {
        let all: Vec<_> = ctx.data.labeled.iter().chain(&ctx.data.unlabeled).copied().collect();
        let (model, _) = train_supervised(ctx, &all, ctx.budget.iterations, "run")?;
        Ok(model.into())
    }
}
