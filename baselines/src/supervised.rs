//! Supervised-only lower bound: the labeled cases alone, for the whole budget, or for a fraction
//! of it as a control (`budget_fraction`: a staged method's M0 trained on its own).

use atso_harness::method::{train_supervised, Budget, Method, RunContext, Trained};
use atso_harness::staged::supervised_steps;

/// Trains on labeled cases only.
pub struct Supervised {
    /// The fraction of the budget trained (None: all of it).
    pub budget_fraction: Option<f64>,
}

impl Supervised {
    fn steps(&self, budget: &Budget) -> usize {
        self.budget_fraction
            .map_or(budget.iterations, |fraction| supervised_steps(fraction, budget.iterations))
    }
}

impl Method for Supervised {
    fn settings(&self, budget: &Budget) -> serde_json::Value {
        let mut settings = serde_json::json!({ "labeled_per_batch": budget.batch_size });
        if let Some(fraction) = self.budget_fraction {
            settings["budget_fraction"] = fraction.into();
            settings["steps"] = self.steps(budget).into();
        }
        settings
    }

    fn train(&self, ctx: &mut RunContext) -> anyhow::Result<Trained> {
        let labeled = ctx.data.labeled.clone();
        let steps = self.steps(&ctx.budget);
        let (model, _) = train_supervised(ctx, &labeled, steps, "run")?;
        Ok(model.into())
    }
}
