//! Supervised-only lower bound: the labeled cases alone, for the whole budget.

use atso_harness::method::{train_supervised, Budget, Method, RunContext, Trained};

/// Trains on labeled cases only.
pub struct Supervised;

impl Method for Supervised {
    fn settings(&self, budget: &Budget) -> serde_json::Value {
        serde_json::json!({ "labeled_per_batch": budget.batch_size })
    }

    fn train(&self, ctx: &mut RunContext) -> anyhow::Result<Trained> {
        let labeled = ctx.data.labeled.clone();
        let (model, _) = train_supervised(ctx, &labeled, ctx.budget.iterations)?;
        Ok(model.into())
    }
}
