//! What a sweep reports while it works: run started, step progress, run finished or skipped.
//!
//! Workers emit [`Event`]s into a [`Sink`]; the command line renders them (progress bars on a
//! terminal, plain lines otherwise), a worker process started by `--jobs` writes them as JSON
//! lines for its parent, and every run's events also go to its own log file in the results
//! folder (`logs/<run_id>.log`: the one file the harness appends to instead of writing whole, so
//! a run of hours can be watched; the harness never reads it back).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One thing a sweep did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The sweep knows how many runs it covers.
    Planned {
        runs: usize,
        to_run: usize,
    },
    Started {
        run: String,
        steps: usize,
    },
    Step {
        run: String,
        done: usize,
        total: usize,
        loss: f64,
        lr: f64,
    },
    Finished {
        run: String,
        ok: bool,
        dice: Option<f64>,
        seconds: f64,
        error: Option<String>,
    },
    /// A run not run by this worker: already recorded, or claimed by another process.
    Skipped {
        run: String,
        reason: String,
    },
    /// A message for the person watching (warnings).
    Note {
        message: String,
    },
}

/// Where events go.
pub trait Sink: Send {
    fn emit(&mut self, event: &Event);
}

/// A sink shared between the sweep loop and the engine's step callback.
pub type SharedSink = Arc<Mutex<dyn Sink>>;

/// Discards events.
pub struct Quiet;

impl Sink for Quiet {
    fn emit(&mut self, _event: &Event) {}
}

/// Writes each event as one JSON line (a worker process talking to its parent).
pub struct JsonLines<W: Write + Send>(pub W);

impl<W: Write + Send> Sink for JsonLines<W> {
    fn emit(&mut self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let _ = writeln!(self.0, "{line}");
            let _ = self.0.flush();
        }
    }
}

/// Forwards to an inner sink and appends a plain line per event to a run's log file (step
/// lines at most every `every` steps).
pub struct RunLog {
    inner: SharedSink,
    file: Option<std::fs::File>,
    every: usize,
}

impl RunLog {
    /// Opens (creating) `path` for appending; a log that cannot be opened only costs the log.
    pub fn open(inner: SharedSink, path: &Path, total_steps: usize) -> Self {
        let file = path
            .parent()
            .and_then(|dir| std::fs::create_dir_all(dir).ok())
            .and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(path).ok());
        Self {
            inner,
            file,
            every: crate::train::curves::progress_every(total_steps),
        }
    }
}

impl Sink for RunLog {
    fn emit(&mut self, event: &Event) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.emit(event);
        }
        let Some(file) = self.file.as_mut() else { return };
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        let line = match event {
            Event::Step { done, total, loss, lr, .. } if done % self.every == 0 || done == total => {
                Some(format!("{now} step {done}/{total} loss {loss:.4} lr {lr:.3e}"))
            }
            Event::Step { .. } | Event::Planned { .. } => None,
            Event::Started { run, steps } => Some(format!("{now} started {run} ({steps} steps)")),
            Event::Finished {
                ok, dice, seconds, error, ..
            } => Some(match (ok, error) {
                (true, _) => format!(
                    "{now} finished ok in {seconds:.1} s, test Dice {}",
                    dice.map_or("-".into(), |d| format!("{:.4}", d))
                ),
                (false, e) => format!("{now} failed after {seconds:.1} s: {}", e.as_deref().unwrap_or("")),
            }),
            Event::Skipped { run, reason } => Some(format!("{now} skipped {run}: {reason}")),
            Event::Note { message } => Some(format!("{now} {message}")),
        };
        if let Some(line) = line {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// Emits into a shared sink.
pub fn emit(sink: &SharedSink, event: Event) {
    if let Ok(mut sink) = sink.lock() {
        sink.emit(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_json_lines_and_logs_are_written() {
        let event = Event::Step {
            run: "r".into(),
            done: 5,
            total: 10,
            loss: 0.5,
            lr: 0.01,
        };
        let mut buffer = Vec::new();
        JsonLines(&mut buffer).emit(&event);
        let line = String::from_utf8(buffer).unwrap();
        assert_eq!(serde_json::from_str::<Event>(line.trim()).unwrap(), event);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/r.log");
        let quiet: SharedSink = Arc::new(Mutex::new(Quiet));
        let mut log = RunLog::open(quiet, &path, 10);
        log.emit(&Event::Started {
            run: "r".into(),
            steps: 10,
        });
        log.emit(&event);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("started r") && text.contains("step 5/10"), "{text}");
    }
}
