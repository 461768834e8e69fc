//! `--jobs N`: independent runs in parallel, as N worker processes over one results folder.
//!
//! Processes, not threads: the CPU backend keeps one random stream per process (dropout), and a
//! process per run keeps every run's arithmetic identical to a serial sweep with the same thread
//! count. Each worker walks the whole run list and claims runs before it starts them (see
//! `runner::claims`), so the work spreads by itself and no run is done twice; workers report
//! their events as JSON lines, which this process draws as one view.

use anyhow::{bail, Context, Result};
use atso_harness::backend::Backend;
use atso_harness::config::Experiment;
use atso_harness::data::dataset::Format;
use atso_harness::data::phantom::PhantomFormat;
use atso_harness::progress::{Event, Sink};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// How many runs go in parallel and with how many threads each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub jobs: usize,
    pub threads: usize,
}

/// Picks jobs x threads for `cores` cores. Parallel runs use the machine better than threads
/// inside one run (at small sizes the second thread of a run buys nothing: docs/benchmarks.md),
/// so the default is one single-threaded run per core, fewer when the runs' estimated memory
/// would not fit in half of the available memory, and one run (all cores) on a GPU backend.
pub fn choose(experiment: &Experiment, backend: Backend, cores: usize, available_memory: Option<u64>) -> (Plan, String) {
    if backend != Backend::Flex {
        return (
            Plan { jobs: 1, threads: cores },
            format!("1 run at a time on the {backend} backend"),
        );
    }
    let per_run = estimated_run_bytes(experiment);
    let by_memory = available_memory.map_or(cores, |m| ((m / 2) / per_run.max(1)).max(1) as usize);
    let jobs = cores.min(by_memory).max(1);
    let threads = (cores / jobs).max(1);
    let why = format!(
        "{jobs} run(s) in parallel, {threads} thread(s) each ({cores} cores; about {} MiB per run{})",
        per_run >> 20,
        if by_memory < cores { ", limited by memory" } else { "" }
    );
    (Plan { jobs, threads }, why)
}

/// Refuses a sweep whose single run is estimated to need more memory than the machine has
/// available (MemAvailable), before anything starts, naming what drives the estimate; `ignore`
/// (`--ignore-memory-estimate`) lets a user who knows better go on.
pub fn check_memory(experiment: &Experiment, available: Option<u64>, ignore: bool) -> Result<()> {
    let per_run = estimated_run_bytes(experiment);
    match available {
        Some(available) if per_run > available && !ignore => bail!(
            "a run of {} is estimated to need about {} MiB, more than the {} MiB this machine has available; \
             the estimate grows with budget.batch_size, model.channels, the square of budget.resolution and \
             the datasets' slice count: lower them, or pass --ignore-memory-estimate to run anyway",
            experiment.name,
            per_run >> 20,
            available >> 20
        ),
        _ => Ok(()),
    }
}

/// A rough upper bound of one run's memory: activations of a training step (forward and
/// backward, a dozen buffers per level) plus the dataset's slices held several times over.
fn estimated_run_bytes(experiment: &Experiment) -> u64 {
    // Saturating: absurd settings (a million images a batch) must give a huge estimate, not wrap.
    let b = &experiment.budget;
    let pixels = (b.resolution as u64).saturating_mul(b.resolution as u64);
    let activations: u64 = experiment
        .model
        .channels
        .iter()
        .enumerate()
        .map(|(level, &c)| {
            (b.batch_size as u64)
                .saturating_mul(c as u64)
                .saturating_mul(pixels >> (2 * level).min(63))
                .saturating_mul(4 * 12)
        })
        .fold(0, u64::saturating_add);
    let slices: u64 = experiment
        .datasets
        .iter()
        .map(|d| match &d.format {
            Format::Phantom(PhantomFormat { phantom: Some(p) }) => (p.cases as u64).saturating_mul(p.slices as u64),
            _ => 2000,
        })
        .max()
        .unwrap_or(2000);
    activations
        .saturating_add(slices.saturating_mul(pixels).saturating_mul(5 * 4))
        .saturating_add(256 << 20)
}

/// MemAvailable from /proc/meminfo.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

enum Message {
    Event(Event),
    Log(String),
}

/// A worker must not outlive the sweep that started it: a parent killed (by the user, by a
/// scheduler's time limit) would otherwise leave its workers training to the end, holding
/// claims nobody watches. On Linux the kernel kills them with the parent (a parent-death
/// signal, set in the child before it runs the worker; the parent's main thread starts
/// workers and lives as long as the sweep). A worker's claim is a file lock, freed as it dies;
/// its checkpoint lets the next sweep resume the run; what it was writing is cleared then.
trait DieWithParent {
    fn die_with_parent(&mut self) -> &mut Self;
}

impl DieWithParent for Command {
    #[cfg(target_os = "linux")]
    fn die_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls: prctl, getppid, raise.
        unsafe {
            self.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the signal was armed.
                if libc::getppid() as u32 != parent {
                    libc::raise(libc::SIGKILL);
                }
                Ok(())
            })
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn die_with_parent(&mut self) -> &mut Self {
        self
    }
}

/// Starts `plan.jobs` workers running `worker_args` (the sweep's own arguments plus the worker
/// flags) and draws their events into `view` until all have finished. Returns how many runs
/// finished ok, failed, and were recorded before the sweep started.
pub fn run_workers(plan: Plan, worker_args: &[String], view: &mut dyn Sink) -> Result<(usize, usize, usize)> {
    let exe = std::env::current_exe().context("finding the atso executable to start workers")?;
    let (sender, receiver) = mpsc::channel::<Message>();
    let mut children = Vec::new();
    for _ in 0..plan.jobs {
        let mut child = Command::new(&exe)
            .args(worker_args)
            .args(["--threads", &plan.threads.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .die_with_parent()
            .spawn()
            .with_context(|| format!("starting worker {}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let events = sender.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let message = serde_json::from_str::<Event>(&line).map_or(Message::Log(line), Message::Event);
                if events.send(message).is_err() {
                    break;
                }
            }
        });
        let logs = sender.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if logs.send(Message::Log(line)).is_err() {
                    break;
                }
            }
        });
        children.push(child);
    }
    drop(sender);
    let (mut ok, mut failed, mut recorded) = (0, 0, 0);
    let mut planned = false;
    for message in receiver {
        match message {
            // Every worker plans the same list; the view needs it once.
            Message::Event(Event::Planned { runs, to_run }) => {
                if !planned {
                    view.emit(&Event::Planned { runs, to_run });
                    recorded = runs - to_run;
                    planned = true;
                }
            }
            Message::Event(event) => {
                if let Event::Finished { ok: was_ok, .. } = &event {
                    if *was_ok {
                        ok += 1
                    } else {
                        failed += 1
                    }
                }
                view.emit(&event);
            }
            Message::Log(line) => view.emit(&Event::Note { message: line }),
        }
    }
    let mut crashed = Vec::new();
    for mut child in children {
        let status = child.wait()?;
        if !matches!(status.code(), Some(0) | Some(3)) {
            crashed.push(status.to_string());
        }
    }
    if !crashed.is_empty() {
        bail!(
            "{} worker(s) stopped abnormally ({}); their runs are listed by `atso status`",
            crashed.len(),
            crashed.join(", ")
        );
    }
    Ok((ok, failed, recorded))
}
