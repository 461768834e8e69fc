//! How a sweep looks to the person running it: one bar over runs and one line per active run
//! (step / total, loss, lr, ETA) on a terminal, with log lines printed above the bars; plain
//! lines (run started, progress every tenth of a run or minute, run finished) when stderr is
//! not a terminal, so redirected logs hold no escape codes.

use atso_harness::progress::{Event, Sink};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The bars of this process, when it draws any: log lines go through it (see [`LogWriter`]).
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Renders sweep events on stderr.
pub struct View {
    bars: Option<(MultiProgress, ProgressBar)>,
    runs: HashMap<String, ProgressBar>,
    plain_last: HashMap<String, (Instant, usize)>,
    finished: usize,
    total: usize,
}

impl View {
    /// Bars when `terminal`, plain lines otherwise.
    pub fn new(terminal: bool) -> Self {
        let bars = terminal.then(|| {
            let multi = BARS
                .get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
                .clone();
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} runs [{elapsed_precise}, ETA {eta}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            (multi, overall)
        });
        Self {
            bars,
            runs: HashMap::new(),
            plain_last: HashMap::new(),
            finished: 0,
            total: 0,
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Clears the bars at the end of a sweep.
    pub fn finish(&mut self) {
        if let Some((_, overall)) = &self.bars {
            overall.finish_and_clear();
        }
        for (_, bar) in self.runs.drain() {
            bar.finish_and_clear();
        }
    }
}

impl Sink for View {
    fn emit(&mut self, event: &Event) {
        match event {
            Event::Planned { runs, to_run } => {
                self.total += to_run;
                if let Some((_, overall)) = &self.bars {
                    overall.set_length(self.total as u64);
                }
                if *to_run < *runs {
                    self.line(&format!("{} of {runs} runs to do (the rest are recorded or claimed)", to_run));
                }
            }
            Event::Started { run, steps } => match &self.bars {
                Some((multi, _)) => {
                    let bar = multi.add(ProgressBar::new(*steps as u64));
                    bar.set_style(
                        ProgressStyle::with_template("  {prefix} {bar:20} {pos}/{len} steps {msg} ETA {eta}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_prefix(run.clone());
                    self.runs.insert(run.clone(), bar);
                }
                None => {
                    eprintln!("started  {run} ({steps} steps)");
                    self.plain_last.insert(run.clone(), (Instant::now(), 0));
                }
            },
            Event::Step {
                run,
                done,
                total,
                loss,
                lr,
            } => match self.runs.get(run) {
                Some(bar) => {
                    bar.set_position(*done as u64);
                    bar.set_message(format!("loss {loss:.3} lr {lr:.2e}"));
                }
                None => {
                    let entry = self.plain_last.entry(run.clone()).or_insert((Instant::now(), 0));
                    let tenth = (*total / 10).max(1);
                    if done / tenth > entry.1 / tenth || entry.0.elapsed() > Duration::from_secs(60) {
                        eprintln!("progress {run}: step {done}/{total}, loss {loss:.4}, lr {lr:.2e}");
                        *entry = (Instant::now(), *done);
                    }
                }
            },
            Event::Finished {
                run,
                ok,
                dice,
                seconds,
                error,
            } => {
                if let Some(bar) = self.runs.remove(run) {
                    bar.finish_and_clear();
                }
                self.plain_last.remove(run);
                self.finished += 1;
                if let Some((_, overall)) = &self.bars {
                    overall.set_position(self.finished as u64);
                }
                let text = if *ok {
                    format!(
                        "ok       {run} in {seconds:.0} s, test Dice {}",
                        dice.map_or("-".into(), |d| format!("{:.1} %", 100.0 * d))
                    )
                } else {
                    format!(
                        "FAILED   {run} after {seconds:.0} s: {}",
                        error.as_deref().unwrap_or("").lines().next().unwrap_or("")
                    )
                };
                self.line(&text);
            }
            Event::Skipped { .. } => {}
            Event::Note { message } => self.line(message),
        }
    }
}

/// A `tracing` writer that prints above the bars while they are drawn.
#[derive(Default)]
pub struct LogWriter(Vec<u8>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        match BARS.get() {
            Some(multi) if !multi.is_hidden() => {
                let _ = multi.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }
}
