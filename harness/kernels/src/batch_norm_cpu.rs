//! Batch normalization in training mode on plain `f32` slices in NCHW order: statistics, output
//! and gradients in a few passes over the activation.
//!
//! Why: burn's default (which flex uses) builds the statistics and the gradient from a dozen
//! generic ops, several of them transposing the whole activation. Here each channel's sums are
//! one pass in `f64`, computed by one thread in a fixed order, so results do not depend on the
//! thread count.

pub use super::channel_sums::NormShape;
use super::channel_sums::{channel_sums, NormGradients, SquaredDeviations, Values};
use super::elementwise;
use super::output::{self, Writer};

/// What the forward pass returns: the output, and the batch mean and biased variance per channel.
pub struct NormForward {
    pub output: Vec<f32>,
    pub mean: Vec<f32>,
    pub variance: Vec<f32>,
}

/// What follows the normalization inside the same op. A LeakyReLU fused here saves a pass over
/// the activation in each direction: its backward step recomputes the normalized value from the
/// input (the same operations, so the same bits) instead of reading a stored one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Then {
    Nothing,
    /// burn's LeakyReLU with this negative slope.
    LeakyRelu(f32),
}

impl Then {
    #[inline(always)]
    fn value(self, y: f32) -> f32 {
        match self {
            Then::Nothing => y,
            Then::LeakyRelu(slope) => elementwise::leaky(y, slope),
        }
    }

    /// The LeakyReLU's negative slope, if one follows.
    fn leaky_slope(self) -> Option<f32> {
        match self {
            Then::Nothing => None,
            Then::LeakyRelu(slope) => Some(slope),
        }
    }
}

/// `then((x - mean) / sqrt(var + eps) * gamma + beta)` with the batch's statistics.
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64, shape: &NormShape, then: Then) -> NormForward {
    // Each sum in f64, in the order of `iter().sum()` over the channel's values (which starts
    // from -0.0).
    let sums = channel_sums(x, x, shape, -0.0, &Values);
    let means: Vec<f64> = sums.iter().map(|[sum]| sum / shape.samples()).collect();
    let squares = channel_sums(x, x, shape, -0.0, &SquaredDeviations { means: &means });
    let mean: Vec<f32> = means.iter().map(|&m| m as f32).collect();
    let variance: Vec<f32> = squares.iter().map(|[squares]| (squares / shape.samples()) as f32).collect();
    let (scale, shift) = affine(gamma, beta, &mean, &variance, epsilon);
    let output = per_channel_runs(shape, |c, b, out| {
        let input = &x[(b * shape.channels + c) * shape.positions..][..shape.positions];
        let (scale, shift) = (scale[c], shift[c]);
        out.map(input, move |v| then.value(v * scale + shift));
    });
    NormForward { output, mean, variance }
}

/// The gradients of `forward` with respect to `x`, `gamma` and `beta`.
pub struct NormGrads {
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// Backward pass, from the input, `gamma`, `beta`, the statistics `forward` returned, the
/// gradient of its output and what it applied after normalizing:
/// `dx = gamma / std * (dy - mean(dy) - x̂ * mean(dy * x̂))`, where `dy` (the gradient of the
/// normalized value) is `then`'s gradient at the recomputed normalized value.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    variance: &[f32],
    epsilon: f64,
    output_grad: &[f32],
    shape: &NormShape,
    then: Then,
) -> NormGrads {
    let inv_std: Vec<f64> = variance.iter().map(|&v| 1.0 / (v as f64 + epsilon).sqrt()).collect();
    let (norm_scale, norm_shift) = affine(gamma, beta, mean, variance, epsilon);
    // The normalized value as `forward` computed it, and the gradient reaching it.
    let gradients = NormGradients {
        scale: &norm_scale,
        shift: &norm_shift,
        mean,
        leaky_slope: then.leaky_slope(),
    };
    let sums = channel_sums(x, output_grad, shape, 0.0, &gradients);
    let (beta, gamma_grad): (Vec<f32>, Vec<f32>) = sums
        .iter()
        .zip(&inv_std)
        .map(|([sum_dy, sum_dy_xhat], inv_std)| (*sum_dy as f32, (sum_dy_xhat * inv_std) as f32))
        .unzip();
    let n = shape.samples();
    let x_grad = per_channel_runs(shape, |c, b, out| {
        let offset = (b * shape.channels + c) * shape.positions;
        let (xs, dys) = (&x[offset..][..shape.positions], &output_grad[offset..][..shape.positions]);
        let scale = (gamma[c] as f64 * inv_std[c]) as f32;
        let mean_dy = (beta[c] as f64 / n) as f32;
        // mean(dy * x̂) is the gamma gradient over n; x̂ = (x - mean) * inv_std.
        let projection = (gamma_grad[c] as f64 / n) as f32;
        let (mu, inv) = (mean[c], inv_std[c] as f32);
        let dy_at = gradients.normalized_grad(c);
        out.zip_map(xs, dys, move |v, g| scale * (dy_at(v, g) - mean_dy - (v - mu) * inv * projection));
    });
    NormGrads {
        x: x_grad,
        gamma: gamma_grad,
        beta,
    }
}

/// Batch normalization with given statistics (inference): `((x - mean) / sqrt(var + eps)) *
/// gamma + beta`, the operations of burn's `batch_norm` in its order, in one pass instead of four,
/// so bit for bit the same values.
pub fn inference(x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], variance: &[f32], epsilon: f64, shape: &NormShape) -> Vec<f32> {
    let norm = EvalNorm::new(gamma, beta, mean, variance, epsilon);
    per_channel_runs(shape, |c, b, out| {
        norm.apply(c, &x[(b * shape.channels + c) * shape.positions..][..shape.positions], out, |y| y);
    })
}

/// Batch normalization with given statistics, per channel: what `inference` computes, kept as
/// constants so a convolution can normalize its output rows as it writes them.
pub struct EvalNorm {
    mean: Vec<f32>,
    std: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl EvalNorm {
    pub fn new(gamma: &[f32], beta: &[f32], mean: &[f32], variance: &[f32], epsilon: f64) -> Self {
        let channels = gamma.len();
        assert!(
            beta.len() == channels && mean.len() == channels && variance.len() == channels,
            "batch norm: gamma, beta, mean and variance need one value per channel ({channels})"
        );
        Self {
            mean: mean.to_vec(),
            std: variance.iter().map(|&v| (v + epsilon as f32).sqrt()).collect(),
            gamma: gamma.to_vec(),
            beta: beta.to_vec(),
        }
    }

    /// `out = then(normalized row)` for a row of channel `c`: `then` is applied to each value
    /// burn's `batch_norm` gives (the identity, or the activation that follows).
    #[inline]
    pub fn apply(&self, c: usize, row: &[f32], out: &mut Writer, then: impl Fn(f32) -> f32) {
        let normalized = self.normalized(c);
        out.map(row, move |v| then(normalized(v)));
    }

    /// `apply` with the row changed in place (a convolution's output row, in the core's cache).
    #[inline]
    pub fn apply_in_place(&self, c: usize, row: &mut [f32], then: impl Fn(f32) -> f32) {
        let normalized = self.normalized(c);
        elementwise::map_in_place(row, move |v| then(normalized(v)));
    }

    /// Channel `c`'s normalization as burn's `batch_norm` computes it: `(v - mean) / std * gamma
    /// + beta`.
    #[inline(always)]
    fn normalized(&self, c: usize) -> impl Fn(f32) -> f32 {
        let (m, s, g, bt) = (self.mean[c], self.std[c], self.gamma[c], self.beta[c]);
        move |v| (v - m) / s * g + bt
    }
}

/// Per channel, `y = x * scale + shift` folds normalization and the affine map. Folding costs
/// precision when a channel's |mean| / std is large (about 2^-24 x |mean| / std in normalized
/// units; burn subtracts the mean first): irrelevant for convolution outputs, worth knowing for
/// other inputs.
fn affine(gamma: &[f32], beta: &[f32], mean: &[f32], variance: &[f32], epsilon: f64) -> (Vec<f32>, Vec<f32>) {
    (0..gamma.len())
        .map(|c| {
            let scale = gamma[c] as f64 / (variance[c] as f64 + epsilon).sqrt();
            (scale as f32, (beta[c] as f64 - mean[c] as f64 * scale) as f32)
        })
        .unzip()
}

/// A `[batch, channels, positions]` output written by `fill(channel, image, run)` for every
/// channel run, runs in parallel.
fn per_channel_runs(shape: &NormShape, fill: impl Fn(usize, usize, &mut Writer) + Sync + Send) -> Vec<f32> {
    let len = shape.batch * shape.channels * shape.positions;
    output::written(len, shape.positions, |run, values| {
        fill(run % shape.channels, run / shape.channels, values)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    const SHAPE: NormShape = NormShape {
        batch: 3,
        channels: 4,
        positions: 10,
    };

    #[test]
    fn output_has_zero_mean_unit_variance_before_the_affine_map() {
        let x = values(120, 1);
        let out = forward(&x, &[1.0; 4], &[0.0; 4], 0.0, &SHAPE, Then::Nothing);
        for c in 0..4 {
            let ys: Vec<f64> = SHAPE.runs(&out.output, c).flatten().map(|&v| v as f64).collect();
            let mean = ys.iter().sum::<f64>() / 30.0;
            let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / 30.0;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "channel {c}: {mean} {var}");
        }
    }

    /// The x gradient against central finite differences of `sum(y * r)`, with and without a
    /// LeakyReLU after the normalization.
    #[test]
    fn input_gradient_matches_finite_differences() {
        let (x, gamma, beta, r) = (values(120, 2), values(4, 3), values(4, 4), values(120, 5));
        for then in [Then::Nothing, Then::LeakyRelu(0.1)] {
            let loss = |x: &[f32]| -> f64 {
                let y = forward(x, &gamma, &beta, 1e-5, &SHAPE, then).output;
                y.iter().zip(&r).map(|(a, b)| (a * b) as f64).sum()
            };
            let stats = forward(&x, &gamma, &beta, 1e-5, &SHAPE, then);
            let grads = backward(&x, &gamma, &beta, &stats.mean, &stats.variance, 1e-5, &r, &SHAPE, then);
            for i in [0, 17, 59, 119] {
                let (mut up, mut down) = (x.clone(), x.clone());
                up[i] += 1e-2;
                down[i] -= 1e-2;
                let numeric = (loss(&up) - loss(&down)) / 2e-2;
                assert!(
                    (numeric - grads.x[i] as f64).abs() < 2e-2 * (1.0 + numeric.abs()),
                    "{then:?}, x[{i}]: {numeric} vs {}",
                    grads.x[i]
                );
            }
        }
    }
}
