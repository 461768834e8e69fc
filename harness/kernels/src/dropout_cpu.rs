//! Dropout in training on plain `f32` slices: burn's formula, `(x * mask) * (1 / (1 - prob))`,
//! with a mask that is recomputed from a seed instead of drawn element by element and stored.
//!
//! Why: burn draws a Bernoulli tensor from the device's generator one value at a time and then
//! multiplies twice; on flex that took tens of milliseconds per SSL4MIS training step. Here each
//! plane (one channel of one image) has its own ChaCha8 stream keyed by the call's seed, filled in
//! bulk, so planes are independent work for the threads, the mask depends neither on the thread
//! count nor on the CPU, and the backward pass regenerates it rather than keeping it alive.

use super::output::{self, Writer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One dropout: the drop probability, the seed its mask comes from and the plane length
/// (positions per channel) that splits the mask into streams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    pub prob: f64,
    pub seed: u64,
    pub plane: usize,
}

impl DropoutMask {
    /// The kept values' factor, `1 / (1 - prob)` as burn applies it.
    fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.prob)) as f32
    }

    /// The mask's value for a 32-bit draw: 1 (kept) with probability `1 - prob` to within 2^-33,
    /// else 0.
    #[inline(always)]
    fn kept(threshold: u64, draw: u32) -> f32 {
        if (draw as u64) < threshold {
            1.0
        } else {
            0.0
        }
    }

    /// The bound `kept` compares a draw with.
    fn threshold(&self) -> u64 {
        ((1.0 - self.prob) * 4_294_967_296.0).round() as u64
    }

    /// Calls `fill(draws, values, out)` for each plane of `values` (its stream's 32-bit draws,
    /// its values, its output), planes in parallel.
    fn for_each_plane(&self, values: &[f32], fill: impl Fn(&[u32], &[f32], &mut Writer) + Sync) -> Vec<f32> {
        assert!(
            self.plane > 0 && values.len().is_multiple_of(self.plane),
            "dropout: {} values are not whole planes of {}",
            values.len(),
            self.plane
        );
        assert!((0.0..1.0).contains(&self.prob), "dropout probability {} outside [0, 1)", self.prob);
        output::written_by_chunks(values.len(), self.plane, Vec::new, |draws, index, out| {
            let values = &values[index * self.plane..][..self.plane];
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(index as u64);
            draws.resize(self.plane, 0u32);
            rng.fill(&mut draws[..]);
            fill(draws, values, out);
        })
    }

    /// The mask as 0 / 1 values for `len` elements (for backends without this kernel).
    pub fn values(&self, len: usize) -> Vec<f32> {
        let threshold = self.threshold();
        self.for_each_plane(&vec![0.0; len], |draws, zeros, out| {
            out.zip_map(zeros, draws, |_, u| Self::kept(threshold, u))
        })
    }

    /// `(x * mask) * scale`, burn's forward operations.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (threshold, scale) = (self.threshold(), self.scale());
        self.for_each_plane(x, |draws, x, out| {
            out.zip_map(x, draws, |v, u| (v * Self::kept(threshold, u)) * scale)
        })
    }

    /// The input gradient from the output's: `(dy * scale) * mask`, the order burn's autodiff
    /// applies the two products' gradients in.
    pub fn backward(&self, output_grad: &[f32]) -> Vec<f32> {
        let (threshold, scale) = (self.threshold(), self.scale());
        self.for_each_plane(output_grad, |draws, dy, out| {
            out.zip_map(dy, draws, |g, u| (g * scale) * Self::kept(threshold, u))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: DropoutMask = DropoutMask {
        prob: 0.3,
        seed: 42,
        plane: 1000,
    };

    /// About `prob` of the elements are dropped, the rest scaled; the same seed gives the same
    /// mask and another seed another one.
    #[test]
    fn drops_about_prob_and_scales_the_rest() {
        let x: Vec<f32> = (0..20_000).map(|i| 1.0 + (i % 7) as f32).collect();
        let y = MASK.forward(&x);
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / x.len() as f64;
        assert!((dropped - 0.3).abs() < 0.015, "dropped fraction {dropped}");
        for (&a, &b) in x.iter().zip(&y) {
            assert!(b == 0.0 || b == a * MASK.scale(), "{a} -> {b}");
        }
        assert_eq!(MASK.forward(&x), y);
        assert_ne!(DropoutMask { seed: 43, ..MASK }.forward(&x), y);
    }

    /// The gradient passes where the forward pass kept a value, scaled the same way, and the
    /// mask's values agree with both.
    #[test]
    fn gradient_and_mask_agree_with_the_forward_pass() {
        let x: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin() + 2.0).collect();
        let (y, dx, mask) = (MASK.forward(&x), MASK.backward(&vec![1.0; 5000]), MASK.values(5000));
        for i in 0..5000 {
            assert_eq!(y[i] != 0.0, mask[i] == 1.0, "element {i}");
            assert_eq!(dx[i], mask[i] * MASK.scale(), "element {i}");
        }
    }

    /// Planes draw from their own streams: no plane repeats another's mask.
    #[test]
    fn planes_have_their_own_masks() {
        let mask = MASK.values(3000);
        assert_ne!(mask[..1000], mask[1000..2000]);
        assert_ne!(mask[1000..2000], mask[2000..]);
    }
}
