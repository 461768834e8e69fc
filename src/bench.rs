//! `atso bench`: speed of one training step and one inference batch of the U-Net on each backend
//! compiled into this build and, for the CPU backend, at each CPU thread count asked for.
//!
//! Reported per configuration: median milliseconds per training step (after warm-up, over phases
//! of `--chunk` steps, each ending by reading its losses back to the host, so GPU work is
//! finished when the clock stops; a run reads them once per progress interval), images per
//! second, achieved GFLOP/s (convolution FLOPs counted from the architecture: forward 2 x
//! C_in x C_out x k^2 x H x W per conv and image, a training step 3x forward) and that as a
//! fraction of the machine's fp32 GEMM rate, measured in the same run with a 1024^3 matrix
//! product on the same backend and threads. On flex each thread count is timed with burn's ops and
//! with the project's kernels (`--kernels`). The first configuration is the reference the others
//! are reported against. `--vs-pytorch` runs benchmarks/pytorch_unet.py on the same network and
//! batch right after and prints the ratio, and the training rate as a share of PyTorch's own GEMM
//! rate: flex's GEMM crate runs its AVX2 code on an AVX-512 CPU (seen in a profile on an Intel
//! Xeon), so there the same-run share above flatters, and PyTorch's (oneDNN / MKL) does not.
//!
//! `--phases` says where a step's time goes, for a backend whose step is far slower than its
//! arithmetic (a GPU launching many small kernels): as many further steps, each split into its
//! loss, backward and update parts with the device waited for after each, and the CPU seconds
//! per wall second of the untimed steps, for the process, the thread driving the training and
//! each other busy thread by name (a GPU runtime's device thread compiles and submits kernels).
//! Threads near 1.0 while the device is mostly idle point at host-side work; a hint to follow
//! with a profiler, not a verdict.

use anyhow::{bail, Context, Result};
use atso_harness::backend::{self, Backend};
use atso_harness::evaluate::EvaluationSpec;
use atso_harness::kernels::isa::{self, Isa};
use atso_harness::method::{Budget, MixedObjective, RunContext, RunData, RunSetup};
use atso_harness::model::ModelSpec;
use atso_harness::rng;
use atso_harness::train::augment::Augmentation;
use atso_harness::train::{Example, OptimizerSpec, StepTimes, Target};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cpu_use::{CpuMark, CpuUse};

/// Arguments of `atso bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Backends to compare, the first is the reference (default: all compiled in).
    #[arg(long, value_delimiter = ',')]
    pub backends: Vec<Backend>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub resolution: usize,
    /// U-Net channels per level (default: SSL4MIS).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    pub channels: Vec<usize>,
    /// Encoder dropout per level, as the experiment files' `model.dropout` (default: SSL4MIS's
    /// 0.05, 0.1, 0.2, 0.3, 0.5 for the first levels, 0.5 below; `--dropout 0` times without).
    #[arg(long, value_delimiter = ',')]
    pub dropout: Vec<f64>,
    /// Training steps timed after warm-up (in phases of `--chunk` steps), and inference batches.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Steps per timed training phase: a phase reads its losses once, at its end, as a run
    /// reads them once per progress interval; the step time is a phase's time over its steps.
    #[arg(long, default_value_t = 5)]
    pub chunk: usize,
    /// Inference batches timed after warm-up (default: as many as `--steps`; 0 skips inference,
    /// e.g. to count a training step's kernel launches from two runs that differ in `--steps`).
    #[arg(long)]
    pub inference_batches: Option<usize>,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// CPU thread counts for the flex backend, e.g. 1,2 (default: 1 and all cores).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Kernels for flex: `own` (the project's convolutions, batch norms, LeakyReLUs and
    /// upsamplings, the default everywhere else) and/or `burn` (burn's ops), timed one after the
    /// other in this run.
    #[arg(long, value_delimiter = ',', default_value = "burn,own")]
    pub kernels: Vec<String>,
    /// Also time the same network in PyTorch (benchmarks/pytorch_unet.py; needs python3 with
    /// torch) and print the ratio.
    #[arg(long)]
    pub vs_pytorch: bool,
    /// Also split training steps into their parts (loss, backward, update; the device waited
    /// for after each) in as many further steps, and report CPU time per wall time.
    #[arg(long)]
    pub phases: bool,
    /// PyTorch device for --vs-pytorch (cpu or cuda).
    #[arg(long, default_value = "cpu")]
    pub pytorch_device: String,
    /// The PyTorch script for --vs-pytorch (default: benchmarks/pytorch_unet.py under the current
    /// directory, else in the source tree this binary was built from).
    #[arg(long)]
    pub pytorch_script: Option<std::path::PathBuf>,
    /// With --vs-pytorch on the CPU: the instruction sets PyTorch may use. `same` (the default)
    /// caps ATen's, oneDNN's and MKL's code where `ATSO_KERNEL_ISA` caps the project's kernels
    /// below what the CPU has, so a capped run compares like with like (and stands in for a CPU
    /// without the wider instructions); `native` leaves PyTorch on the best the CPU has. Those
    /// variables, where already set, are left as they are.
    #[arg(long, value_enum, default_value_t = PyTorchIsa::Same)]
    pub pytorch_isa: PyTorchIsa,
    /// With --vs-pytorch: rounds of the comparison, the last configuration and PyTorch taking
    /// turns, and the ratio as the median of the rounds' ratios (on a shared or noisy machine a
    /// single pair can swing by more than the difference being measured). They also take turns
    /// going first (atso in odd rounds, PyTorch in even ones): on a host whose speed drifts
    /// within a round, whoever always went first would be favoured.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Also time each U-Net level's convolution (forward, input gradient, weight gradient) and
    /// batch norm (forward, backward) alone (the project's CPU kernels, at the last `--threads`
    /// count): a kernel change shows there when a whole step's run-to-run noise hides it
    #[arg(long)]
    pub layers: bool,
}

/// `--pytorch-isa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PyTorchIsa {
    /// Capped where the project's kernels are.
    Same,
    /// The best the CPU has.
    Native,
}

/// The environment that caps PyTorch's CPU code (ATen's dispatch, oneDNN's convolutions, MKL's
/// GEMM) at what `kernels` allows, on a CPU whose best is `detected`: nothing where the kernels
/// run the best there is. The portable kernels map to the lowest caps the three libraries take
/// (all above the baseline x86-64 the portable code is compiled for).
fn pytorch_isa_caps(kernels: Isa, detected: Isa) -> &'static [(&'static str, &'static str)] {
    if kernels >= detected {
        return &[];
    }
    match kernels {
        Isa::Portable => &[
            ("ATEN_CPU_CAPABILITY", "default"),
            ("ONEDNN_MAX_CPU_ISA", "SSE41"),
            ("MKL_ENABLE_INSTRUCTIONS", "SSE4_2"),
        ],
        Isa::Avx2 => &[
            ("ATEN_CPU_CAPABILITY", "avx2"),
            ("ONEDNN_MAX_CPU_ISA", "AVX2"),
            ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
        ],
        Isa::Avx512 => &[],
    }
}

impl BenchArgs {
    /// These arguments narrowed to the last configuration they measure (the one compared with
    /// PyTorch), without `--phases`.
    fn last_configuration(&self) -> Self {
        Self {
            backends: last_only(&self.backends),
            threads: last_only(&self.threads),
            kernels: last_only(&self.kernels),
            phases: false,
            ..self.clone()
        }
    }
}

/// A configuration that could not be measured, and why.
pub struct BenchFailure {
    pub label: String,
    pub error: String,
}

/// One configuration's medians.
pub struct BenchResult {
    pub label: String,
    pub train_seconds: f64,
    pub inference_seconds: f64,
    /// The process's peak resident memory while this configuration was measured, in MiB
    /// (including what earlier configurations left in the allocator's pools).
    pub peak_rss_mib: Option<f64>,
    pub gemm_gflops: f64,
    /// With `--phases`.
    pub phases: Option<Phases>,
}

/// Where a training step's time goes (`--phases`).
#[derive(Debug, Clone)]
pub struct Phases {
    /// Median seconds of the loss part (batch, forward pass, loss read back), the device
    /// waited for at its end.
    pub loss: f64,
    /// Median seconds of the backward pass, likewise.
    pub backward: f64,
    /// Median seconds of the update, likewise.
    pub update: f64,
    /// CPU use over the untimed training steps; the caller is the thread driving the training.
    pub cpu: CpuUse,
}

/// `atso bench`.
pub fn command(args: BenchArgs) -> Result<()> {
    let mut args = args;
    if args.threads.is_empty() {
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        args.threads = if all > 1 { vec![1, all] } else { vec![1] };
    }
    if args.backends.is_empty() {
        args.backends = backend::available();
    }
    let (results, failures) = run(&args)?;
    if !results.is_empty() {
        print!("{}", table(&args, &results));
    }
    if args.phases && !results.is_empty() {
        print!("\n{}", phases_table(&results));
    }
    if args.layers {
        print!("\n{}", layers_table(&args)?);
    }
    for failure in &failures {
        println!("\n{} could not be measured: {}", failure.label, failure.error);
    }
    if args.vs_pytorch && !failures.is_empty() {
        println!("\nno PyTorch comparison: it is made against the last configuration, which needs every one measured");
    }
    if args.vs_pytorch && failures.is_empty() {
        let theirs = pytorch(&args)?;
        let ours = results.last().context("no configuration measured")?;
        println!(
            "\nPyTorch {} on `{}` ({} threads{}): train step {:.1} ms, inference batch {:.1} ms",
            theirs.version,
            args.pytorch_device,
            theirs.threads,
            theirs.isa(),
            1e3 * theirs.train_seconds,
            1e3 * theirs.inference_seconds
        );
        if let (Some(their_peak), Some(our_peak)) = (theirs.peak_rss_mib, ours.peak_rss_mib) {
            println!(
                "peak resident memory, atso ({}) / PyTorch: {our_peak:.0} / {their_peak:.0} MiB = {:.2}x (each process's peak; atso's since its configuration began)",
                ours.label,
                our_peak / their_peak
            );
        }
        let train_flops = 3.0 * batch_forward_flops(&args);
        let mut ratios = vec![Ratios::of(ours, &theirs, train_flops)];
        let again = args.last_configuration();
        for round in 2..=args.rounds {
            let pytorch_first = round % 2 == 0;
            let theirs_first = if pytorch_first { Some(pytorch(&args)?) } else { None };
            let (mut measured, failed) = run(&again)?;
            if let Some(failure) = failed.first() {
                bail!("round {round}: {} could not be measured: {}", failure.label, failure.error);
            }
            let ours = measured.pop().context("no configuration measured")?;
            let theirs = match theirs_first {
                Some(theirs) => theirs,
                None => pytorch(&args)?,
            };
            let r = Ratios::of(&ours, &theirs, train_flops);
            println!(
                "round {round}: {} first; atso train {:.1} ms, inference {:.1} ms; PyTorch train {:.1} ms, inference {:.1} ms; train {:.2}x, inference {:.2}x",
                if pytorch_first { "PyTorch" } else { "atso" },
                1e3 * ours.train_seconds,
                1e3 * ours.inference_seconds,
                1e3 * theirs.train_seconds,
                1e3 * theirs.inference_seconds,
                r.train,
                r.inference
            );
            ratios.push(r);
        }
        println!("throughput, atso ({}) / PyTorch: {}", ours.label, Ratios::summary(&ratios));
        if let Some(line) = Ratios::gemm_summary(&ratios) {
            // flex's GEMM crate may run narrower SIMD than the CPU has (AVX2 code on an AVX-512
            // CPU), which flatters the table's same-run share; PyTorch's GEMM does not.
            println!(
                "GEMM rate, PyTorch ({} threads): {line}; flex's GEMM in the first round {:.1} GFLOP/s",
                theirs.threads, ours.gemm_gflops
            );
        }
    }
    if !failures.is_empty() {
        bail!("{} of {} configuration(s) failed", failures.len(), failures.len() + results.len());
    }
    Ok(())
}

/// The median of sorted, non-empty `values` (the mean of the middle two for an even count).
fn middle(values: &[f64]) -> f64 {
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The last value of a list (none of an empty one).
fn last_only<T: Clone>(values: &[T]) -> Vec<T> {
    values.last().cloned().into_iter().collect()
}

/// PyTorch's time over ours (above 1: ours is faster), for a training step and an inference batch.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ratios {
    train: f64,
    inference: f64,
    /// PyTorch's GEMM rate in that round (GFLOP/s) and atso's training rate as a share of it,
    /// where the script reports one.
    gemm: Option<(f64, f64)>,
}

impl Ratios {
    /// One round's ratios; `train_flops` is a training step's convolution FLOPs.
    fn of(ours: &BenchResult, theirs: &PyTorchResult, train_flops: f64) -> Self {
        Self {
            train: theirs.train_seconds / ours.train_seconds,
            inference: theirs.inference_seconds / ours.inference_seconds,
            gemm: theirs.gemm_gflops.map(|gemm| (gemm, train_flops / ours.train_seconds / 1e9 / gemm)),
        }
    }

    /// `390.1 GFLOP/s; atso trains at 0.30 of it`, medians over the rounds (with the share's range
    /// when there are several); None when a round's script reported no GEMM rate.
    fn gemm_summary(rounds: &[Ratios]) -> Option<String> {
        let pairs: Vec<(f64, f64)> = rounds.iter().map(|r| r.gemm).collect::<Option<_>>()?;
        let gemm = median(pairs.iter().map(|p| p.0).collect());
        let mut shares: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        shares.sort_by(f64::total_cmp);
        let share = middle(&shares);
        Some(if rounds.len() == 1 {
            format!("{gemm:.1} GFLOP/s; atso trains at {share:.2} of it")
        } else {
            format!(
                "{gemm:.1} GFLOP/s (median of {} rounds); atso trains at {share:.2} of it (median; {:.2} to {:.2})",
                rounds.len(),
                shares[0],
                shares[shares.len() - 1]
            )
        })
    }

    /// `train 1.10x, inference 1.20x`, for one round; for several, the medians and, in
    /// parentheses, how many rounds and the range.
    fn summary(rounds: &[Ratios]) -> String {
        let median_and_range = |pick: fn(&Ratios) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            (middle(&values), values[0], values[values.len() - 1])
        };
        let (train, inference) = (median_and_range(|r| r.train), median_and_range(|r| r.inference));
        if rounds.len() == 1 {
            return format!("train {:.2}x, inference {:.2}x", train.0, inference.0);
        }
        format!(
            "train {:.2}x, inference {:.2}x (medians of {} alternating rounds; train {:.2}x to {:.2}x, inference {:.2}x to {:.2}x)",
            train.0,
            inference.0,
            rounds.len(),
            train.1,
            train.2,
            inference.1,
            inference.2
        )
    }
}

/// Forward-pass convolution FLOPs of the U-Net for one image (multiply-adds count 2).
pub fn unet_forward_flops(channels: &[usize], resolution: usize, in_channels: usize, classes: usize) -> f64 {
    let conv = |c_in: usize, c_out: usize, k: usize, size: usize| 2.0 * (c_in * c_out * k * k * size * size) as f64;
    let block = |c_in: usize, c_out: usize, size: usize| conv(c_in, c_out, 3, size) + conv(c_out, c_out, 3, size);
    let mut flops = block(in_channels, channels[0], resolution);
    for level in 1..channels.len() {
        flops += block(channels[level - 1], channels[level], resolution >> level);
    }
    for level in (1..channels.len()).rev() {
        let size = resolution >> (level - 1);
        // 1x1 reduce at the lower resolution, then a block on the concatenation.
        flops += conv(channels[level], channels[level - 1], 1, resolution >> level);
        flops += block(2 * channels[level - 1], channels[level - 1], size);
    }
    flops + conv(channels[0], classes, 3, resolution)
}

/// `--dropout` per level: the list given (one value meaning every level), or SSL4MIS's.
fn dropout_per_level(args: &BenchArgs) -> Vec<f64> {
    let levels = args.channels.len();
    match args.dropout.as_slice() {
        [] => {
            let ssl4mis = ModelSpec::default().dropout;
            (0..levels).map(|i| ssl4mis.get(i).copied().unwrap_or(0.5)).collect()
        }
        [single] => vec![*single; levels],
        list => list.to_vec(),
    }
}

/// Measures every backend (and thread count) of `args`. A configuration that fails (an error, or
/// a backend that panics on an op it lacks) is reported as failed and the others are still
/// measured.
pub fn run(args: &BenchArgs) -> Result<(Vec<BenchResult>, Vec<BenchFailure>)> {
    let size = args.resolution;
    let mut rng = rng::stream(0, "bench");
    let examples: Vec<Example> = (0..args.batch_size * 2)
        .map(|_| Example {
            image: Arc::new((0..size * size).map(|_| rng.random::<f32>()).collect()),
            target: Arc::new(Target::Hard((0..size * size).map(|_| rng.random_range(0..4u8)).collect())),
        })
        .collect();
    let model_spec = ModelSpec {
        channels: args.channels.clone(),
        dropout: dropout_per_level(args),
    };
    model_spec.validate(size)?;
    let (mut results, mut failures) = (Vec::new(), Vec::new());
    if let Some(unknown) = args.kernels.iter().find(|k| !matches!(k.as_str(), "own" | "burn")) {
        bail!("--kernels takes own and/or burn, got '{unknown}'");
    }
    let configurations: Vec<(Backend, Option<usize>, bool)> = args
        .backends
        .iter()
        .flat_map(|&name| match name {
            Backend::Flex => args
                .kernels
                .iter()
                .flat_map(|k| args.threads.iter().map(move |&t| (name, Some(t), k == "own")))
                .collect::<Vec<_>>(),
            _ => vec![(name, None, true)],
        })
        .collect();
    for (name, threads, own_kernels) in configurations {
        let kernels = if name == Backend::Flex && !own_kernels {
            ", burn's ops"
        } else {
            ""
        };
        let label = match threads {
            Some(t) => format!("{}{kernels} ({t} thread{})", backend::label(name), if t == 1 { "" } else { "s" }),
            None => backend::label(name),
        };
        let measure = || -> Result<(Measured, f64)> {
            atso_harness::kernels::use_own_kernels(own_kernels);
            let measured = measure(args, name, &examples, &model_spec)?;
            Ok((measured, gemm_gflops(name)?))
        };
        atso_harness::memory::reset_peak();
        let measured = atso_harness::runner::run_guarded(|| match threads {
            Some(t) => rayon::ThreadPoolBuilder::new().num_threads(t).build()?.install(measure),
            None => measure(),
        });
        match measured {
            Ok((measured, gemm_gflops)) => results.push(BenchResult {
                label,
                train_seconds: measured.train_seconds,
                inference_seconds: measured.inference_seconds,
                peak_rss_mib: atso_harness::memory::peak_resident_mib(),
                gemm_gflops,
                phases: measured.phases,
            }),
            Err(error) => failures.push(BenchFailure { label, error }),
        }
    }
    Ok((results, failures))
}

/// What [`measure`] found for one configuration.
struct Measured {
    train_seconds: f64,
    inference_seconds: f64,
    phases: Option<Phases>,
}

/// Median seconds of a training step and of an inference batch on backend `name`, and with
/// `--phases` where the training step's time goes.
fn measure(args: &BenchArgs, name: Backend, examples: &[Example], model_spec: &ModelSpec) -> Result<Measured> {
    let device = backend::device(name, 0)?;
    let data = RunData {
        class_names: (0..4).map(|c| c.to_string()).collect(),
        in_channels: 1,
        first_class: 1,
        outside_label: 0,
        labeled: vec![],
        unlabeled: vec![],
        validation: vec![],
        test: vec![],
    };
    let phase_steps = if args.phases { args.steps } else { 0 };
    let setup = RunSetup {
        model_spec: model_spec.clone(),
        budget: Budget {
            iterations: args.steps + args.warmup + phase_steps,
            batch_size: args.batch_size,
            resolution: args.resolution,
            eval_batch_size: args.batch_size,
        },
        optimizer: OptimizerSpec::default(),
        augmentation: Augmentation::default(),
        evaluation: EvaluationSpec::default(),
        seed: 0,
    };
    let mut ctx = RunContext::new(data, setup, device);
    let pool = ctx.pool(examples.to_vec(), "bench");
    let mut objective = MixedObjective::new(&ctx, vec![("supervised", pool, args.batch_size)]);
    let mut model = ctx.new_model();
    if args.warmup > 0 {
        model = ctx.fit(model, args.warmup, &mut objective, "warm-up")?.0;
    }
    // Timed in phases of `--chunk` steps: a phase reads its losses once, at its end, as a run
    // reads them once per progress interval, so the device is not waited for between the steps
    // of a chunk.
    let chunk = args.chunk.clamp(1, args.steps.max(1));
    let untimed_start = args.phases.then(CpuMark::now);
    let mut train = Vec::new();
    for _ in 0..(args.steps / chunk).max(1) {
        let clock = Instant::now();
        model = ctx.fit(model, chunk, &mut objective, "timed")?.0;
        train.push(clock.elapsed().as_secs_f64() / chunk as f64);
    }
    let mut phases = None;
    if args.phases {
        let cpu = untimed_start.map(|start| CpuMark::now().since(&start)).unwrap_or_default();
        ctx.engine.time_steps();
        let mut parts = Vec::new();
        for _ in 0..phase_steps {
            model = ctx.fit(model, 1, &mut objective, "timed in parts")?.0;
            parts.extend(ctx.engine.last_step_times());
        }
        let part = |f: fn(&StepTimes) -> Duration| median(parts.iter().map(|t| f(t).as_secs_f64()).collect());
        phases = Some(Phases {
            loss: part(|t| t.loss),
            backward: part(|t| t.backward),
            update: part(|t| t.update),
            cpu,
        });
    }
    let images: Vec<&[f32]> = examples.iter().take(args.batch_size).map(|e| e.image.as_slice()).collect();
    let mut inference = Vec::new();
    let batches = args.inference_batches.unwrap_or(args.steps);
    for i in 0..if batches > 0 { args.warmup + batches } else { 0 } {
        let clock = Instant::now();
        let probs =
            atso_harness::train::infer::probabilities(std::slice::from_ref(&model), &images, args.resolution, args.batch_size, &ctx.device);
        std::hint::black_box(probs);
        if i >= args.warmup {
            inference.push(clock.elapsed().as_secs_f64());
        }
    }
    Ok(Measured {
        train_seconds: median(train),
        inference_seconds: median(inference),
        phases,
    })
}

/// `--layers`: each level's 3 x 3 convolution (its channels in and out, its resolution) timed
/// pass by pass, and its batch norm (training mode, with the fused LeakyReLU), as a Markdown table.
fn layers_table(args: &BenchArgs) -> Result<String> {
    use atso_harness::kernels::layer_probe;
    const CALLS: usize = 5;
    let threads = args.threads.last().copied().unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let mut out = format!(
        "Layers alone (`--layers`): the project's kernels ({}), {threads} thread{}, batch {}, each level's 3 x 3 convolution from and to its channels in GFLOP/s counting real positions, and its batch norm (training mode, with the LeakyReLU) in ms; the best of {CALLS} calls after one\n\n\
         | channels | size | conv forward (GFLOP/s) | conv input gradient (GFLOP/s) | conv weight gradient (GFLOP/s) | batch norm forward (ms) | batch norm backward (ms) |\n|---|---|---|---|---|---|---|\n",
        atso_harness::provenance::Machine::current().simd,
        if threads == 1 { "" } else { "s" },
        args.batch_size
    );
    // What no kernel can beat on these threads, to read the levels' rates against.
    let peak = pool.install(|| atso_harness::kernels::fma_peak::fma_peak_gflops(CALLS));
    for (level, &channels) in args.channels.iter().enumerate() {
        let size = args.resolution >> level;
        let r = pool.install(|| layer_probe::layer_rates(channels, size, args.batch_size, CALLS));
        out.push_str(&format!(
            "| {channels} | {size} x {size} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} |\n",
            r.forward, r.input_grad, r.weight_grad, r.norm_forward_ms, r.norm_backward_ms
        ));
    }
    out.push_str(&format!(
        "\nFMA peak on the same threads and instruction set (`fma_peak`: independent fused multiply-adds, the best of {CALLS} calls): {peak:.1} GFLOP/s\n"
    ));
    Ok(out)
}

/// Convolution FLOPs of one forward pass over a benchmark batch.
fn batch_forward_flops(args: &BenchArgs) -> f64 {
    unet_forward_flops(&args.channels, args.resolution, 1, 4) * args.batch_size as f64
}

/// GFLOP/s of a 1024 x 1024 x 1024 fp32 matrix product on backend `name` (median of 5).
fn gemm_gflops(name: Backend) -> Result<f64> {
    use atso_harness::burn::tensor::{Distribution, Tensor};
    let device = backend::device(name, 0)?;
    let n = 1024;
    let a = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let mut times = Vec::new();
    for i in 0..7 {
        let clock = Instant::now();
        let c = a.clone().matmul(b.clone());
        let _: f32 = c.slice([0..1, 0..1]).into_scalar();
        if i >= 2 {
            times.push(clock.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (n * n * n) as f64 / median(times) / 1e9)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The results as a Markdown table, ratios against the first configuration's training step.
pub fn table(args: &BenchArgs, results: &[BenchResult]) -> String {
    let forward = batch_forward_flops(args);
    let reference = results.first().map_or(f64::NAN, |r| r.train_seconds);
    let mut out = format!(
        "U-Net channels {:?}, dropout {:?}, batch {} x 1 x {} x {}, train: median over phases of {} steps ({} steps in all) after {} warm-up; inference: median of {} batches (none: NaN); {:.2} GFLOP per forward pass, {:.2} per train step\n\n\
         kernels: {}\n\n\
         | backend | train step (ms) | train images/s | train GFLOP/s | inference batch (ms) | inference GFLOP/s | GEMM GFLOP/s (same run) | train / GEMM rate | train step / {} | peak RSS (MiB) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        args.channels,
        dropout_per_level(args),
        args.batch_size,
        args.resolution,
        args.resolution,
        args.chunk.clamp(1, args.steps.max(1)),
        args.steps,
        args.warmup,
        args.inference_batches.unwrap_or(args.steps),
        forward / 1e9,
        3.0 * forward / 1e9,
        atso_harness::provenance::Machine::current().simd,
        results.first().map_or("first", |r| r.label.as_str())
    );
    for r in results {
        let train_rate = 3.0 * forward / r.train_seconds / 1e9;
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} |\n",
            r.label,
            1e3 * r.train_seconds,
            args.batch_size as f64 / r.train_seconds,
            train_rate,
            1e3 * r.inference_seconds,
            forward / r.inference_seconds / 1e9,
            r.gemm_gflops,
            train_rate / r.gemm_gflops,
            r.train_seconds / reference,
            r.peak_rss_mib.map_or("n/a".to_string(), |m| format!("{m:.0}"))
        ));
    }
    out
}

/// `--phases`: each configuration's step parts and CPU use, as a Markdown table.
pub fn phases_table(results: &[BenchResult]) -> String {
    let mut out = String::from(
        "Training step parts (`--phases`: medians of as many further steps, the device waited for at the start and after each part), and CPU seconds per wall second over the untimed steps: the process, the thread driving the training, and other threads using at least 5 % of a CPU\n\n\
         | backend | loss: batch, forward, read back (ms) | backward (ms) | update (ms) | parts' sum (ms) | train step, untimed (ms) | process CPU / wall | driving thread | other busy threads |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let ratio = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.2}"));
    for r in results {
        let Some(p) = &r.phases else { continue };
        let others: Vec<String> = p.cpu.others.iter().map(|(name, share)| format!("{name} {share:.2}")).collect();
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |\n",
            r.label,
            1e3 * p.loss,
            1e3 * p.backward,
            1e3 * p.update,
            1e3 * (p.loss + p.backward + p.update),
            1e3 * r.train_seconds,
            ratio(p.cpu.process),
            ratio(p.cpu.caller),
            if others.is_empty() { "none".to_string() } else { others.join(", ") }
        ));
    }
    out
}

/// What benchmarks/pytorch_unet.py reports.
#[derive(serde::Deserialize)]
struct PyTorchResult {
    version: String,
    threads: usize,
    train_seconds: f64,
    inference_seconds: f64,
    /// The PyTorch process's peak resident memory (older scripts do not report it).
    #[serde(default)]
    peak_rss_mib: Option<f64>,
    /// PyTorch's fp32 GEMM rate on the same device and threads (older scripts do not report it).
    #[serde(default)]
    gemm_gflops: Option<f64>,
    /// The instruction set ATen dispatched to (on the CPU; older scripts do not report it).
    #[serde(default)]
    cpu_capability: Option<String>,
    /// The caps on PyTorch's instruction sets in its environment, by variable.
    #[serde(default)]
    isa_caps: std::collections::BTreeMap<String, String>,
}

impl PyTorchResult {
    /// What PyTorch's CPU code ran with, for its line: ATen's choice and any caps.
    fn isa(&self) -> String {
        let caps: Vec<String> = self.isa_caps.iter().map(|(name, value)| format!("{name}={value}")).collect();
        match (&self.cpu_capability, caps.is_empty()) {
            (None, true) => String::new(),
            (capability, _) => format!(
                ", ATen {}{}",
                capability.as_deref().unwrap_or("n/a"),
                if caps.is_empty() {
                    String::new()
                } else {
                    format!(", capped: {}", caps.join(" "))
                }
            ),
        }
    }
}

fn pytorch(args: &BenchArgs) -> Result<PyTorchResult> {
    let relative = std::path::Path::new("benchmarks/pytorch_unet.py");
    let script = match &args.pytorch_script {
        Some(script) => script.clone(),
        None if relative.is_file() => relative.to_path_buf(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative),
    };
    if !script.is_file() {
        bail!("{} not found (give its path with --pytorch-script)", script.display());
    }
    let channels: Vec<String> = args.channels.iter().map(|c| c.to_string()).collect();
    let caps = match (args.pytorch_isa, args.pytorch_device.as_str()) {
        (PyTorchIsa::Same, "cpu") => pytorch_isa_caps(isa::current(), isa::detected()),
        _ => &[],
    };
    let output = std::process::Command::new("python3")
        .envs(caps.iter().copied().filter(|(name, _)| std::env::var_os(name).is_none()))
        .arg(&script)
        .args(["--batch-size", &args.batch_size.to_string()])
        .args(["--resolution", &args.resolution.to_string()])
        .args(["--channels", &channels.join(",")])
        .args([
            "--dropout",
            &dropout_per_level(args).iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","),
        ])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--threads", &args.threads.last().copied().unwrap_or(1).to_string()])
        .args(["--device", &args.pytorch_device])
        .arg("--json")
        .output()
        .context("running python3 (install PyTorch with `pip install torch` to compare)")?;
    if !output.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("{}: unexpected output", script.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One round prints as before; several print their medians (the mean of the middle two for
    /// an even count) and range.
    #[test]
    fn ratio_summaries() {
        let r = |train, inference| Ratios {
            train,
            inference,
            gemm: None,
        };
        assert_eq!(Ratios::summary(&[r(1.234, 0.9)]), "train 1.23x, inference 0.90x");
        assert_eq!(
            Ratios::summary(&[r(1.3, 1.0), r(1.1, 1.4), r(1.2, 1.2)]),
            "train 1.20x, inference 1.20x (medians of 3 alternating rounds; train 1.10x to 1.30x, inference 1.00x to 1.40x)"
        );
        assert!(Ratios::summary(&[r(1.0, 1.0), r(1.2, 1.1), r(2.0, 1.3), r(0.5, 1.5)])
            .starts_with("train 1.10x, inference 1.20x (medians of 4"));
    }

    /// PyTorch is capped only below what the CPU has, at AVX2 with AVX2 and at the three
    /// libraries' lowest settings with the portable kernels; its line says what it ran with.
    #[test]
    fn pytorch_caps_follow_the_kernels() {
        assert!(pytorch_isa_caps(Isa::Avx512, Isa::Avx512).is_empty());
        assert!(pytorch_isa_caps(Isa::Avx2, Isa::Avx2).is_empty());
        assert!(pytorch_isa_caps(Isa::Portable, Isa::Portable).is_empty());
        assert!(pytorch_isa_caps(Isa::Avx2, Isa::Avx512).contains(&("ONEDNN_MAX_CPU_ISA", "AVX2")));
        assert!(pytorch_isa_caps(Isa::Portable, Isa::Avx2).contains(&("ATEN_CPU_CAPABILITY", "default")));
        for (kernels, detected) in [(Isa::Avx2, Isa::Avx512), (Isa::Portable, Isa::Avx2)] {
            let names: Vec<_> = pytorch_isa_caps(kernels, detected).iter().map(|(name, _)| *name).collect();
            assert_eq!(names, ["ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"]);
        }
        let capped: PyTorchResult = serde_json::from_str(
            r#"{"version": "2", "threads": 2, "train_seconds": 0.3, "inference_seconds": 0.1,
                "cpu_capability": "AVX2", "isa_caps": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}"#,
        )
        .unwrap();
        assert_eq!(
            capped.isa(),
            ", ATen AVX2, capped: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
        );
    }

    /// PyTorch's GEMM line: medians over the rounds, the share's range; none where a script
    /// (an older one) reported no GEMM rate, which still parses.
    #[test]
    fn gemm_summaries() {
        let r = |gemm| Ratios {
            train: 1.0,
            inference: 1.0,
            gemm,
        };
        assert_eq!(
            Ratios::gemm_summary(&[r(Some((400.0, 0.3)))]).unwrap(),
            "400.0 GFLOP/s; atso trains at 0.30 of it"
        );
        assert_eq!(
            Ratios::gemm_summary(&[r(Some((400.0, 0.3))), r(Some((300.0, 0.4))), r(Some((350.0, 0.2)))]).unwrap(),
            "350.0 GFLOP/s (median of 3 rounds); atso trains at 0.30 of it (median; 0.20 to 0.40)"
        );
        assert_eq!(Ratios::gemm_summary(&[r(Some((400.0, 0.3))), r(None)]), None);
        let older: PyTorchResult =
            serde_json::from_str(r#"{"version": "2.0", "threads": 2, "train_seconds": 0.3, "inference_seconds": 0.1}"#).unwrap();
        assert_eq!((older.gemm_gflops, older.peak_rss_mib), (None, None));
    }

    #[test]
    fn flop_count_of_a_two_level_unet() {
        // input block 1->2 and 2->2 at 4x4; down block 2->4, 4->4 at 2x2; up: 1x1 4->2 at 2x2,
        // block 4->2, 2->2 at 4x4; head 2->3 at 4x4.
        let f = |ci: usize, co: usize, k: usize, s: usize| 2.0 * (ci * co * k * k * s * s) as f64;
        let expected =
            f(1, 2, 3, 4) + f(2, 2, 3, 4) + f(2, 4, 3, 2) + f(4, 4, 3, 2) + f(4, 2, 1, 2) + f(4, 2, 3, 4) + f(2, 2, 3, 4) + f(2, 3, 3, 4);
        assert_eq!(unet_forward_flops(&[2, 4], 4, 1, 3), expected);
    }
}
