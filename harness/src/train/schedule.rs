//! Learning-rate schedule: SSL4MIS's poly decay, `lr * (1 - t / T) ^ power`, either restarted
//! for every training phase (the supervised model M0 and each fine-tuning stage of a staged
//! method: the default) or spanning the whole run.
//!
//! Why per phase by default: with one schedule over the run, a staged method trains M0 at a high
//! learning rate that is never annealed, and its last stages run at a learning rate near zero
//! (a 200-step run's fourth stage went from 0.009 to 0.0004), so stages differ in what they can
//! learn for reasons that have nothing to do with their pseudo labels. Single-phase methods
//! (supervised, mean teacher) get the same schedule either way.

use serde::{Deserialize, Serialize};

/// How the poly schedule maps onto a run's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleScope {
    /// Restart the poly decay at every phase, over that phase's steps.
    #[default]
    PerPhase,
    /// One poly decay over the run's whole budget.
    Run,
}

/// Poly decay over a total of `total` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolySchedule {
    pub base_lr: f64,
    pub power: f64,
    pub total: usize,
}

impl PolySchedule {
    /// Learning rate at global step `step` (0-based); 0 once `step >= total`.
    pub fn lr(&self, step: usize) -> f64 {
        if self.total == 0 || step >= self.total {
            return 0.0;
        }
        self.base_lr * (1.0 - step as f64 / self.total as f64).powf(self.power)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_values_at_known_points() {
        let s = PolySchedule {
            base_lr: 0.01,
            power: 0.9,
            total: 100,
        };
        assert_eq!(s.lr(0), 0.01);
        assert!((s.lr(50) - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-12);
        assert!(s.lr(99) > 0.0 && s.lr(99) < s.lr(98));
        assert_eq!(s.lr(100), 0.0);
    }
}
