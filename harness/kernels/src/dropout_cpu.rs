//! Dropout in training on plain `f32` slices: burn's formula, `(x * mask) * (1 / (1 - prob))`,
//! with a mask that is computed from a seed instead of drawn element by element.
//!
//! Why: burn draws a Bernoulli tensor from the device's generator one value at a time and then
//! multiplies twice; on flex that took tens of milliseconds per SSL4MIS training step. Here each
//! plane (one channel of one image) has its own ChaCha8 stream keyed by the call's seed, filled in
//! bulk, so planes are independent work for the threads and the mask depends neither on the
//! thread count nor on the CPU. The first pass that needs the mask draws it and keeps it in the
//! `DropoutMask`, a byte per element, for the backward pass: drawing it again there had been
//! about 2 % of a training step's CPU time, keeping it costs a quarter of the input's size
//! until the backward pass has run.

use std::sync::{Arc, Mutex, OnceLock};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::output;

/// One dropout: the drop probability, the seed its mask comes from and the plane length
/// (positions per channel) that splits the mask into streams; and, once a pass has drawn it, the
/// mask itself (shared by the clones, so the backward pass's copy sees the forward pass's draw).
/// The fields are fixed at `new`: a clone with another seed would still read the first draw.
#[derive(Debug, Clone)]
pub struct DropoutMask {
    prob: f64,
    seed: u64,
    plane: usize,
    drawn: Drawn,
}

/// The mask's bytes (1 kept, 0 dropped) once drawn.
#[derive(Clone, Default)]
struct Drawn(Arc<OnceLock<Box<[u8]>>>);

impl std::fmt::Debug for Drawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(kept) => write!(f, "drawn ({} values)", kept.len()),
            None => write!(f, "not drawn"),
        }
    }
}

impl DropoutMask {
    /// A mask not drawn yet.
    pub fn new(prob: f64, seed: u64, plane: usize) -> Self {
        Self {
            prob,
            seed,
            plane,
            drawn: Drawn::default(),
        }
    }

    /// The drop probability.
    pub fn prob(&self) -> f64 {
        self.prob
    }

    /// The kept values' factor, `1 / (1 - prob)` as burn applies it.
    fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.prob)) as f32
    }

    /// The bound a 32-bit draw is compared with: below it (probability `1 - prob` to within
    /// 2^-33) the value is kept.
    fn threshold(&self) -> u64 {
        ((1.0 - self.prob) * 4_294_967_296.0).round() as u64
    }

    /// Whether a pass has drawn the mask (and later ones read it).
    pub fn is_drawn(&self) -> bool {
        self.drawn.0.get().is_some()
    }

    /// Panics unless `len` values are whole planes and the probability is below 1.
    fn check(&self, len: usize) {
        assert!(
            self.plane > 0 && len.is_multiple_of(self.plane),
            "dropout: {len} values are not whole planes of {}",
            self.plane
        );
        assert!((0.0..1.0).contains(&self.prob), "dropout probability {} outside [0, 1)", self.prob);
    }

    /// Plane `index`'s mask into `bytes` (1 kept, 0 dropped), from the plane's own stream, drawn
    /// into `draws` first.
    fn draw_plane(&self, index: usize, draws: &mut Vec<u32>, bytes: &mut [u8]) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index as u64);
        draws.resize(self.plane, 0);
        rng.fill(&mut draws[..]);
        // `draw < threshold` in 32 bits (vectorized; in 64 bits it was half the draws' time),
        // where a threshold of 2^32 keeps every value.
        match u32::try_from(self.threshold()) {
            Ok(threshold) => {
                for (byte, &draw) in bytes.iter_mut().zip(draws.iter()) {
                    *byte = u8::from(draw < threshold);
                }
            }
            Err(_) => bytes.fill(1),
        }
    }

    /// Keeps `kept` as the drawn mask (a concurrent draw of the same mask drew the same bytes).
    fn keep(&self, kept: Box<[u8]>) {
        let _ = self.drawn.0.set(kept);
    }

    /// The mask for `len` elements, a byte each (1 kept, 0 dropped): drawn on first use, planes
    /// in parallel; the same bytes after that.
    fn kept(&self, len: usize) -> &[u8] {
        self.check(len);
        if !self.is_drawn() {
            let mut kept = vec![0u8; len].into_boxed_slice();
            kept.par_chunks_mut(self.plane)
                .enumerate()
                .with_max_len(output::leaf_len(len / self.plane))
                .for_each_init(Vec::new, |draws, (index, bytes)| self.draw_plane(index, draws, bytes));
            self.keep(kept);
        }
        let kept = self.drawn.0.get().expect("drawn above");
        assert_eq!(kept.len(), len, "dropout: a mask drawn for {} values used for {len}", kept.len());
        kept
    }

    /// `f(value, kept)` for each value, planes in parallel, `kept` 1.0 or 0.0.
    fn with_mask(&self, values: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
        let kept = self.kept(values.len());
        output::written(values.len(), self.plane, |index, out| {
            let range = index * self.plane..(index + 1) * self.plane;
            out.zip_map(&values[range.clone()], &kept[range], |v, k| f(v, f32::from(k)))
        })
    }

    /// The mask as 0 / 1 values for `len` elements (for backends without this kernel).
    pub fn values(&self, len: usize) -> Vec<f32> {
        self.with_mask(&vec![0.0; len], |_, k| k)
    }

    /// `(x * mask) * scale`, burn's forward operations. A mask not drawn yet is drawn in the same
    /// pass, each plane's while its values are in the core's cache (a pass of its own first made
    /// the forward pass as much slower as reading the kept mask made the backward pass faster).
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let scale = self.scale();
        if self.is_drawn() {
            return self.with_mask(x, |v, k| (v * k) * scale);
        }
        self.check(x.len());
        let mut kept = vec![0u8; x.len()].into_boxed_slice();
        // Each plane's bytes are its task's alone; the lock only hands them over.
        let planes: Vec<Mutex<&mut [u8]>> = kept.chunks_mut(self.plane).map(Mutex::new).collect();
        let y = output::written_by_chunks(x.len(), self.plane, Vec::new, |draws, index, out| {
            // Taken once, by the plane's only task: never poisoned when it is taken.
            let mut bytes = planes[index].lock().expect("a plane's lock is taken once");
            self.draw_plane(index, draws, &mut bytes);
            let values = &x[index * self.plane..][..self.plane];
            out.zip_map(values, &bytes, |v, k| (v * f32::from(k)) * scale)
        });
        drop(planes);
        self.keep(kept);
        // The kept mask's length checked (a clone may have drawn first, for another length).
        self.kept(x.len());
        y
    }

    /// The input gradient from the output's: `(dy * scale) * mask`, the order burn's autodiff
    /// applies the two products' gradients in.
    pub fn backward(&self, output_grad: &[f32]) -> Vec<f32> {
        let scale = self.scale();
        self.with_mask(output_grad, |g, k| (g * scale) * k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mask not drawn yet.
    fn mask() -> DropoutMask {
        DropoutMask::new(0.3, 42, 1000)
    }

    /// About `prob` of the elements are dropped, the rest scaled; the same seed gives the same
    /// mask and another seed another one.
    #[test]
    fn drops_about_prob_and_scales_the_rest() {
        let x: Vec<f32> = (0..20_000).map(|i| 1.0 + (i % 7) as f32).collect();
        let y = mask().forward(&x);
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / x.len() as f64;
        assert!((dropped - 0.3).abs() < 0.015, "dropped fraction {dropped}");
        for (&a, &b) in x.iter().zip(&y) {
            assert!(b == 0.0 || b == a * mask().scale(), "{a} -> {b}");
        }
        assert_eq!(mask().forward(&x), y);
        assert_ne!(DropoutMask::new(0.3, 43, 1000).forward(&x), y);
    }

    /// The gradient passes where the forward pass kept a value, scaled the same way, and the
    /// mask's values agree with both.
    #[test]
    fn gradient_and_mask_agree_with_the_forward_pass() {
        let x: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin() + 2.0).collect();
        let (y, dx, kept) = (mask().forward(&x), mask().backward(&vec![1.0; 5000]), mask().values(5000));
        for i in 0..5000 {
            assert_eq!(y[i] != 0.0, kept[i] == 1.0, "element {i}");
            assert_eq!(dx[i], kept[i] * mask().scale(), "element {i}");
        }
    }

    /// Planes draw from their own streams: no plane repeats another's mask.
    #[test]
    fn planes_have_their_own_masks() {
        let kept = mask().values(3000);
        assert_ne!(kept[..1000], kept[1000..2000]);
        assert_ne!(kept[1000..2000], kept[2000..]);
    }

    /// The forward pass draws the mask once for its clones (the backward pass's copy): the
    /// gradient read from that draw has the bits of one drawn afresh from the seed.
    #[test]
    fn the_backward_pass_reads_the_forward_pass_draw() {
        let x: Vec<f32> = (0..4000).map(|i| (i as f32 * 0.11).cos()).collect();
        let forward = mask();
        let kept_for_backward = forward.clone();
        assert!(!kept_for_backward.is_drawn());
        forward.forward(&x);
        assert!(kept_for_backward.is_drawn(), "a clone shares the forward pass's draw");
        let bits = |v: Vec<f32>| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(kept_for_backward.backward(&x)), bits(mask().backward(&x)));
    }

    /// A mask drawn for one length refuses another (it describes one tensor).
    #[test]
    #[should_panic(expected = "a mask drawn for 2000 values used for 3000")]
    fn a_drawn_mask_refuses_another_length() {
        let kept = mask();
        kept.values(2000);
        kept.values(3000);
    }
}
