//! `atso bench`: speed of one training step and one inference batch of the U-Net on each backend
//! compiled into this build and, for the CPU backend, at each CPU thread count asked for; the
//! first configuration measured is the in-run reference the others are reported against.
//!
//! Timings are medians over repeated steps after warm-up; each step ends by reading the loss back
//! to the host, so GPU work is finished when the clock stops. Thread counts are set by running the
//! measurement inside a rayon pool of that size (burn's flex kernels and its gemm use rayon).

use anyhow::Result;
use atso_harness::backend;
use atso_harness::method::{Budget, MixedObjective, RunContext, RunData};
use atso_harness::model::ModelSpec;
use atso_harness::rng;
use atso_harness::train::{Example, OptimizerSpec, Target};
use rand::Rng;
use std::sync::Arc;
use std::time::Instant;

/// What to measure.
pub struct BenchSpec {
    pub backends: Vec<String>,
    pub batch_size: usize,
    pub resolution: usize,
    pub channels: Vec<usize>,
    pub steps: usize,
    pub warmup: usize,
    /// CPU thread counts to measure the flex backend at (empty: rayon's default only).
    pub threads: Vec<usize>,
}

/// One backend's medians, in seconds.
pub struct BenchResult {
    pub backend: String,
    pub train_step: f64,
    pub inference_batch: f64,
}

/// Measures every backend of `spec`.
pub fn run(spec: &BenchSpec) -> Result<Vec<BenchResult>> {
    let size = spec.resolution;
    let mut rng = rng::stream(0, "bench");
    let examples: Vec<Example> = (0..spec.batch_size * 2)
        .map(|_| Example {
            image: Arc::new((0..size * size).map(|_| rng.random::<f32>()).collect()),
            target: Arc::new(Target::Hard((0..size * size).map(|_| rng.random_range(0..4u8)).collect())),
        })
        .collect();
    let images: Vec<&[f32]> = examples.iter().take(spec.batch_size).map(|e| e.image.as_slice()).collect();
    let model_spec = ModelSpec {
        channels: spec.channels.clone(),
        dropout: vec![0.0; spec.channels.len()],
    };
    model_spec.validate(size)?;
    let budget = Budget {
        iterations: spec.steps + spec.warmup,
        batch_size: spec.batch_size,
        resolution: size,
        eval_batch_size: spec.batch_size,
        augment: true,
    };
    let mut results = Vec::new();
    let configurations: Vec<(String, Option<usize>)> = spec
        .backends
        .iter()
        .flat_map(|name| match (name.as_str(), spec.threads.is_empty()) {
            ("flex", false) => spec.threads.iter().map(|&t| (name.clone(), Some(t))).collect::<Vec<_>>(),
            _ => vec![(name.clone(), None)],
        })
        .collect();
    for (name, threads) in configurations {
        let run = || measure(spec, &name, &examples, &images, &model_spec, &budget);
        let (train_step, inference_batch) = match threads {
            Some(t) => rayon::ThreadPoolBuilder::new().num_threads(t).build()?.install(run)?,
            None => run()?,
        };
        let label = match threads {
            Some(t) => format!("{} ({t} thread{})", backend::label(&name), if t == 1 { "" } else { "s" }),
            None => backend::label(&name),
        };
        results.push(BenchResult {
            backend: label,
            train_step,
            inference_batch,
        });
    }
    Ok(results)
}

/// Median seconds of a training step and of an inference batch on backend `name`.
fn measure(
    spec: &BenchSpec,
    name: &str,
    examples: &[Example],
    images: &[&[f32]],
    model_spec: &ModelSpec,
    budget: &Budget,
) -> Result<(f64, f64)> {
    let device = backend::device(name, 0)?;
    let data = RunData {
        class_names: (0..4).map(|c| c.to_string()).collect(),
        labeled: vec![],
        unlabeled: vec![],
        validation: vec![],
        test: vec![],
    };
    let mut ctx = RunContext::new(data, model_spec.clone(), budget.clone(), OptimizerSpec::default(), 0, device);
    let pool = ctx.pool(examples.to_vec(), "bench");
    let mut objective = MixedObjective::new(&ctx, vec![(pool, spec.batch_size)]);
    let mut model = ctx.new_model();
    let mut train = Vec::new();
    for i in 0..spec.warmup + spec.steps {
        let clock = Instant::now();
        model = ctx.fit(model, 1, &mut objective).0;
        if i >= spec.warmup {
            train.push(clock.elapsed().as_secs_f64());
        }
    }
    let mut inference = Vec::new();
    for i in 0..spec.warmup + spec.steps {
        let clock = Instant::now();
        let probs = atso_harness::train::infer::probabilities(&model, images, spec.resolution, spec.batch_size, &ctx.device);
        std::hint::black_box(probs);
        if i >= spec.warmup {
            inference.push(clock.elapsed().as_secs_f64());
        }
    }
    Ok((median(train), median(inference)))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The results as a Markdown table, ratios against the first backend's training step.
pub fn table(spec: &BenchSpec, results: &[BenchResult]) -> String {
    let reference = results.first().map_or(f64::NAN, |r| r.train_step);
    let mut out = format!(
        "U-Net channels {:?}, batch {} x 1 x {} x {}, median of {} steps after {} warm-up\n\n| backend | train step (s) | inference batch (s) | train step / {} train step |\n|---|---|---|---|\n",
        spec.channels,
        spec.batch_size,
        spec.resolution,
        spec.resolution,
        spec.steps,
        spec.warmup,
        results.first().map_or("first", |r| r.backend.as_str())
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.2} |\n",
            r.backend,
            r.train_step,
            r.inference_batch,
            r.train_step / reference
        ));
    }
    out
}
