//! The `Method` trait and the context a method trains in.
//!
//! A method is a short strategy: it asks the context for models, pools of examples and
//! predictions, and hands objectives to the one engine. The context owns everything shared by all
//! methods (data of the split, budget, augmentation, seeded randomness, the ledger, stage
//! diagnostics and named diagnostics), so methods cannot quietly differ in those.

use crate::data::Case;
use crate::evaluate::{self, Evaluation, EvaluationSpec};
use crate::model::{ModelSpec, UNet};
use crate::overlap::Scoring;
use crate::records::{LedgerEntry, StageRecord};
use crate::rng;
use crate::train::augment::Augmentation;
use crate::train::batch::{self, BatchLayout, Example, Pool, Target};
use crate::train::engine::{Engine, Objective, OptimizerSpec, PhaseLog, Step, StepLoss, Validation};
use crate::train::infer;
use crate::train::loss;
use anyhow::Result;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A semi-supervised (or bound) method under comparison.
pub trait Method {
    /// Settings as used, for the record (JSON object); include values derived from the budget.
    fn settings(&self, budget: &Budget) -> serde_json::Value;

    /// Trains within `ctx`'s budget and returns the model to evaluate; the runner evaluates it.
    fn train(&self, ctx: &mut RunContext) -> Result<Trained>;
}

/// What a method hands back for evaluation: one network, or several whose softmax outputs are
/// averaged (a staged method's `final = "ensemble"`).
pub struct Trained {
    pub members: Vec<UNet>,
}

impl From<UNet> for Trained {
    fn from(model: UNet) -> Self {
        Self { members: vec![model] }
    }
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
}

fn default_eval_batch() -> usize {
    32
}

/// The cases of one run's split.
pub struct RunData<'a> {
    pub class_names: Vec<String>,
    /// Image channels (1 for CT/MRI, 3 for RGB).
    pub in_channels: usize,
    /// First class that is scored (1 when class 0 is background, 0 for driving scenes).
    pub first_class: usize,
    /// Label for pixels an augmentation brings in from outside the image.
    pub outside_label: u8,
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
    pub augmentation: Augmentation,
    pub evaluation: EvaluationSpec,
    pub seed: u64,
    /// Plain device for inference; training uses its autodiff twin.
    pub device: Device,
    pub engine: Engine,
    pub ledger: Vec<LedgerEntry>,
    pub stages: Vec<StageRecord>,
    /// Named per-run numbers a method wants a reader to see (e.g. mean teacher's mean
    /// consistency weight), recorded with the run.
    pub diagnostics: BTreeMap<String, f64>,
}

/// How a run is set up, apart from its data.
pub struct RunSetup {
    pub model_spec: ModelSpec,
    pub budget: Budget,
    pub optimizer: OptimizerSpec,
    pub augmentation: Augmentation,
    pub evaluation: EvaluationSpec,
    pub seed: u64,
}

impl<'a> RunContext<'a> {
    /// A context whose engine budget is `budget.iterations` steps.
    pub fn new(data: RunData<'a>, setup: RunSetup, device: Device) -> Self {
        let engine = Engine::new(setup.optimizer, setup.budget.iterations, setup.seed, device.clone().autodiff());
        Self {
            data,
            model_spec: setup.model_spec,
            budget: setup.budget,
            augmentation: setup.augmentation,
            evaluation: setup.evaluation,
            seed: setup.seed,
            device,
            engine,
            ledger: Vec::new(),
            stages: Vec::new(),
            diagnostics: BTreeMap::new(),
        }
    }

    pub fn classes(&self) -> usize {
        self.data.class_names.len()
    }

    pub fn size(&self) -> usize {
        self.budget.resolution
    }

    /// Shape of training batches.
    pub fn layout(&self) -> BatchLayout {
        BatchLayout {
            classes: self.classes(),
            size: self.size(),
            outside: self.data.outside_label,
        }
    }

    /// The device training runs on (autodiff enabled).
    pub fn train_device(&self) -> Device {
        self.device.clone().autodiff()
    }

    /// A freshly initialised network (initialisation drawn from the run's seed).
    pub fn new_model(&self) -> UNet {
        let device = self.train_device();
        device.seed(rng::derived_seed(self.seed, "model-init"));
        self.model_spec.init(self.data.in_channels, self.classes(), &device)
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

    /// Trains `model` for `steps` steps of `objective` through the shared engine, as one phase
    /// named `phase` in the run's training curve ("run", "M0", "stage 3"). With `[evaluation]
    /// validation_every`, the validation cases are scored every that many steps (Dice at the
    /// training resolution, into the curve); never used to pick a model.
    pub fn fit(&mut self, model: UNet, steps: usize, objective: &mut dyn Objective, phase: &str) -> Result<(UNet, PhaseLog)> {
        let Some(every) = self.evaluation.validation_every.filter(|_| !self.data.validation.is_empty()) else {
            return self.engine.train(model, steps, objective, phase, None);
        };
        let scoring = self.scoring();
        let (cases, size, batch, device) = (
            &self.data.validation,
            self.budget.resolution,
            self.budget.eval_batch_size,
            &self.device,
        );
        let mut validate = |model: &UNet| {
            let predictions = infer::case_probabilities(std::slice::from_ref(model), cases, size, batch, device);
            evaluate::dice_at_resolution(cases, &predictions, &scoring).mean
        };
        self.engine.train(
            model,
            steps,
            objective,
            phase,
            Some(Validation {
                every,
                score: &mut validate,
            }),
        )
    }

    /// Class probabilities for every slice of every case (outer: case, inner: slice), averaged
    /// over `models` (one model, or an ensemble).
    pub fn predict(&self, models: &[UNet], cases: &[&Case]) -> Vec<Vec<Vec<f32>>> {
        infer::case_probabilities(models, cases, self.size(), self.budget.eval_batch_size, &self.device)
    }

    /// Most probable class per pixel for every slice of `cases`, flattened over cases.
    pub fn hard_predictions(&self, model: &UNet, cases: &[&Case]) -> Vec<Vec<u8>> {
        self.predict(std::slice::from_ref(model), cases)
            .into_iter()
            .flatten()
            .map(|p| infer::argmax(&p, self.classes()))
            .collect()
    }

    /// Which classes are scored and how empty ones count.
    pub fn scoring(&self) -> Scoring {
        Scoring {
            classes: self.classes(),
            first_class: self.data.first_class,
            empty: self.evaluation.empty_classes,
        }
    }

    /// Scores `trained` on `cases` (see `evaluate`): at the training resolution and on each
    /// case's native grid.
    pub fn evaluate(&self, trained: &Trained, cases: &[&Case]) -> Result<Evaluation> {
        self.evaluate_into(trained, cases, None)
    }

    /// Like [`RunContext::evaluate`], also writing each case's native prediction into `save_to`.
    pub fn evaluate_into(&self, trained: &Trained, cases: &[&Case], save_to: Option<&std::path::Path>) -> Result<Evaluation> {
        let predictions = self.predict(&trained.members, cases);
        evaluate::score(cases, &predictions, &self.scoring(), &self.evaluation, save_to)
    }

    /// Names of the scored classes, in the order of per-class scores.
    pub fn scored_class_names(&self) -> Vec<String> {
        self.data.class_names.iter().skip(self.data.first_class).cloned().collect()
    }

    /// Dice per class and its mean on the validation cases at the training resolution (cheap;
    /// used after every stage).
    pub fn validation_dice(&self, model: &UNet) -> evaluate::LabelDice {
        let cases = &self.data.validation;
        let predictions = self.predict(std::slice::from_ref(model), cases);
        evaluate::dice_at_resolution(cases, &predictions, &self.scoring())
    }
}

/// The objective shared by supervised training and pseudo-label fine-tuning: each batch draws a
/// fixed number of examples from each pool (e.g. labeled : pseudo-labeled = 1 : 1) and is scored
/// with the supervised loss 0.5 * (CE + Dice) over the whole batch. With two or more pools, a
/// recorded step also reports each pool's part of the batch scored alone, under the pool's name
/// ("supervised", "pseudo_label"): the Dice term does not add up over parts of a batch, so these
/// show what each part contributes, not a split of the total.
///
/// An optional probe measures, at the phase's first step and from that step's own forward pass
/// (train mode, same images, same augmentation), the loss of one pool's part of the batch against
/// its own targets ("trained") and against alternative targets aligned with the pool's examples.
/// The probe's losses stay on the device until asked for ([`MixedObjective::probe_losses`],
/// after the phase), so the first step waits for nothing either.
pub struct MixedObjective {
    pools: Vec<(&'static str, Pool, usize)>,
    layout: BatchLayout,
    augmentation: Augmentation,
    device: Device,
    probe: Option<Probe>,
}

/// The targets a first-step probe loss is measured against (written as "trained", "self" and
/// "cross" in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeTargets {
    /// The targets the phase trains on.
    Trained,
    /// The student's own predictions before the phase.
    #[serde(rename = "self")]
    OwnPredictions,
    /// The latest labels of the images made by a model that never trained on them.
    Cross,
}

struct Probe {
    pool: usize,
    alternatives: Vec<(ProbeTargets, Vec<Arc<Target>>)>,
    /// Losses measured and not read yet.
    measured: Vec<(ProbeTargets, Tensor<1>)>,
    /// Losses read (or restored from a checkpoint).
    losses: BTreeMap<ProbeTargets, f64>,
}

impl Probe {
    /// Every loss by name, reading the measured ones from the device.
    fn losses(&self) -> Result<BTreeMap<ProbeTargets, f64>> {
        let mut losses = self.losses.clone();
        if self.measured.is_empty() {
            return Ok(losses);
        }
        let transaction = self
            .measured
            .iter()
            .fold(burn::tensor::Transaction::default(), |t, (_, loss)| t.register(loss.clone()));
        let data = transaction
            .try_execute()
            .map_err(|err| anyhow::anyhow!("reading the first-step probe's losses: {err:?}"))?;
        for ((targets, _), value) in self.measured.iter().zip(data) {
            losses.insert(*targets, value.iter::<f32>().next().map_or(f64::NAN, f64::from));
        }
        Ok(losses)
    }
}

impl MixedObjective {
    /// `pools`: (name of its part of the loss, pool, examples per batch). Empty pools are
    /// skipped.
    pub fn new(ctx: &RunContext, pools: Vec<(&'static str, Pool, usize)>) -> Self {
        let pools = pools.into_iter().filter(|(_, p, n)| !p.is_empty() && *n > 0).collect();
        Self {
            pools,
            layout: ctx.layout(),
            augmentation: ctx.augmentation.clone(),
            device: ctx.train_device(),
            probe: None,
        }
    }

    /// Measures the first step's loss on pool `pool` (index among the pools given to `new`)
    /// against its own targets and against each alternative (one target per example of that
    /// pool, in the pool's order).
    pub fn with_first_step_probe(mut self, pool: usize, alternatives: Vec<(ProbeTargets, Vec<Arc<Target>>)>) -> Self {
        self.probe = Some(Probe {
            pool,
            alternatives,
            measured: Vec::new(),
            losses: BTreeMap::new(),
        });
        self
    }

    /// The probe's losses (its own targets and each alternative); empty without a probe or
    /// before the first step.
    pub fn probe_losses(&self) -> Result<BTreeMap<ProbeTargets, f64>> {
        self.probe.as_ref().map_or(Ok(BTreeMap::new()), Probe::losses)
    }
}

impl Objective for MixedObjective {
    fn loss(&mut self, model: &UNet, step: Step, rng: &mut rng::SeededRng) -> StepLoss {
        let drawn: Vec<Vec<usize>> = self.pools.iter_mut().map(|(_, pool, n)| pool.draw_indices(*n)).collect();
        let examples: Vec<Example> = drawn
            .iter()
            .zip(&self.pools)
            .flat_map(|(indices, (_, pool, _))| indices.iter().map(|&i| pool.get(i).clone()))
            .collect();
        let batch = batch::assemble(&examples, self.layout, &self.augmentation, rng, &self.device);
        let logits = model.forward(batch.images);
        if let Some(probe) = self.probe.as_mut().filter(|p| step.local == 0 && p.pool < drawn.len()) {
            let start: usize = drawn[..probe.pool].iter().map(Vec::len).sum();
            let indices = &drawn[probe.pool];
            let part = logits.clone().detach().narrow(0, start, indices.len());
            let transforms = &batch.transforms[start..start + indices.len()];
            let own: Vec<Example> = examples[start..start + indices.len()].to_vec();
            let mut measure = |against: ProbeTargets, chosen: Vec<Example>| {
                let targets = batch::assemble_with(&chosen, transforms, self.layout, &self.device);
                let value = loss::segmentation(part.clone(), targets.targets, targets.weights);
                probe.measured.push((against, value));
            };
            measure(ProbeTargets::Trained, own.clone());
            for (against, targets) in &probe.alternatives {
                let chosen = own
                    .iter()
                    .zip(indices)
                    .map(|(e, &i)| Example {
                        image: e.image.clone(),
                        target: targets[i].clone(),
                    })
                    .collect();
                measure(*against, chosen);
            }
        }
        let parts: Vec<(&'static str, Tensor<1>)> = if step.recorded && self.pools.len() > 1 {
            let mut start = 0;
            drawn
                .iter()
                .zip(&self.pools)
                .map(|(indices, (name, _, _))| {
                    let part = |t: &Tensor<4>| t.clone().detach().narrow(0, start, indices.len());
                    let value = loss::segmentation(part(&logits), part(&batch.targets), part(&batch.weights));
                    start += indices.len();
                    (*name, value)
                })
                .collect()
        } else {
            Vec::new()
        };
        let total = loss::segmentation(logits, batch.targets, batch.weights);
        parts
            .into_iter()
            .fold(StepLoss::new(total), |out, (name, value)| out.part(name, value))
    }

    fn save_state(&self) -> Result<Vec<u8>> {
        let pools: Vec<_> = self.pools.iter().map(|(_, p, _)| p.state()).collect();
        let probe = self.probe.as_ref().map(Probe::losses).transpose()?;
        Ok(serde_json::to_vec(&(pools, probe))?)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let (pools, probe): (Vec<crate::train::batch::PoolState>, Option<BTreeMap<ProbeTargets, f64>>) = serde_json::from_slice(state)?;
        for ((_, pool, _), saved) in self.pools.iter_mut().zip(&pools) {
            pool.restore(saved)?;
        }
        if let (Some(p), Some(losses)) = (self.probe.as_mut(), probe) {
            p.losses = losses;
            p.measured.clear();
        }
        Ok(())
    }
}

/// Trains a fresh model on the true labels of `cases` for `steps` steps, as the phase named
/// `phase`: the supervised-only method, the fully supervised bound ("run"), and the M0 of the
/// pseudo-labeling methods ("M0").
pub fn train_supervised(ctx: &mut RunContext, cases: &[&Case], steps: usize, phase: &str) -> Result<(UNet, PhaseLog)> {
    let pool = ctx.pool(RunContext::true_examples(cases), "supervised");
    let mut objective = MixedObjective::new(ctx, vec![("supervised", pool, ctx.budget.batch_size)]);
    let model = ctx.new_model();
    ctx.fit(model, steps, &mut objective, phase)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::dataset::Format;
    use crate::data::phantom::{PhantomFormat, PhantomSpec};
    use crate::data::splits::SplitSpec;
    use crate::data::{DatasetSpec, PreparedDataset};

    /// A small prepared phantom for unit tests of training code.
    pub(crate) fn phantom(dir: &std::path::Path, cases: usize) -> PreparedDataset {
        let spec = DatasetSpec {
            name: "p".into(),
            format: Format::Phantom(PhantomFormat {
                phantom: Some(PhantomSpec {
                    cases,
                    size: 48,
                    slices: 8,
                    seed: 4,
                    ..PhantomSpec::default()
                }),
            }),
            path: dir.join("p"),
            ..DatasetSpec::default()
        };
        spec.prepare(32, dir).unwrap()
    }

    /// See `backend::serial_random_stream`.
    pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
        crate::backend::serial_random_stream()
    }

    /// Run data with `cases` as the labeled set and nothing else (no unlabeled, validation or
    /// test cases), for tests of training alone.
    fn labeled_only<'a>(data: &'a PreparedDataset, cases: &[&'a Case]) -> RunData<'a> {
        RunData {
            class_names: data.classes.clone(),
            in_channels: 1,
            first_class: 1,
            outside_label: 0,
            labeled: cases.to_vec(),
            unlabeled: vec![],
            validation: vec![],
            test: vec![],
        }
    }

    pub(crate) fn setup(iterations: usize) -> RunSetup {
        RunSetup {
            model_spec: ModelSpec {
                channels: vec![8, 16, 32],
                dropout: vec![0.0, 0.1, 0.1],
            },
            budget: Budget {
                iterations,
                batch_size: 8,
                resolution: 32,
                eval_batch_size: 32,
            },
            optimizer: OptimizerSpec {
                lr: 0.05,
                ..OptimizerSpec::default()
            },
            augmentation: Augmentation::default(),
            evaluation: EvaluationSpec::default(),
            seed: 0,
        }
    }

    /// Checkpoints written before the probe's targets were an enum keep loading: the same keys.
    #[test]
    fn probe_targets_keep_their_checkpoint_names() {
        let losses = BTreeMap::from([
            (ProbeTargets::Trained, 1.0),
            (ProbeTargets::OwnPredictions, 2.0),
            (ProbeTargets::Cross, 3.0),
        ]);
        let text = serde_json::to_string(&losses).unwrap();
        assert_eq!(text, r#"{"trained":1.0,"self":2.0,"cross":3.0}"#);
        let old: BTreeMap<ProbeTargets, f64> = serde_json::from_str(r#"{"cross":3.0,"self":2.0,"trained":1.0}"#).unwrap();
        assert_eq!(old, losses);
    }

    #[test]
    fn trained_supervised_model_beats_an_untrained_one() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let data = phantom(dir.path(), 10);
        let ids: Vec<String> = data.cases.iter().map(|c| c.id.clone()).collect();
        let split = SplitSpec::default().split("p", &ids, None, 1.0, 0).unwrap();
        let pick = |wanted: &[String]| data.cases.iter().filter(|c| wanted.contains(&c.id)).collect::<Vec<_>>();
        let run_data = RunData {
            class_names: data.classes.clone(),
            in_channels: 1,
            first_class: 1,
            outside_label: 0,
            labeled: pick(&split.labeled),
            unlabeled: vec![],
            validation: pick(&split.validation),
            test: pick(&split.test),
        };
        let mut ctx = RunContext::new(run_data, setup(400), Device::flex());
        let untrained = ctx
            .evaluate(&ctx.new_model().into(), &ctx.data.test)
            .unwrap()
            .summary
            .mean("dice")
            .unwrap_or(0.0);
        let labeled = ctx.data.labeled.clone();
        let (model, log) = train_supervised(&mut ctx, &labeled, 400, "run").unwrap();
        let trained = ctx.evaluate(&model.into(), &ctx.data.test).unwrap().summary.mean("dice").unwrap();
        eprintln!(
            "untrained dice {untrained:.3}, trained dice {trained:.3}, loss {:.3} -> {:.3}",
            log.first_loss, log.last_loss
        );
        assert_eq!(ctx.engine.steps_taken(), 400);
        assert!(log.last_loss < log.first_loss, "loss did not fall: {log:?}");
        assert!(
            trained > untrained + 0.2 && trained > 0.3,
            "trained {trained:.3} vs untrained {untrained:.3}"
        );
    }

    /// `atso bench --phases` times steps through the engine; the timing waits for the device
    /// between parts but must not change what is trained.
    #[test]
    fn timing_steps_records_their_parts_and_changes_nothing() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let data = phantom(dir.path(), 4);
        let cases: Vec<&Case> = data.cases.iter().collect();
        let train = |timed: bool| {
            let mut ctx = RunContext::new(labeled_only(&data, &cases), setup(3), Device::flex());
            assert_eq!(ctx.engine.last_step_times(), None);
            if timed {
                ctx.engine.time_steps();
            }
            let clock = std::time::Instant::now();
            let (model, log) = train_supervised(&mut ctx, &cases, 3, "run").unwrap();
            let elapsed = clock.elapsed();
            let probe = vec![0.5f32; 32 * 32];
            let output = infer::probabilities(std::slice::from_ref(&model), &[probe.as_slice()], 32, 1, &ctx.device);
            (log, output, ctx.engine.last_step_times(), elapsed)
        };
        let (untimed_log, untimed_output, none, _) = train(false);
        let (timed_log, timed_output, times, elapsed) = train(true);
        assert_eq!(untimed_log, timed_log, "timing changed the losses");
        assert_eq!(untimed_output, timed_output, "timing changed the trained model");
        assert_eq!(none, None);
        let times = times.expect("the last step's times");
        let parts = [times.loss, times.backward, times.update];
        assert!(parts.iter().all(|p| !p.is_zero()), "{times:?}");
        assert!(parts.iter().sum::<std::time::Duration>() <= elapsed, "{times:?} in {elapsed:?}");
    }

    /// The engine reads losses from the device once per progress interval instead of once per
    /// step; deferring the read must not change a bit of what is trained or of the losses.
    #[test]
    fn reading_losses_in_batches_changes_nothing_trained() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let data = phantom(dir.path(), 4);
        let cases: Vec<&Case> = data.cases.iter().collect();
        let train = |every: usize| {
            let mut ctx = RunContext::new(labeled_only(&data, &cases), setup(12), Device::flex());
            ctx.engine.read_losses_every(every);
            let (model, log) = train_supervised(&mut ctx, &cases, 12, "run").unwrap();
            let probe = vec![0.5f32; 32 * 32];
            let output = infer::probabilities(std::slice::from_ref(&model), &[probe.as_slice()], 32, 1, &ctx.device);
            let curve: Vec<(usize, u64)> = ctx.engine.curve().iter().map(|p| (p.step, p.loss.to_bits())).collect();
            (log, output, curve)
        };
        let (each_step, each_output, each_curve) = train(1);
        let (batched, batched_output, batched_curve) = train(5);
        assert_eq!(each_step, batched, "the phase's loss log");
        assert_eq!(each_output, batched_output, "the trained model");
        assert_eq!(each_curve.len(), 12, "a point per step when reading every step");
        // Reading every 5 steps records steps 5, 10 and the phase's last, with the same bits.
        let expected: Vec<(usize, u64)> = each_curve.iter().filter(|(s, _)| [5, 10, 12].contains(s)).copied().collect();
        assert_eq!(batched_curve, expected);
    }

    /// Scoring the validation cases during training puts their Dice into the curve at the
    /// steps asked for and changes nothing trained (inference draws no random numbers and the
    /// engine reseeds the device before every step).
    #[test]
    fn validation_during_training_lands_in_the_curve_and_changes_nothing() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let data = phantom(dir.path(), 6);
        let (train_cases, validation) = data.cases.split_at(4);
        let cases: Vec<&Case> = train_cases.iter().collect();
        let train = |every: Option<usize>| {
            let mut run_data = labeled_only(&data, &cases);
            run_data.validation = validation.iter().collect();
            let mut setup = setup(12);
            setup.evaluation.validation_every = every;
            let mut ctx = RunContext::new(run_data, setup, Device::flex());
            ctx.engine.read_losses_every(3);
            let (model, log) = train_supervised(&mut ctx, &cases, 12, "run").unwrap();
            let probe = vec![0.5f32; 32 * 32];
            let output = infer::probabilities(std::slice::from_ref(&model), &[probe.as_slice()], 32, 1, &ctx.device);
            let validated: Vec<(usize, bool)> = ctx
                .engine
                .curve()
                .iter()
                .map(|p| (p.step, p.validation_dice.is_some_and(|d| (0.0..=1.0).contains(&d))))
                .collect();
            (log, output, validated)
        };
        let (plain_log, plain_output, plain_curve) = train(None);
        let (log, output, curve) = train(Some(4));
        assert_eq!(plain_log, log, "the phase's losses");
        assert_eq!(plain_output, output, "the trained model");
        assert!(plain_curve.iter().all(|(_, v)| !v), "no validation unless asked");
        // Points every 3 steps, plus steps 4 and 8 for validation (12 is both).
        assert_eq!(
            curve,
            [(3, false), (4, true), (6, false), (8, true), (9, false), (12, true)],
            "validation Dice at every 4th step, in the curve"
        );
    }

    /// A non-finite loss is found at the next read, and the error names the step it happened
    /// at, not the step of the read.
    #[test]
    fn a_non_finite_loss_is_named_at_its_own_step_whenever_it_is_read() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let data = phantom(dir.path(), 6);
        let cases: Vec<&Case> = data.cases.iter().collect();
        let fail = |every: usize| {
            let mut setup = setup(30);
            setup.optimizer.lr = 1e12;
            let mut ctx = RunContext::new(labeled_only(&data, &cases), setup, Device::flex());
            ctx.engine.read_losses_every(every);
            format!("{:#}", train_supervised(&mut ctx, &cases, 30, "run").unwrap_err())
        };
        let at_once = fail(1);
        eprintln!("{at_once}");
        assert!(at_once.contains("non-finite loss") && at_once.contains("at step"), "{at_once}");
        assert_eq!(fail(25), at_once, "read 25 steps apart, the same step is named");
    }

    #[test]
    fn a_huge_learning_rate_fails_with_the_step_named() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let data = phantom(dir.path(), 6);
        let cases: Vec<&Case> = data.cases.iter().collect();
        let run_data = labeled_only(&data, &cases);
        let mut setup = setup(30);
        setup.optimizer.lr = 1e12;
        let mut ctx = RunContext::new(run_data, setup, Device::flex());
        let message = format!("{:#}", train_supervised(&mut ctx, &cases, 30, "run").unwrap_err());
        assert!(message.contains("non-finite loss") && message.contains("at step"), "{message}");
    }
}
