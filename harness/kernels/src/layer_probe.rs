//! Each pass of one U-Net level's convolution and batch norm timed alone, for
//! `atso bench --layers`.
//!
//! Why: on a shared or noisy host a whole training step moves by more than most kernel changes
//! (paired steps swung by +-15 % where a change was worth 4 %), while one layer's pass, repeated
//! and timed on its own, shows the change. The shapes are the U-Net's (3 x 3 kernels, padding 1,
//! as many channels out as in; batch norm in training mode with the LeakyReLU it is fused with).
//! Convolutions are reported in GFLOP/s counting real output positions only, so a kernel's rate
//! can be read against the GEMM rate of the same machine; batch norm, which streams its
//! activation (two passes forward plus the output, one plus the gradient backward), in
//! milliseconds. Each is the best of several calls after an untimed one: interference from other
//! tenants only ever adds time.

use std::time::Instant;

use super::batch_norm_cpu::{self, NormShape, Then};
use super::conv_cpu::{self, ConvShape};

/// One level's passes: its convolution's three in GFLOP/s, its batch norm's two in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerRates {
    pub channels: usize,
    pub size: usize,
    pub forward: f64,
    pub input_grad: f64,
    pub weight_grad: f64,
    pub norm_forward_ms: f64,
    pub norm_backward_ms: f64,
}

/// The U-Net's LeakyReLU slope, fused into the batch norm timed here.
const LEAKY_SLOPE: f32 = 0.01;

/// Times, over a batch of `batch` images of `size` x `size` with `channels` channels, the forward
/// pass, input gradient and weight gradient of a 3 x 3, padding-1 convolution from `channels` to
/// `channels` channels, and the forward and backward passes of a training-mode batch norm
/// followed by a LeakyReLU: the best of `calls` timed calls after one untimed, on the current
/// rayon pool. Inputs are fixed pseudo-random values, so every call does the same work.
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
    let norm = NormShape {
        batch,
        channels,
        positions: size * size,
    };
    let activations = batch * channels * size * size;
    let input = values(activations, 1);
    let weight = values(channels * channels * 9, 2);
    let bias = values(channels, 3);
    let output_grad = values(activations, 4);
    let (gamma, beta) = (values(channels, 5), values(channels, 6));
    let flops = 2.0 * (activations * channels * 9) as f64;
    let best_seconds = |pass: &dyn Fn()| {
        pass();
        (0..calls.max(1))
            .map(|_| {
                let clock = Instant::now();
                pass();
                clock.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let rate = |pass: &dyn Fn() -> Vec<f32>| {
        flops
            / best_seconds(&|| {
                std::hint::black_box(pass());
            })
            / 1e9
    };
    let then = Then::LeakyRelu(LEAKY_SLOPE);
    let statistics = batch_norm_cpu::forward(&input, &gamma, &beta, 1e-5, &norm, then);
    LayerRates {
        channels,
        size,
        forward: rate(&|| conv_cpu::forward(&input, &weight, &bias, &shape)),
        input_grad: rate(&|| conv_cpu::input_grad(&weight, &output_grad, &shape)),
        weight_grad: rate(&|| conv_cpu::weight_grad(&input, &output_grad, &shape)),
        norm_forward_ms: 1e3
            * best_seconds(&|| {
                std::hint::black_box(batch_norm_cpu::forward(&input, &gamma, &beta, 1e-5, &norm, then));
            }),
        norm_backward_ms: 1e3
            * best_seconds(&|| {
                let (mean, variance) = (&statistics.mean, &statistics.variance);
                std::hint::black_box(batch_norm_cpu::backward(
                    &input,
                    &gamma,
                    &beta,
                    mean,
                    variance,
                    1e-5,
                    &output_grad,
                    &norm,
                    then,
                ));
            }),
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

    /// The probe runs each pass at a small shape and reports a finite, positive rate or time for
    /// each (what it measures is timing; this checks only that it measures).
    #[test]
    fn every_pass_is_timed() {
        let rates = layer_rates(8, 12, 2, 2);
        assert_eq!((rates.channels, rates.size), (8, 12));
        for value in [
            rates.forward,
            rates.input_grad,
            rates.weight_grad,
            rates.norm_forward_ms,
            rates.norm_backward_ms,
        ] {
            assert!(value.is_finite() && value > 0.0, "{rates:?}");
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
