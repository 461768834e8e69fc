//! One point of a run's training curve as records keep it (the engine decides which steps are
//! points: `train::curves` in atso-harness).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
