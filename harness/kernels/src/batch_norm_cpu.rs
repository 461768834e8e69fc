//! Batch normalization in training mode on plain `f32` slices in NCHW order: statistics, output
//! and gradients in a few passes over the activation.
//!
//! Why: burn's default (which flex uses) builds the statistics and the gradient from a dozen
//! generic ops, several of them transposing the whole activation. Here each channel's sums are
//! one pass in `f64`, computed by one thread in a fixed order, so results do not depend on the
//! thread count.

use rayon::prelude::*;

use super::elementwise;

/// `[batch, channels, positions]` of an NCHW activation (positions = H x W).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub batch: usize,
    pub channels: usize,
    pub positions: usize,
}

impl NormShape {
    fn samples(&self) -> f64 {
        (self.batch * self.positions) as f64
    }

    /// The values of channel `c`, one contiguous run per image.
    #[cfg(test)]
    fn runs<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (stride, len) = (self.channels * self.positions, self.positions);
        (0..self.batch).map(move |b| &data[b * stride + c * len..][..len])
    }
}

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

    /// The gradient reaching the normalized value `y` from the gradient `g` of `value(y)`.
    #[inline(always)]
    fn grad(self, y: f32, g: f32) -> f32 {
        match self {
            Then::Nothing => g,
            Then::LeakyRelu(slope) => elementwise::leaky_grad(y, g, slope),
        }
    }
}

/// `then((x - mean) / sqrt(var + eps) * gamma + beta)` with the batch's statistics.
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64, shape: &NormShape, then: Then) -> NormForward {
    // Each sum in f64, in the order of `iter().sum()` over the channel's values (which starts
    // from -0.0).
    let sums = channel_sums(x, x, shape, -0.0, |_, v, _| [v as f64]);
    let means: Vec<f64> = sums.iter().map(|[sum]| sum / shape.samples()).collect();
    let squares = channel_sums(x, x, shape, -0.0, |c, v, _| [(v as f64 - means[c]).powi(2)]);
    let mean: Vec<f32> = means.iter().map(|&m| m as f32).collect();
    let variance: Vec<f32> = squares.iter().map(|[squares]| (squares / shape.samples()) as f32).collect();
    let (scale, shift) = affine(gamma, beta, &mean, &variance, epsilon);
    let mut output = vec![0.0f32; x.len()];
    per_channel_runs(&mut output, shape, |c, b, out| {
        let input = &x[(b * shape.channels + c) * shape.positions..][..shape.positions];
        let (scale, shift) = (scale[c], shift[c]);
        elementwise::map(input, out, move |v| then.value(v * scale + shift));
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
    let normalized_grad = |c: usize| {
        let (scale, shift) = (norm_scale[c], norm_shift[c]);
        move |v: f32, g: f32| then.grad(v * scale + shift, g)
    };
    let sums = channel_sums(x, output_grad, shape, 0.0, |c, v, g| {
        let dy = normalized_grad(c)(v, g) as f64;
        [dy, dy * (v as f64 - mean[c] as f64)]
    });
    let (beta, gamma_grad): (Vec<f32>, Vec<f32>) = sums
        .iter()
        .zip(&inv_std)
        .map(|([sum_dy, sum_dy_xhat], inv_std)| (*sum_dy as f32, (sum_dy_xhat * inv_std) as f32))
        .unzip();
    let n = shape.samples();
    let mut x_grad = vec![0.0f32; x.len()];
    per_channel_runs(&mut x_grad, shape, |c, b, out| {
        let offset = (b * shape.channels + c) * shape.positions;
        let (xs, dys) = (&x[offset..][..shape.positions], &output_grad[offset..][..shape.positions]);
        let scale = (gamma[c] as f64 * inv_std[c]) as f32;
        let mean_dy = (beta[c] as f64 / n) as f32;
        // mean(dy * x̂) is the gamma gradient over n; x̂ = (x - mean) * inv_std.
        let projection = (gamma_grad[c] as f64 / n) as f32;
        let (mu, inv) = (mean[c], inv_std[c] as f32);
        let dy_at = normalized_grad(c);
        elementwise::zip_map(xs, dys, out, move |v, g| {
            scale * (dy_at(v, g) - mean_dy - (v - mu) * inv * projection)
        });
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
    let mut output = vec![0.0f32; x.len()];
    per_channel_runs(&mut output, shape, |c, b, out| {
        norm.apply(c, &x[(b * shape.channels + c) * shape.positions..][..shape.positions], out, |y| y);
    });
    output
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
    pub fn apply(&self, c: usize, row: &[f32], out: &mut [f32], then: impl Fn(f32) -> f32) {
        let (m, s, g, bt) = (self.mean[c], self.std[c], self.gamma[c], self.beta[c]);
        elementwise::map(row, out, move |v| then((v - m) / s * g + bt));
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

/// For every channel `c`: `N` sums in `f64`, each starting from `init` and adding
/// `term(c, x, y)` for the channel's values in image, then position order (`x` from `a`, `y`
/// from `b` at the same place). One thread takes a group of channels and chains their sums side
/// by side: independent additions keep the core's adders busy (a single chain waits on each
/// addition's latency), while every channel's sum keeps the order, and so the bits, of a plain
/// loop over its values. Groups hold up to 8 channels, fewer when that leaves threads idle; the
/// grouping changes no bit.
fn channel_sums<const N: usize>(
    a: &[f32],
    b: &[f32],
    shape: &NormShape,
    init: f64,
    term: impl Fn(usize, f32, f32) -> [f64; N] + Sync,
) -> Vec<[f64; N]> {
    assert!(
        a.len() == shape.batch * shape.channels * shape.positions && b.len() == a.len(),
        "batch norm: input sizes"
    );
    match shape.channels / rayon::current_num_threads() {
        0 | 1 => chained_sums::<1, N>(a, b, shape, init, term),
        2 | 3 => chained_sums::<2, N>(a, b, shape, init, term),
        4..=7 => chained_sums::<4, N>(a, b, shape, init, term),
        _ => chained_sums::<8, N>(a, b, shape, init, term),
    }
}

/// `channel_sums` with groups of `CHAINS` channels.
fn chained_sums<const CHAINS: usize, const N: usize>(
    a: &[f32],
    b: &[f32],
    shape: &NormShape,
    init: f64,
    term: impl Fn(usize, f32, f32) -> [f64; N] + Sync,
) -> Vec<[f64; N]> {
    let firsts: Vec<usize> = (0..shape.channels).step_by(CHAINS).collect();
    firsts
        .into_par_iter()
        .flat_map_iter(|first| {
            let count = CHAINS.min(shape.channels - first);
            // A group short of `CHAINS` channels repeats its last one; the copies are dropped.
            let channel = |g: usize| first + g.min(count - 1);
            let mut sums = [[init; N]; CHAINS];
            for image in 0..shape.batch {
                let start = |g: usize| (image * shape.channels + channel(g)) * shape.positions;
                let xs: [&[f32]; CHAINS] = std::array::from_fn(|g| &a[start(g)..][..shape.positions]);
                let ys: [&[f32]; CHAINS] = std::array::from_fn(|g| &b[start(g)..][..shape.positions]);
                for i in 0..shape.positions {
                    for g in 0..CHAINS {
                        let terms = term(channel(g), xs[g][i], ys[g][i]);
                        for (sum, t) in sums[g].iter_mut().zip(terms) {
                            *sum += t;
                        }
                    }
                }
            }
            sums.into_iter().take(count)
        })
        .collect()
}

/// Calls `fill(channel, image, run)` for every channel run of `data`, images in parallel.
fn per_channel_runs(data: &mut [f32], shape: &NormShape, fill: impl Fn(usize, usize, &mut [f32]) + Sync) {
    data.par_chunks_mut(shape.channels * shape.positions)
        .enumerate()
        .for_each(|(b, image)| {
            for (c, run) in image.chunks_mut(shape.positions).enumerate() {
                fill(c, b, run);
            }
        });
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

    /// The interleaved sums are, bit for bit, plain sums over each channel's values in order
    /// (`iter().sum()` from -0.0, including a channel of negative zeros), for every group size
    /// and channel counts below, at and above it.
    #[test]
    fn interleaved_sums_are_plain_sums() {
        for channels in [1, 3, 8, 11, 17] {
            let shape = NormShape {
                batch: 3,
                channels,
                positions: 37,
            };
            let mut x: Vec<f32> = (0..shape.batch * channels * shape.positions)
                .map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1e-3 + (i % 3) as f32 * 1e5)
                .collect();
            for image in 0..shape.batch {
                x[(image * channels + channels / 2) * shape.positions..][..shape.positions].fill(-0.0);
            }
            let term = |_: usize, v: f32, _: f32| [v as f64];
            let groupings = [
                chained_sums::<1, 1>(&x, &x, &shape, -0.0, term),
                chained_sums::<2, 1>(&x, &x, &shape, -0.0, term),
                chained_sums::<4, 1>(&x, &x, &shape, -0.0, term),
                chained_sums::<8, 1>(&x, &x, &shape, -0.0, term),
                channel_sums(&x, &x, &shape, -0.0, term),
            ];
            for sums in groupings {
                for (c, [sum]) in sums.iter().enumerate() {
                    let plain: f64 = shape.runs(&x, c).flatten().map(|&v| v as f64).sum();
                    assert_eq!(sum.to_bits(), plain.to_bits(), "{channels} channels, channel {c}");
                }
            }
        }
    }

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
