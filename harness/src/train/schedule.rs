//! Learning-rate schedule: SSL4MIS's poly decay, `lr * (1 - t / T) ^ power`.

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
