//! Each pass of one convolution layer timed alone, for `atso bench --layers`.
//!
//! Why: on a shared or noisy host a whole training step moves by more than most kernel changes
//! (paired steps swung by +-15 % where a change was worth 4 %), while one layer's pass, repeated
//! and timed on its own, shows the change. The shapes are the U-Net's (3 x 3 kernels, padding 1,
//! as many channels out as in); the numbers are GFLOP/s counting real output positions only, the
//! best of several calls after an untimed one, so a kernel's rate can be read against the GEMM
//! rate of the same machine.

use std::time::Instant;

use super::conv_cpu::{self, ConvShape};

/// One layer's three passes, in GFLOP/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerRates {
    pub channels: usize,
    pub size: usize,
    pub forward: f64,
    pub input_grad: f64,
    pub weight_grad: f64,
}

/// Times the forward pass, input gradient and weight gradient of a 3 x 3, padding-1 convolution
/// from `channels` to `channels` channels over a batch of `batch` images of `size` x `size`: the
/// best of `calls` timed calls after one untimed, on the current rayon pool. Inputs are fixed
/// pseudo-random values, so every call does the same work.
pub fn layer_rates(channels: usize, size: usize, batch: usize, calls: usize) -> LayerRates {
    let shape = ConvShape {
        batch,
        channels_in: channels,
        channels_out: channels,
        height: size,
        width: size,
        kernel: [3, 3],
        padding: 1,
    };
    let activations = batch * channels * size * size;
    let input = values(activations, 1);
    let weight = values(channels * channels * 9, 2);
    let bias = values(channels, 3);
    let output_grad = values(activations, 4);
    let flops = 2.0 * (activations * channels * 9) as f64;
    let rate = |pass: &dyn Fn() -> Vec<f32>| {
        std::hint::black_box(pass());
        let best = (0..calls.max(1))
            .map(|_| {
                let clock = Instant::now();
                std::hint::black_box(pass());
                clock.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        flops / best / 1e9
    };
    LayerRates {
        channels,
        size,
        forward: rate(&|| conv_cpu::forward(&input, &weight, &bias, &shape)),
        input_grad: rate(&|| conv_cpu::input_grad(&weight, &output_grad, &shape)),
        weight_grad: rate(&|| conv_cpu::weight_grad(&input, &output_grad, &shape)),
    }
}

/// `len` values in [-1, 1) from a multiplicative hash of their index and `seed`.
fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| {
            let h = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503))
                .rotate_left(13);
            (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe runs each pass at a small shape and reports a finite, positive rate for each
    /// (what it measures is timing; this checks only that it measures).
    #[test]
    fn every_pass_is_timed() {
        let rates = layer_rates(8, 12, 2, 2);
        assert_eq!((rates.channels, rates.size), (8, 12));
        for rate in [rates.forward, rates.input_grad, rates.weight_grad] {
            assert!(rate.is_finite() && rate > 0.0, "{rates:?}");
        }
    }

    #[test]
    fn inputs_are_spread_over_the_unit_interval() {
        let v = values(10_000, 7);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert_ne!(values(100, 1), values(100, 2));
    }
}
