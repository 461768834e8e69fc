//! Mean teacher, following SSL4MIS's train_mean_teacher_2D.py:
//! - teacher = EMA of the student, alpha = min(1 - 1/(step+1), ema_decay);
//! - consistency = mean((softmax(student(x_u)) - softmax(teacher(x_u + noise)))^2), with
//!   noise = clamp(0.1 * randn, -0.2, 0.2);
//! - weight w(t) = consistency * sigmoid_rampup(t / unit, 200), 0 before the warm-up ends;
//! - supervised 0.5 * (CE + Dice) on the labeled half of each batch.
//!
//! SSL4MIS's constants (unit 150 iterations, warm-up 1000, for 30000 iterations) are scaled to
//! the budget and recorded with each run. So is the EMA decay (`ema_scaling = "budget"`, the
//! default): SSL4MIS's teacher averages over about 1/(1 - 0.99) = 100 steps, 1/300 of its run;
//! at a 3000-step budget an unscaled 0.99 would average over a thirtieth of the run and lag the
//! student by as much as the whole ramp-up. The scaled decay keeps the 1/300 fraction, with a
//! floor of 10 steps (decay 0.9) so the teacher stays an average; runs of 30000 steps get 0.99
//! exactly. `ema_scaling = "none"` uses `ema_decay` per step as given.
//!
//! The teacher runs in training mode (batch statistics), as SSL4MIS's EMA model does, without
//! gradients. Each run records its mean consistency weight, mean consistency loss and the share
//! of the total loss the consistency term contributed, so a reader can see whether the unlabeled
//! term did anything at a given budget.

use atso_harness::burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use atso_harness::burn::store::ModuleRecord;
use atso_harness::burn::tensor::activation::softmax;
use atso_harness::burn::tensor::{Device, Tensor, TensorData};
use atso_harness::checkpoint;
use atso_harness::config::EmaScaling;
use atso_harness::kernels;
use atso_harness::method::{Budget, Method, RunContext, Trained};
use atso_harness::model::UNet;
use atso_harness::rng::{self, SeededRng};
use atso_harness::train::augment::Augmentation;
use atso_harness::train::batch::{self, BatchLayout, Example, Pool, PoolState, Target, IGNORE};
use atso_harness::train::{loss, Objective, Step, StepLoss, StepValues};
use std::collections::HashMap;
use std::sync::Arc;

/// SSL4MIS's reference schedule, in iterations of its 30000-iteration runs.
const SSL4MIS_ITERATIONS: f64 = 30000.0;
const SSL4MIS_RAMPUP_UNIT: f64 = 150.0;
const SSL4MIS_RAMPUP_LENGTH: f64 = 200.0;
const SSL4MIS_WARMUP: f64 = 1000.0;
const NOISE_STD: f32 = 0.1;
const NOISE_CLIP: f32 = 0.2;
/// Fewest steps the scaled EMA averages over (decay 0.9).
const MIN_EMA_HORIZON: f64 = 10.0;

/// Mean teacher as configured in an experiment file.
#[derive(Debug, Clone)]
pub struct MeanTeacher {
    pub ema_decay: f64,
    pub consistency: f64,
    pub ema_scaling: EmaScaling,
}

/// The per-step EMA decay used for a budget of `iterations` steps (see the module doc).
pub fn effective_ema_decay(decay: f64, iterations: usize, scaling: EmaScaling) -> f64 {
    match scaling {
        EmaScaling::None => decay,
        EmaScaling::Budget => {
            let horizon = 1.0 / (1.0 - decay) * iterations as f64 / SSL4MIS_ITERATIONS;
            1.0 - 1.0 / horizon.max(MIN_EMA_HORIZON)
        }
    }
}

/// The consistency schedule scaled to a budget.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ConsistencySchedule {
    pub weight: f64,
    /// Iterations per ramp-up "epoch" (SSL4MIS: 150).
    pub unit: f64,
    /// Ramp-up length in units (SSL4MIS: 200).
    pub length: f64,
    /// Consistency is off before this iteration (SSL4MIS 2D: 1000).
    pub warmup: f64,
}

impl ConsistencySchedule {
    pub fn scaled(weight: f64, iterations: usize) -> Self {
        let scale = iterations as f64 / SSL4MIS_ITERATIONS;
        Self {
            weight,
            unit: (SSL4MIS_RAMPUP_UNIT * scale).max(1e-9),
            length: SSL4MIS_RAMPUP_LENGTH,
            warmup: SSL4MIS_WARMUP * scale,
        }
    }

    /// Weight of the consistency term at global step `t`.
    pub fn at(&self, t: usize) -> f64 {
        if (t as f64) < self.warmup {
            return 0.0;
        }
        self.weight * sigmoid_rampup(t as f64 / self.unit, self.length)
    }
}

/// exp(-5 (1 - clip(t, 0, L) / L)^2); 1 when L = 0.
pub fn sigmoid_rampup(t: f64, length: f64) -> f64 {
    if length == 0.0 {
        return 1.0;
    }
    let phase = 1.0 - t.clamp(0.0, length) / length;
    (-5.0 * phase * phase).exp()
}

/// EMA coefficient at global step `t`: min(1 - 1/(t+1), decay).
pub fn ema_alpha(t: usize, decay: f64) -> f64 {
    (1.0 - 1.0 / (t as f64 + 1.0)).min(decay)
}

impl Method for MeanTeacher {
    fn settings(&self, budget: &Budget) -> serde_json::Value {
        serde_json::json!({
            "ema_decay": self.ema_decay,
            "ema_scaling": self.ema_scaling,
            "ema_decay_effective": effective_ema_decay(self.ema_decay, budget.iterations, self.ema_scaling),
            "schedule": ConsistencySchedule::scaled(self.consistency, budget.iterations),
            "labeled_per_batch": budget.batch_size / 2,
            "noise_std": NOISE_STD,
            "noise_clip": NOISE_CLIP,
        })
    }

    fn train(&self, ctx: &mut RunContext) -> anyhow::Result<Trained> {
        if ctx.data.unlabeled.is_empty() {
            anyhow::bail!("mean teacher needs unlabeled cases; at labeled ratio 1 there are none");
        }
        let student = ctx.new_model();
        let labeled = ctx.pool(RunContext::true_examples(&ctx.data.labeled), "mt-labeled");
        let unlabeled_examples = ctx
            .data
            .unlabeled
            .iter()
            .flat_map(|c| c.slices.iter())
            .map(|s| Example {
                image: Arc::new(s.image.clone()),
                target: Arc::new(Target::Hard(vec![IGNORE; s.label.len()])),
            })
            .collect();
        let unlabeled = ctx.pool(unlabeled_examples, "mt-unlabeled");
        let mut objective = MeanTeacherObjective {
            teacher: student.valid().train().no_grad(),
            labeled,
            unlabeled,
            labeled_per_batch: ctx.budget.batch_size / 2,
            unlabeled_per_batch: ctx.budget.batch_size - ctx.budget.batch_size / 2,
            schedule: ConsistencySchedule::scaled(self.consistency, ctx.budget.iterations),
            ema_decay: effective_ema_decay(self.ema_decay, ctx.budget.iterations, self.ema_scaling),
            layout: ctx.layout(),
            augmentation: ctx.augmentation.clone(),
            device: ctx.train_device(),
            tally: Tally::default(),
        };
        let steps = ctx.budget.iterations;
        let (student, _) = ctx.fit(student, steps, &mut objective, "run")?;
        objective.tally.record(&mut ctx.diagnostics);
        Ok(student.into())
    }
}

/// Sums over steps of what the consistency term did.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Tally {
    steps: usize,
    weight: f64,
    active_steps: usize,
    consistency: f64,
    weighted_consistency: f64,
    supervised: f64,
}

impl Tally {
    fn record(&self, diagnostics: &mut std::collections::BTreeMap<String, f64>) {
        let steps = self.steps.max(1) as f64;
        diagnostics.insert("consistency_weight_mean".into(), self.weight / steps);
        diagnostics.insert("consistency_active_fraction".into(), self.active_steps as f64 / steps);
        diagnostics.insert(
            "consistency_loss_mean".into(),
            if self.active_steps > 0 {
                self.consistency / self.active_steps as f64
            } else {
                f64::NAN
            },
        );
        let total = self.supervised + self.weighted_consistency;
        diagnostics.insert(
            "consistency_share_of_loss".into(),
            if total > 0.0 { self.weighted_consistency / total } else { 0.0 },
        );
    }
}

struct MeanTeacherObjective {
    teacher: UNet,
    labeled: Pool,
    unlabeled: Pool,
    labeled_per_batch: usize,
    unlabeled_per_batch: usize,
    schedule: ConsistencySchedule,
    ema_decay: f64,
    layout: BatchLayout,
    augmentation: Augmentation,
    device: Device,
    tally: Tally,
}

impl Objective for MeanTeacherObjective {
    fn loss(&mut self, model: &UNet, step: Step, rng: &mut SeededRng) -> StepLoss {
        let mut examples = self.labeled.draw(self.labeled_per_batch);
        examples.extend(self.unlabeled.draw(self.unlabeled_per_batch));
        let n_labeled = self.labeled_per_batch;
        let total = examples.len();
        let batch = batch::assemble(&examples, self.layout, &self.augmentation, rng, &self.device);
        let logits = model.forward(batch.images.clone());
        // Unlabeled images carry zero weight, so this is the loss on the labeled half.
        let supervised = loss::segmentation(logits.clone(), batch.targets, batch.weights);
        let weight = self.schedule.at(step.global);
        if weight == 0.0 || total == n_labeled {
            return StepLoss::new(supervised.clone())
                .part("supervised", supervised)
                .host("consistency_weight", weight);
        }
        let unlabeled_images = batch.images.narrow(0, n_labeled, total - n_labeled);
        let noise = clamped_noise(unlabeled_images.dims(), rng, &self.device);
        let teacher_probs = softmax(self.teacher.forward(unlabeled_images + noise), 1).detach();
        let student_probs = softmax(logits.narrow(0, n_labeled, total - n_labeled), 1);
        // Summed in one order on every CPU (flex's own `mean` follows the vector width).
        let consistency = kernels::mean((student_probs - teacher_probs).powi_scalar(2));
        StepLoss::new(supervised.clone() + consistency.clone() * weight)
            .part("supervised", supervised)
            .part("consistency", consistency)
            .host("consistency_weight", weight)
    }

    /// The tally needs every step's parts, so they are reported on every step, not only on
    /// recorded ones (they are computed for the loss anyway).
    fn observe(&mut self, values: &StepValues) {
        let weight = values.part("consistency_weight").unwrap_or(0.0);
        self.tally.steps += 1;
        self.tally.weight += weight;
        self.tally.supervised += values.part("supervised").unwrap_or(0.0);
        if let Some(consistency) = values.part("consistency") {
            self.tally.active_steps += 1;
            self.tally.consistency += consistency;
            self.tally.weighted_consistency += weight * consistency;
        }
    }

    fn save_state(&self) -> anyhow::Result<Vec<u8>> {
        let json = serde_json::to_vec(&(self.labeled.state(), self.unlabeled.state(), &self.tally))?;
        let teacher = self
            .teacher
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("saving the teacher: {e:?}"))?;
        Ok(checkpoint::pack(&[&json, &teacher]))
    }

    fn load_state(&mut self, state: &[u8]) -> anyhow::Result<()> {
        let parts = checkpoint::unpack(state)?;
        let [json, teacher]: [Vec<u8>; 2] = parts
            .try_into()
            .map_err(|_| anyhow::anyhow!("mean teacher checkpoint: expected 2 parts"))?;
        let (labeled, unlabeled, tally): (PoolState, PoolState, Tally) = serde_json::from_slice(&json)?;
        self.labeled.restore(&labeled)?;
        self.unlabeled.restore(&unlabeled)?;
        self.tally = tally;
        let record = ModuleRecord::from_bytes(atso_harness::burn::tensor::Bytes::from_bytes_vec(teacher))
            .map_err(|e| anyhow::anyhow!("reading the teacher: {e:?}"))?;
        self.teacher = self
            .teacher
            .clone()
            .try_load_record(record)
            .map_err(|e| anyhow::anyhow!("loading the teacher: {e:?}"))?
            .no_grad();
        Ok(())
    }

    fn after_step(&mut self, model: &UNet, step: Step) {
        let alpha = ema_alpha(step.global, self.ema_decay);
        let mut collect = Collect(HashMap::new());
        model.visit(&mut collect);
        let teacher = self.teacher.clone();
        self.teacher = teacher.map(&mut Blend { student: collect.0, alpha }).no_grad();
    }
}

/// clamp(0.1 * N(0, 1), -0.2, 0.2), drawn from the run's stream for determinism.
fn clamped_noise(dims: [usize; 4], rng: &mut SeededRng, device: &Device) -> Tensor<4> {
    let count = dims.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| (NOISE_STD * rng::standard_normal(rng)).clamp(-NOISE_CLIP, NOISE_CLIP))
        .collect();
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// Collects every float tensor of the student (parameters and BN statistics), flattened.
struct Collect(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().detach();
        let count = value.shape().num_elements();
        self.0.insert(param.id, value.reshape([count]));
    }
}

/// teacher <- alpha * teacher + (1 - alpha) * student, matched by parameter id (the teacher is a
/// copy of the student, so ids agree).
struct Blend {
    student: HashMap<ParamId, Tensor<1>>,
    alpha: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(student) = self.student.remove(&param.id) else {
            return param;
        };
        let alpha = self.alpha;
        param.map(|teacher| {
            let shape = teacher.shape();
            teacher.detach() * alpha + student.reshape(shape) * (1.0 - alpha)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_alpha_warm_start_and_cap() {
        assert_eq!(ema_alpha(0, 0.99), 0.0);
        assert_eq!(ema_alpha(1, 0.99), 0.5);
        assert_eq!(ema_alpha(9, 0.99), 0.9);
        assert_eq!(ema_alpha(10_000, 0.99), 0.99);
    }

    #[test]
    fn sigmoid_rampup_known_points() {
        assert!((sigmoid_rampup(0.0, 200.0) - (-5.0f64).exp()).abs() < 1e-12);
        assert!((sigmoid_rampup(100.0, 200.0) - (-1.25f64).exp()).abs() < 1e-12);
        assert_eq!(sigmoid_rampup(200.0, 200.0), 1.0);
        assert_eq!(sigmoid_rampup(500.0, 200.0), 1.0);
        assert_eq!(sigmoid_rampup(3.0, 0.0), 1.0);
    }

    #[test]
    fn ema_decay_scales_with_the_budget_and_has_a_floor() {
        assert!((effective_ema_decay(0.99, 30000, EmaScaling::Budget) - 0.99).abs() < 1e-12);
        assert!((effective_ema_decay(0.99, 60000, EmaScaling::Budget) - 0.995).abs() < 1e-12);
        assert!((effective_ema_decay(0.99, 200, EmaScaling::Budget) - 0.9).abs() < 1e-12);
        assert_eq!(effective_ema_decay(0.99, 200, EmaScaling::None), 0.99);
    }

    #[test]
    fn schedule_scales_ssl4mis_constants() {
        let s = ConsistencySchedule::scaled(0.1, 3000);
        assert!((s.unit - 15.0).abs() < 1e-9 && (s.warmup - 100.0).abs() < 1e-9);
        assert_eq!(s.at(99), 0.0);
        assert!((s.at(1500) - 0.1 * sigmoid_rampup(100.0, 200.0)).abs() < 1e-12);
        assert!((s.at(3000) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn ema_update_blends_parameters() {
        use atso_harness::model::ModelSpec;
        let device = Device::flex().autodiff();
        let spec = ModelSpec {
            channels: vec![2, 4],
            dropout: vec![0.0, 0.0],
        };
        let student = spec.init(1, 2, &device);
        let teacher = student.valid().train().no_grad();
        // Move the student away: scale every float by 3.
        struct Triple;
        impl ModuleMapper for Triple {
            fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
                p.map(|t| t * 3.0)
            }
        }
        let first = |m: &UNet| {
            let mut c = Collect(HashMap::new());
            m.visit(&mut c);
            let mut values: Vec<(ParamId, f32)> =
                c.0.into_iter()
                    .map(|(id, t)| (id, t.into_data().try_into_vec_as::<f32>().unwrap()[0]))
                    .collect();
            values.sort_by_key(|(id, _)| *id);
            values
        };
        let before = first(&teacher);
        let student = student.map(&mut Triple);
        let mut collect = Collect(HashMap::new());
        student.visit(&mut collect);
        let blended = teacher.map(&mut Blend {
            student: collect.0,
            alpha: 0.75,
        });
        for ((id, old), (id2, new)) in before.iter().zip(first(&blended)) {
            assert_eq!(*id, id2);
            assert!((new - (0.75 * old + 0.25 * 3.0 * old)).abs() < 1e-5, "{old} -> {new}");
        }
    }
}
