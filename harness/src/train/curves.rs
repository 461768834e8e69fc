//! Training curves: what a run's loss, its parts and its learning rate did over the steps, kept
//! at the progress interval so a reader can look at a run instead of reading its log.
//!
//! The engine reads losses from the device in batches (one transaction per progress interval and
//! per phase end), never inside a step; a curve point is one step's values as read then: the total
//! loss, the named parts an objective reports for that step (supervised, pseudo-label,
//! consistency and its weight), the learning rate, and the phase the step belongs to. Points sit
//! at every `every`-th step of the run and at the last step of every phase, so each phase's end
//! is on the curve.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Steps between two progress reports (and curve points) of a run of `total_steps`: a hundredth
/// of the budget, at least one.
pub fn progress_every(total_steps: usize) -> usize {
    (total_steps / 100).max(1)
}

/// One point of a run's training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Steps taken in the run after this step (1-based global step).
    pub step: usize,
    /// The phase's index in the run (1-based, in the order phases ran).
    pub phase: usize,
    /// What the phase is: "run" for a single-phase method, "M0" and "stage k" for staged ones.
    pub phase_name: String,
    pub lr: f64,
    /// The loss that was optimised at this step.
    #[serde(with = "crate::json_float::plain")]
    pub loss: f64,
    /// Named parts of the loss and the host-side numbers behind it, as the objective reports them.
    #[serde(default, with = "crate::json_float::map")]
    pub parts: BTreeMap<String, f64>,
    /// Mean validation Dice at this step, where `[evaluation] validation_every` asks for it.
    #[serde(default, with = "crate::json_float::option")]
    pub validation_dice: Option<f64>,
    /// Seconds since the run's engine started when this point's loss was read (wall time:
    /// for TensorBoard's time axis, not a benchmark).
    #[serde(default)]
    pub seconds: f64,
}

/// Whether the values of the step after which `done` steps are taken go into the curve: every
/// `every`-th step of the run, and the last step of a phase.
pub fn is_recorded(done: usize, every: usize, last_of_phase: bool) -> bool {
    last_of_phase || done.is_multiple_of(every.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_fall_on_the_interval_and_on_phase_ends() {
        assert_eq!(progress_every(50), 1);
        assert_eq!(progress_every(1200), 12);
        let recorded: Vec<usize> = (1..=30).filter(|&done| is_recorded(done, 12, done == 17 || done == 30)).collect();
        assert_eq!(recorded, [12, 17, 24, 30]);
    }
}
