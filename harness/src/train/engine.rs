//! The one training engine. Every method trains through `Engine::train`; a method only supplies
//! an [`Objective`] (what the loss of a step is, and what to do after it). Keeping a single loop
//! is what makes the budget comparable: the engine counts every optimiser step it takes.
//!
//! Each call of `train` is a phase (M0, a fine-tuning stage, a whole single-phase method). A
//! phase starts a fresh optimiser state and follows the learning-rate schedule of `[optimizer]`.
//! Before every step the device's random stream (dropout masks) is reseeded from the run seed
//! and the global step, so any step's randomness can be recreated on its own (a resumed run
//! continues exactly as an uninterrupted one would) and no consumer of that stream can shift
//! what later steps draw.
//!
//! Nothing inside a step waits for the device. An objective hands back its loss (and the parts a
//! reader wants to see) as device tensors; the engine reads them in one transaction at every
//! progress interval, before a checkpoint and at the end of each phase. On a GPU a read is a
//! synchronisation that also cuts the queue of fused kernels, so one read per interval instead of
//! one per step lets the device run ahead of the host. The values read feed the phase's loss log,
//! the progress reports, the objective's own tallies ([`Objective::observe`]) and the run's
//! training curve (`train::curves`). A non-finite loss stops the run at the next read with an
//! error naming the step it happened at, so a diverged run is recorded as failed rather than as a
//! model with Dice ~0; the steps taken between the two are thrown away with the run.

use super::curves::{self, CurvePoint};
use super::schedule::{PolySchedule, ScheduleScope};
use crate::checkpoint::{Checkpoints, Position, RngState, Saved};
use crate::model::UNet;
use crate::rng::{self, SeededRng};
use anyhow::{bail, Result};
use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor, Transaction};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

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
    /// Poly decay per phase (default) or over the whole run.
    #[serde(default)]
    pub schedule: ScheduleScope,
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

impl OptimizerSpec {
    /// Checks the values make sense for SGD with poly decay (each error names its key).
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("optimizer.lr must be a finite positive number, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("optimizer.momentum must be in [0, 1), got {}", self.momentum);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!("optimizer.weight_decay must be finite and not negative, got {}", self.weight_decay);
        }
        if !(self.poly_power.is_finite() && self.poly_power >= 0.0) {
            bail!("optimizer.poly_power must be finite and not negative, got {}", self.poly_power);
        }
        Ok(())
    }
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            momentum: default_momentum(),
            weight_decay: default_weight_decay(),
            poly_power: default_poly_power(),
            schedule: ScheduleScope::default(),
        }
    }
}

/// Where a step stands: its global index in the run's budget and its learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Global step index across all phases of the run (0-based).
    pub global: usize,
    /// Step index within the current phase (0-based).
    pub local: usize,
    /// Steps in the current phase.
    pub phase_steps: usize,
    pub lr: f64,
    /// Whether this step's values go into the run's training curve: an objective computes the
    /// parts of its loss ([`StepLoss::part`]) only on such steps, so the other steps launch no
    /// extra work for them.
    pub recorded: bool,
}

/// The loss of one step as an objective hands it over: the scalar to optimise and, on recorded
/// steps, the named parts a reader wants to see, all still on the device (the engine reads them
/// in batches), plus numbers the step already knows on the host (a consistency weight).
pub struct StepLoss {
    pub total: Tensor<1>,
    parts: Vec<(&'static str, Tensor<1>)>,
    host: Vec<(&'static str, f64)>,
}

impl StepLoss {
    /// A loss with no named parts.
    pub fn new(total: Tensor<1>) -> Self {
        Self {
            total,
            parts: Vec::new(),
            host: Vec::new(),
        }
    }

    /// Adds a named part computed on the device (detached: it only gets read).
    pub fn part(mut self, name: &'static str, value: Tensor<1>) -> Self {
        self.parts.push((name, value.detach()));
        self
    }

    /// Adds a named number known on the host.
    pub fn host(mut self, name: &'static str, value: f64) -> Self {
        self.host.push((name, value));
        self
    }
}

impl From<Tensor<1>> for StepLoss {
    fn from(total: Tensor<1>) -> Self {
        Self::new(total)
    }
}

/// One step's values once read from the device.
#[derive(Debug, Clone, PartialEq)]
pub struct StepValues {
    pub step: Step,
    pub loss: f64,
    /// The parts and host numbers of [`StepLoss`], in the order they were added.
    pub parts: Vec<(&'static str, f64)>,
}

impl StepValues {
    /// The value of a named part, if the step reported it.
    pub fn part(&self, name: &str) -> Option<f64> {
        self.parts.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// Scoring the model during a phase: every `every` steps of the run, `score` gives the mean
/// validation Dice of the model as it stands, which goes into the curve point of that step.
pub struct Validation<'v> {
    pub every: usize,
    pub score: &'v mut dyn FnMut(&UNet) -> Option<f64>,
}

/// What a method optimises: the loss of one step, and optional hooks after the update and once
/// the step's values are read.
pub trait Objective {
    /// The scalar loss for this step, computed with `model` (on the autodiff device), with its
    /// parts on recorded steps ([`Step::recorded`]).
    fn loss(&mut self, model: &UNet, step: Step, rng: &mut SeededRng) -> StepLoss;

    /// Called after the optimiser updated `model` (mean teacher's EMA lives here).
    fn after_step(&mut self, _model: &UNet, _step: Step) {}

    /// Called with every step's values, in step order, when the engine reads them (at the
    /// progress interval, before a checkpoint and at the phase's end): tallies an objective
    /// reports live here, so reading them costs the step no wait.
    fn observe(&mut self, _values: &StepValues) {}

    /// Everything the objective carries from step to step (sampling positions, a teacher, sums
    /// it reports), for checkpoints.
    fn save_state(&self) -> Result<Vec<u8>>;

    /// Restores what [`Objective::save_state`] saved.
    fn load_state(&mut self, state: &[u8]) -> Result<()>;
}

/// Loss values and learning rates of one phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseLog {
    pub first_loss: f64,
    pub last_loss: f64,
    pub mean_loss: f64,
    pub steps: usize,
    pub lr_first: f64,
    pub lr_last: f64,
}

/// What the engine reports after each step (for progress lines).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Steps taken in the run so far (1-based after the step).
    pub done: usize,
    pub total: usize,
    pub loss: f64,
    pub lr: f64,
}

/// Wall time of one training step's three parts, each ended by waiting for the device (see
/// [`Engine::time_steps`]). On a GPU a part's time then includes its kernels, not only their
/// launch; on the CPU backend the wait is free.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimes {
    /// Reseeding, sampling the batch and the forward pass to the loss.
    pub loss: Duration,
    /// The backward pass and collecting the gradients per parameter.
    pub backward: Duration,
    /// The optimiser's update and the objective's after-step hook (mean teacher's EMA).
    pub update: Duration,
}

/// The clock behind [`StepTimes`]: it starts, and each lap ends, once the device has finished
/// all the work queued so far, so no part is charged with an earlier one's kernels.
struct Laps<'a> {
    device: &'a Device,
    last: Instant,
}

impl<'a> Laps<'a> {
    fn start(device: &'a Device) -> Result<Self> {
        wait_for(device)?;
        Ok(Self {
            device,
            last: Instant::now(),
        })
    }

    fn lap(&mut self) -> Result<Duration> {
        wait_for(self.device)?;
        let now = Instant::now();
        let lap = now - self.last;
        self.last = now;
        Ok(lap)
    }
}

fn wait_for(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|err| anyhow::anyhow!("waiting for the device to time a training step: {err:?}"))
}

/// Runs optimiser steps; see the module doc for what a phase resets.
pub struct Engine {
    spec: OptimizerSpec,
    total_steps: usize,
    step: usize,
    phase: usize,
    seed: u64,
    rng: SeededRng,
    device: Device,
    on_step: Option<Box<dyn FnMut(StepReport) + Send>>,
    checkpoints: Option<Checkpoints>,
    /// The step a resumed run continued from, if any.
    resumed_at: Option<usize>,
    /// Whether steps are timed ([`Engine::time_steps`]).
    timing: bool,
    /// The last timed step's times.
    step_times: Option<StepTimes>,
    /// Steps between reads of the losses (and curve points).
    every: usize,
    /// Steps taken whose losses have not been read yet.
    pending: Vec<Pending>,
    /// The run's training curve so far.
    curve: Vec<CurvePoint>,
    /// The name of the phase being trained (for the curve).
    phase_name: String,
    /// When the engine was made (the curve's wall-time axis).
    started: Instant,
}

/// A step whose loss is still on the device.
struct Pending {
    step: Step,
    total: Tensor<1>,
    parts: Vec<(&'static str, Tensor<1>)>,
    host: Vec<(&'static str, f64)>,
}

/// The loss sums of the phase being trained, filled as steps are read.
#[derive(Default)]
struct PhaseSums {
    log: PhaseLog,
    total: f64,
}

impl Engine {
    /// An engine for a run of `total_steps` optimiser steps under run seed `seed` on `device`;
    /// augmentation and any randomness an objective draws come from the run's "engine" stream.
    pub fn new(spec: OptimizerSpec, total_steps: usize, seed: u64, device: Device) -> Self {
        Self {
            spec,
            total_steps,
            step: 0,
            phase: 0,
            seed,
            rng: rng::stream(seed, "engine"),
            device,
            on_step: None,
            checkpoints: None,
            resumed_at: None,
            timing: false,
            step_times: None,
            every: curves::progress_every(total_steps),
            pending: Vec::new(),
            curve: Vec::new(),
            phase_name: String::new(),
            started: Instant::now(),
        }
    }

    /// The run's training curve so far (see `train::curves`).
    pub fn curve(&self) -> &[CurvePoint] {
        &self.curve
    }

    /// Takes the run's training curve out of the engine.
    pub fn take_curve(&mut self) -> Vec<CurvePoint> {
        std::mem::take(&mut self.curve)
    }

    /// Sets the validation Dice of the curve's last point (the step just trained).
    fn note_validation(&mut self, dice: Option<f64>) {
        if let Some(point) = self.curve.last_mut() {
            point.validation_dice = dice;
        }
    }

    /// Steps between reads of the losses, progress reports and curve points.
    pub fn progress_every(&self) -> usize {
        self.every
    }

    /// Reads the losses (and records curve points, reports progress) every `steps` steps
    /// instead of every hundredth of the budget.
    pub fn read_losses_every(&mut self, steps: usize) {
        self.every = steps.max(1);
    }

    /// Times every later step's parts ([`StepTimes`], read with [`Engine::last_step_times`]) for
    /// `atso bench`. A timed step waits for the device when it starts and after its backward
    /// pass, its backward pass and its update. On a GPU those waits take away the overlap of one part's kernels with the next part's
    /// launches, and with kernel fusion they also cut fused kernels where they stand, so a timed
    /// step can run other kernels than an untimed one; runs leave timing off.
    pub fn time_steps(&mut self) {
        self.timing = true;
    }

    /// The last timed step's times (None before a step was timed).
    pub fn last_step_times(&self) -> Option<StepTimes> {
        self.step_times
    }

    /// Writes and resumes from checkpoints (see `checkpoint`).
    pub fn with_checkpoints(&mut self, checkpoints: Checkpoints) {
        self.checkpoints = Some(checkpoints);
    }

    /// The global step a checkpoint let this run resume from: the end of the last finished phase
    /// it replayed, or the step of an interrupted phase's checkpoint (None: it started from
    /// scratch).
    pub fn resumed_at(&self) -> Option<usize> {
        self.resumed_at
    }

    /// Calls `report` with every step's values once they are read (progress display).
    pub fn on_step(&mut self, report: impl FnMut(StepReport) + Send + 'static) {
        self.on_step = Some(Box::new(report));
    }

    /// Steps taken so far in this run.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// The run's step budget.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Learning rate of a step under the configured scope.
    fn lr(&self, local: usize, phase_steps: usize) -> f64 {
        let (step, total) = match self.spec.schedule {
            ScheduleScope::PerPhase => (local, phase_steps),
            ScheduleScope::Run => (self.step, self.total_steps),
        };
        PolySchedule {
            base_lr: self.spec.lr,
            power: self.spec.poly_power,
            total,
        }
        .lr(step)
    }

    /// Trains `model` for `steps` steps of `objective` as one phase named `phase_name` (in the
    /// curve). Fails on a non-finite loss, at the read after it. With checkpoints, a phase
    /// already finished is loaded instead of trained, and an interrupted one continues from its
    /// last checkpoint.
    pub fn train(
        &mut self,
        mut model: UNet,
        steps: usize,
        objective: &mut dyn Objective,
        phase_name: &str,
        mut validation: Option<Validation>,
    ) -> Result<(UNet, PhaseLog)> {
        self.phase += 1;
        self.phase_name = phase_name.to_string();
        if let Some(saved) = self.checkpoints.as_ref().map(|c| c.finished(self.phase)).transpose()?.flatten() {
            let model = self.restore(model, objective, &saved)?;
            let p = &saved.position;
            self.resumed_at = Some(p.global);
            return Ok((
                model,
                PhaseLog {
                    first_loss: p.first_loss,
                    last_loss: p.last_loss,
                    mean_loss: if steps > 0 { p.loss_sum / steps as f64 } else { 0.0 },
                    steps,
                    lr_first: p.lr_first,
                    lr_last: p.lr_last,
                },
            ));
        }
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
        let mut sums = PhaseSums {
            log: PhaseLog {
                steps,
                ..PhaseLog::default()
            },
            total: 0.0,
        };
        let mut start = 0;
        if let Some(saved) = self.checkpoints.as_ref().map(|c| c.current(self.phase)).transpose()?.flatten() {
            model = self.restore(model, objective, &saved)?;
            let record = burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(saved.optimizer.clone()))
                .map_err(|e| anyhow::anyhow!("reading the optimizer of a checkpoint: {e:?}"))?;
            optimizer = optimizer.load_record(record);
            let p = &saved.position;
            (start, sums.total) = (p.local, p.loss_sum);
            let log = &mut sums.log;
            (log.first_loss, log.last_loss, log.lr_first, log.lr_last) = (p.first_loss, p.last_loss, p.lr_first, p.lr_last);
            self.resumed_at = Some(p.global);
        }
        for local in start..steps {
            let validating = validation.as_ref().is_some_and(|v| (self.step + 1).is_multiple_of(v.every.max(1)));
            let step = Step {
                global: self.step,
                local,
                phase_steps: steps,
                lr: self.lr(local, steps),
                recorded: validating || curves::is_recorded(self.step + 1, self.every, local + 1 == steps),
            };
            let mut laps = self.timing.then(|| Laps::start(&self.device)).transpose()?;
            self.device.seed(rng::derived_seed(self.seed, &format!("step-{}", self.step)));
            let StepLoss { total, parts, host } = objective.loss(&model, step, &mut self.rng);
            let loss_time = laps.as_mut().map(Laps::lap).transpose()?;
            self.pending.push(Pending {
                step,
                total: total.clone().detach(),
                parts,
                host,
            });
            let grads = GradientsParams::from_grads(total.backward(), &model);
            let backward_time = laps.as_mut().map(Laps::lap).transpose()?;
            model = optimizer.step(step.lr, model, grads);
            objective.after_step(&model, step);
            if let Some(laps) = laps.as_mut() {
                self.step_times = Some(StepTimes {
                    loss: loss_time.unwrap_or_default(),
                    backward: backward_time.unwrap_or_default(),
                    update: laps.lap()?,
                });
            }
            self.step += 1;
            if validating {
                // Inference waits for the device anyway, so the losses are read at the same time.
                self.read_pending(objective, &mut sums)?;
                let dice = validation.as_mut().and_then(|v| (v.score)(&model));
                self.note_validation(dice);
            }
            let due = self
                .checkpoints
                .as_ref()
                .is_some_and(|c| c.every > 0 && self.step.is_multiple_of(c.every));
            if self.step.is_multiple_of(self.every) || due {
                self.read_pending(objective, &mut sums)?;
            }
            if due && local + 1 < steps {
                let saved = self.snapshot(&model, Some(&optimizer), objective, local + 1, &sums)?;
                self.checkpoints.as_ref().expect("due implies checkpoints").save_current(&saved)?;
            }
            abort_for_tests(self.step, self.resumed_at);
        }
        self.read_pending(objective, &mut sums)?;
        if self.checkpoints.as_ref().is_some_and(|c| c.every > 0) {
            let saved = self.snapshot(&model, None, objective, steps, &sums)?;
            self.checkpoints.as_ref().expect("checked").save_finished(&saved)?;
        }
        let mut log = sums.log;
        log.mean_loss = if steps > 0 { sums.total / steps as f64 } else { 0.0 };
        Ok((model, log))
    }

    /// Reads the losses of the steps taken since the last read, in one transaction, and hands
    /// them on in step order: to the phase's sums, the objective, the curve and the progress
    /// report. Fails at the first non-finite loss, naming its step.
    fn read_pending(&mut self, objective: &mut dyn Objective, sums: &mut PhaseSums) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let mut transaction = Transaction::default();
        for p in &pending {
            transaction = transaction.register(p.total.clone());
            for (_, part) in &p.parts {
                transaction = transaction.register(part.clone());
            }
        }
        let data = transaction.try_execute().map_err(|err| {
            anyhow::anyhow!(
                "reading the losses of steps {} to {} from the device: {err:?}",
                pending[0].step.global + 1,
                self.step
            )
        })?;
        let mut scalars = data.iter().map(|d| d.iter::<f32>().next().map_or(f64::NAN, f64::from));
        for p in pending {
            let loss = scalars.next().unwrap_or(f64::NAN);
            let step = p.step;
            if !loss.is_finite() {
                bail!(
                    "non-finite loss ({loss}) at step {} of {} (phase {}, step {} of {}, lr {:.3e})",
                    step.global + 1,
                    self.total_steps,
                    self.phase,
                    step.local + 1,
                    step.phase_steps,
                    step.lr
                );
            }
            let log = &mut sums.log;
            if step.local == 0 {
                log.first_loss = loss;
                log.lr_first = step.lr;
            }
            log.last_loss = loss;
            log.lr_last = step.lr;
            sums.total += loss;
            let mut parts: Vec<(&'static str, f64)> = p
                .parts
                .iter()
                .map(|(name, _)| (*name, scalars.next().unwrap_or(f64::NAN)))
                .collect();
            parts.extend(p.host);
            let values = StepValues { step, loss, parts };
            objective.observe(&values);
            if step.recorded {
                self.curve.push(CurvePoint {
                    step: step.global + 1,
                    phase: self.phase,
                    phase_name: self.phase_name.clone(),
                    lr: step.lr,
                    loss,
                    parts: values.parts.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
                    validation_dice: None,
                    seconds: self.started.elapsed().as_secs_f64(),
                });
            }
            if let Some(report) = self.on_step.as_mut() {
                report(StepReport {
                    done: step.global + 1,
                    total: self.total_steps,
                    loss,
                    lr: step.lr,
                });
            }
        }
        Ok(())
    }

    fn snapshot(
        &self,
        model: &UNet,
        optimizer: Option<&burn::optim::ModuleOptimizer>,
        objective: &dyn Objective,
        local: usize,
        sums: &PhaseSums,
    ) -> Result<Saved> {
        let log = &sums.log;
        let model_bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("saving the model to a checkpoint: {e:?}"))?;
        let optimizer_bytes = match optimizer {
            Some(o) => o
                .to_record()
                .into_bytes()
                .map_err(|e| anyhow::anyhow!("saving the optimizer to a checkpoint: {e:?}"))?
                .to_vec(),
            None => Vec::new(),
        };
        Ok(Saved {
            position: Position {
                phase: self.phase,
                local,
                global: self.step,
                rng: RngState::of(&self.rng),
                loss_sum: sums.total,
                first_loss: log.first_loss,
                last_loss: log.last_loss,
                lr_first: log.lr_first,
                lr_last: log.lr_last,
                curve: self.curve.clone(),
            },
            model: model_bytes.to_vec(),
            optimizer: optimizer_bytes,
            objective: objective.save_state()?,
        })
    }

    /// Loads a checkpoint's model, objective state, random stream and step.
    fn restore(&mut self, model: UNet, objective: &mut dyn Objective, saved: &Saved) -> Result<UNet> {
        let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(saved.model.clone()))
            .map_err(|e| anyhow::anyhow!("reading the model of a checkpoint: {e:?}"))?;
        let model = model
            .try_load_record(record)
            .map_err(|e| anyhow::anyhow!("loading the model of a checkpoint: {e:?}"))?;
        objective.load_state(&saved.objective)?;
        self.rng = saved.position.rng.restore();
        self.step = saved.position.global;
        self.curve = saved.position.curve.clone();
        Ok(model)
    }
}

/// Tests of checkpoint resume set `ATSO_TEST_ABORT_AT_STEP` to end the process abnormally (no
/// destructors, no flushing: what a kill leaves) at a known global step of a run that started
/// from scratch, so where it resumes does not depend on how fast the machine is. Tests of failure
/// handling set `ATSO_TEST_PANIC_AT_STEP` to panic there instead (a bug inside a run).
fn abort_for_tests(step: usize, resumed_at: Option<usize>) {
    static AT: std::sync::OnceLock<(Option<usize>, Option<usize>)> = std::sync::OnceLock::new();
    let (abort_at, panic_at) = AT.get_or_init(|| {
        let step_of = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        (step_of("ATSO_TEST_ABORT_AT_STEP"), step_of("ATSO_TEST_PANIC_AT_STEP"))
    });
    if resumed_at.is_none() && *abort_at == Some(step) {
        std::process::abort();
    }
    if *panic_at == Some(step) {
        panic!("test panic at step {step} (ATSO_TEST_PANIC_AT_STEP)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_at_step(schedule: &str, step: usize) -> Engine {
        let spec: OptimizerSpec = toml::from_str(&format!("lr = 0.1\nschedule = \"{schedule}\"")).unwrap();
        let mut engine = Engine::new(spec, 100, 0, crate::backend::device(crate::backend::Backend::Flex, 0).unwrap());
        engine.step = step;
        engine
    }

    #[test]
    fn the_poly_schedule_restarts_in_every_phase_or_spans_the_run() {
        // Step 60 of a 100-step run, the first step of a 40-step phase.
        let per_phase = engine_at_step("per-phase", 60);
        assert_eq!(per_phase.lr(0, 40), 0.1, "a phase starts at the base rate");
        assert!((per_phase.lr(20, 40) - 0.1 * 0.5f64.powf(0.9)).abs() < 1e-12);
        let run = engine_at_step("run", 60);
        let expected = 0.1 * 0.4f64.powf(0.9);
        assert!(
            (run.lr(0, 40) - expected).abs() < 1e-12,
            "the run's decay continues: {}",
            run.lr(0, 40)
        );
    }
}
