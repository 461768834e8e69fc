//! The one training engine. Every method trains through `Engine::train`; a method only supplies
//! an [`Objective`] (what the loss of a step is, and what to do after it). Keeping a single loop
//! is what makes the budget comparable: the engine counts every optimiser step it takes.

use super::schedule::PolySchedule;
use crate::model::UNet;
use crate::rng::SeededRng;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// `[optimizer]` of an experiment file: SGD with momentum and weight decay, poly decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_poly_power")]
    pub poly_power: f64,
}

fn default_lr() -> f64 {
    0.01
}
fn default_momentum() -> f64 {
    0.9
}
fn default_weight_decay() -> f64 {
    1e-4
}
fn default_poly_power() -> f64 {
    0.9
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            momentum: default_momentum(),
            weight_decay: default_weight_decay(),
            poly_power: default_poly_power(),
        }
    }
}

/// Where a step stands: its global index in the run's budget and its learning rate.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Global step index across all phases of the run (0-based).
    pub global: usize,
    /// Step index within the current phase (0-based).
    pub local: usize,
    /// Steps in the current phase.
    pub phase_steps: usize,
    pub lr: f64,
}

/// What a method optimises: the loss of one step, and an optional hook after the update.
pub trait Objective {
    /// The scalar loss for this step, computed with `model` (on the autodiff device).
    fn loss(&mut self, model: &UNet, step: Step, rng: &mut SeededRng) -> Tensor<1>;

    /// Called after the optimiser updated `model` (mean teacher's EMA lives here).
    fn after_step(&mut self, _model: &UNet, _step: Step) {}
}

/// Loss values of one phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseLog {
    pub first_loss: f64,
    pub last_loss: f64,
    pub mean_loss: f64,
    pub steps: usize,
}

/// Runs optimiser steps under one poly schedule spanning the whole run.
pub struct Engine {
    spec: OptimizerSpec,
    schedule: PolySchedule,
    step: usize,
    rng: SeededRng,
}

impl Engine {
    /// An engine for a run of `total_steps` optimiser steps; `rng` drives augmentation and any
    /// randomness an objective draws.
    pub fn new(spec: OptimizerSpec, total_steps: usize, rng: SeededRng) -> Self {
        let schedule = PolySchedule {
            base_lr: spec.lr,
            power: spec.poly_power,
            total: total_steps,
        };
        Self {
            spec,
            schedule,
            step: 0,
            rng,
        }
    }

    /// Steps taken so far in this run.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Trains `model` for `steps` steps of `objective`. Each phase starts a fresh optimiser state
    /// (momentum), so a model restarted from an earlier checkpoint carries no stale momentum; the
    /// learning rate follows the run-wide schedule.
    pub fn train(&mut self, mut model: UNet, steps: usize, objective: &mut dyn Objective) -> (UNet, PhaseLog) {
        let mut optimizer = SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: self.spec.momentum,
                dampening: 0.0,
                nesterov: false,
            }))
            .with_weight_decay(Some(WeightDecayConfig {
                penalty: self.spec.weight_decay as f32,
            }))
            .init();
        let mut log = PhaseLog {
            steps,
            ..PhaseLog::default()
        };
        let mut total = 0.0;
        for local in 0..steps {
            let step = Step {
                global: self.step,
                local,
                phase_steps: steps,
                lr: self.schedule.lr(self.step),
            };
            let loss = objective.loss(&model, step, &mut self.rng);
            let value: f64 = loss.clone().into_scalar::<f32>() as f64;
            if local == 0 {
                log.first_loss = value;
            }
            log.last_loss = value;
            total += value;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(step.lr, model, grads);
            objective.after_step(&model, step);
            self.step += 1;
        }
        log.mean_loss = if steps > 0 { total / steps as f64 } else { 0.0 };
        (model, log)
    }
}
