//! The `Method` trait and the context a method trains in.
//!
//! A method is a short strategy: it asks the context for models, pools of examples and
//! predictions, and hands objectives to the one engine. The context owns everything shared by all
//! methods (data of the split, budget, seeded randomness, the ledger and stage diagnostics), so
//! methods cannot quietly differ in those.

use crate::data::Case;
use crate::model::{ModelSpec, UNet};
use crate::records::{LedgerEntry, StageRecord};
use crate::rng;
use crate::train::batch::{self, Example, Pool, Target};
use crate::train::engine::{Engine, Objective, OptimizerSpec, PhaseLog, Step};
use crate::train::infer;
use crate::train::loss;
use crate::train::metrics::{summarise, CaseScores, Confusion, Summary};
use burn::tensor::{Device, Tensor};
use std::sync::Arc;

/// A semi-supervised (or bound) method under comparison.
pub trait Method {
    /// Settings as used, for the record (JSON object); include values derived from the budget.
    fn settings(&self, budget: &Budget) -> serde_json::Value;

    /// Trains a model within `ctx`'s budget and returns it; the runner evaluates it.
    fn train(&self, ctx: &mut RunContext) -> anyhow::Result<UNet>;
}

/// The training budget shared by every method of an experiment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Optimiser steps per run, identical for every method.
    pub iterations: usize,
    pub batch_size: usize,
    /// Square training resolution (slices are resized to it).
    pub resolution: usize,
    /// Images per inference batch.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Flip augmentation of training batches.
    #[serde(default = "default_true")]
    pub augment: bool,
}

fn default_eval_batch() -> usize {
    32
}
fn default_true() -> bool {
    true
}

/// The cases of one run's split.
pub struct RunData<'a> {
    pub class_names: Vec<String>,
    pub labeled: Vec<&'a Case>,
    /// Unlabeled cases; their true labels are used only by the fully supervised bound and by
    /// diagnostics (pseudo-label Dice), never by a semi-supervised method's training.
    pub unlabeled: Vec<&'a Case>,
    pub validation: Vec<&'a Case>,
    pub test: Vec<&'a Case>,
}

/// Everything a method trains with.
pub struct RunContext<'a> {
    pub data: RunData<'a>,
    pub model_spec: ModelSpec,
    pub budget: Budget,
    pub seed: u64,
    /// Plain device for inference; training uses its autodiff twin.
    pub device: Device,
    pub engine: Engine,
    pub ledger: Vec<LedgerEntry>,
    pub stages: Vec<StageRecord>,
}

impl<'a> RunContext<'a> {
    /// A context whose engine budget is `budget.iterations` steps.
    pub fn new(data: RunData<'a>, model_spec: ModelSpec, budget: Budget, optimizer: OptimizerSpec, seed: u64, device: Device) -> Self {
        let engine = Engine::new(optimizer, budget.iterations, rng::stream(seed, "engine"));
        Self {
            data,
            model_spec,
            budget,
            seed,
            device,
            engine,
            ledger: Vec::new(),
            stages: Vec::new(),
        }
    }

    pub fn classes(&self) -> usize {
        self.data.class_names.len()
    }

    pub fn size(&self) -> usize {
        self.budget.resolution
    }

    /// The device training runs on (autodiff enabled).
    pub fn train_device(&self) -> Device {
        self.device.clone().autodiff()
    }

    /// A freshly initialised network (initialisation drawn from the run's seed).
    pub fn new_model(&self) -> UNet {
        let device = self.train_device();
        device.seed(rng::derived_seed(self.seed, "model-init"));
        self.model_spec.init(self.classes(), &device)
    }

    /// Slices of `cases` with their true labels.
    pub fn true_examples(cases: &[&Case]) -> Vec<Example> {
        cases
            .iter()
            .flat_map(|case| case.slices.iter())
            .map(|s| Example {
                image: Arc::new(s.image.clone()),
                target: Arc::new(Target::Hard(s.label.clone())),
            })
            .collect()
    }

    /// A seeded pool over `examples`.
    pub fn pool(&self, examples: Vec<Example>, purpose: &str) -> Pool {
        Pool::new(examples, self.seed, purpose)
    }

    /// Trains `model` for `steps` steps of `objective` through the shared engine.
    pub fn fit(&mut self, model: UNet, steps: usize, objective: &mut dyn Objective) -> (UNet, PhaseLog) {
        self.engine.train(model, steps, objective)
    }

    /// Class probabilities for every slice of every case (outer: case, inner: slice).
    pub fn predict(&self, model: &UNet, cases: &[&Case]) -> Vec<Vec<Vec<f32>>> {
        // One pass over all slices (batches may span cases), then regrouped by case.
        let images: Vec<&[f32]> = cases.iter().flat_map(|c| c.slices.iter().map(|s| s.image.as_slice())).collect();
        let mut probabilities = infer::probabilities(model, &images, self.size(), self.budget.eval_batch_size, &self.device).into_iter();
        cases
            .iter()
            .map(|case| probabilities.by_ref().take(case.slices.len()).collect())
            .collect()
    }

    /// Per-case scores and their summary on `cases`.
    pub fn evaluate(&self, model: &UNet, cases: &[&Case]) -> (Vec<CaseScores>, Summary) {
        let predictions = self.predict(model, cases);
        let scores: Vec<CaseScores> = cases
            .iter()
            .zip(&predictions)
            .map(|(case, probs)| {
                let labels: Vec<Vec<u8>> = probs.iter().map(|p| infer::argmax(p, self.classes())).collect();
                score_case(case, &labels, self.classes())
            })
            .collect();
        let summary = summarise(&scores);
        (scores, summary)
    }
}

/// Dice/IoU of predicted label slices against a case's true labels.
pub fn score_case(case: &Case, predicted: &[Vec<u8>], classes: usize) -> CaseScores {
    let mut confusion = Confusion::new(classes);
    for (slice, labels) in case.slices.iter().zip(predicted) {
        confusion.add(labels, &slice.label);
    }
    confusion.scores(&case.id)
}

/// The objective shared by supervised training and pseudo-label fine-tuning: each batch draws a
/// fixed number of examples from each pool (e.g. labeled : pseudo-labeled = 1 : 1) and is scored
/// with the supervised loss 0.5 * (CE + Dice).
pub struct MixedObjective {
    pools: Vec<(Pool, usize)>,
    classes: usize,
    size: usize,
    augment: bool,
    device: Device,
}

impl MixedObjective {
    /// `pools`: (pool, examples per batch). Empty pools are skipped.
    pub fn new(ctx: &RunContext, pools: Vec<(Pool, usize)>) -> Self {
        let pools = pools.into_iter().filter(|(p, n)| !p.is_empty() && *n > 0).collect();
        Self {
            pools,
            classes: ctx.classes(),
            size: ctx.size(),
            augment: ctx.budget.augment,
            device: ctx.train_device(),
        }
    }
}

impl Objective for MixedObjective {
    fn loss(&mut self, model: &UNet, _step: Step, rng: &mut rng::SeededRng) -> Tensor<1> {
        let examples: Vec<Example> = self.pools.iter_mut().flat_map(|(pool, n)| pool.draw(*n)).collect();
        let batch = batch::assemble(&examples, self.classes, self.size, self.augment, rng, &self.device);
        loss::segmentation(model.forward(batch.images), batch.targets, batch.weights)
    }
}

/// Trains a fresh model on the true labels of `cases` for `steps` steps: the supervised-only
/// method, the fully supervised bound, and the M0 of the pseudo-labeling methods.
pub fn train_supervised(ctx: &mut RunContext, cases: &[&Case], steps: usize) -> (UNet, PhaseLog) {
    let pool = ctx.pool(RunContext::true_examples(cases), "supervised");
    let mut objective = MixedObjective::new(ctx, vec![(pool, ctx.budget.batch_size)]);
    let model = ctx.new_model();
    ctx.fit(model, steps, &mut objective)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::DataFormat;
    use crate::data::phantom::PhantomSpec;
    use crate::data::splits::SplitSpec;
    use crate::data::DatasetSpec;

    #[test]
    fn trained_supervised_model_beats_an_untrained_one() {
        let dir = tempfile::tempdir().unwrap();
        let spec = DatasetSpec {
            name: "p".into(),
            format: DataFormat::Phantom,
            path: dir.path().join("p"),
            window: [-125.0, 275.0],
            axis: 2,
            phantom: Some(PhantomSpec {
                cases: 10,
                size: 48,
                slices: 8,
                seed: 4,
            }),
        };
        let data = spec.prepare(32, dir.path()).unwrap();
        let ids: Vec<String> = data.cases.iter().map(|c| c.id.clone()).collect();
        let split = SplitSpec::default().split("p", &ids, 1.0, 0).unwrap();
        let pick = |wanted: &[String]| data.cases.iter().filter(|c| wanted.contains(&c.id)).collect::<Vec<_>>();
        let run_data = RunData {
            class_names: data.classes.clone(),
            labeled: pick(&split.labeled),
            unlabeled: vec![],
            validation: pick(&split.validation),
            test: pick(&split.test),
        };
        let budget = Budget {
            iterations: 200,
            batch_size: 8,
            resolution: 32,
            eval_batch_size: 32,
            augment: true,
        };
        let model_spec = ModelSpec {
            channels: vec![8, 16, 32],
            dropout: vec![0.0, 0.1, 0.1],
        };
        let optimizer = OptimizerSpec {
            lr: 0.05,
            ..OptimizerSpec::default()
        };
        let mut ctx = RunContext::new(run_data, model_spec, budget, optimizer, 0, Device::flex());
        let untrained = ctx.evaluate(&ctx.new_model(), &ctx.data.test).1.dice_mean.unwrap_or(0.0);
        let labeled = ctx.data.labeled.clone();
        let (model, log) = train_supervised(&mut ctx, &labeled, 200);
        let trained = ctx.evaluate(&model, &ctx.data.test).1.dice_mean.unwrap();
        eprintln!(
            "untrained dice {untrained:.3}, trained dice {trained:.3}, loss {:.3} -> {:.3}",
            log.first_loss, log.last_loss
        );
        assert_eq!(ctx.engine.steps_taken(), 200);
        assert!(log.last_loss < log.first_loss, "loss did not fall: {log:?}");
        assert!(
            trained > untrained + 0.2 && trained > 0.3,
            "trained {trained:.3} vs untrained {untrained:.3}"
        );
    }
}
