//! The segmentation loss (weighted cross-entropy plus Dice, `harness/src/train/loss.rs`) on
//! flex: per pixel, the chains of burn ops the two terms are written as, fused into one pass
//! forward (rows in parallel, over every image) and one backward (images in parallel).
//!
//! Why: burn ran the loss as about forty ops over `[batch, classes, h, w]`, each a pass on one
//! core, and its gradient as as many again; at the SSL4MIS size (8 x 4 x 128 x 128) that was
//! about 25 ms of a 380 ms training step with the second core idle. Both terms start with the
//! same softmax, whose exponentials (libm's, one call per value) are the costliest part: here
//! each pixel's are computed once per pass and shared. The bits stay burn's: every value takes
//! burn's IEEE operations in burn's order (class sums start from `0.0` and add classes in
//! order, the maximum keeps the first largest value and the first NaN, gradients multiply by
//! reciprocals where burn does; Dice's products are summed over the images, then the rows, as
//! flex's `sum_dim`s over those axes add them, from `0.0` in order). The two sums flex takes in
//! lanes as wide as the CPU's, the cross-entropy's over the whole batch and Dice's along each
//! row, are taken on the same values in one order for every CPU (`ordered_sum`, AVX-512's), as
//! loss.rs writes them too. The gradient follows burn-autodiff's backward
//! steps of those ops one by one (`loss_ops.rs` writes them out as burn ops too); the loss's
//! test holds values and gradients to burn's bit for bit.
//!
//! One assumption: the targets and weights enter the graph as data (no ops on the autodiff
//! device before the loss; the harness builds them on the host, `train/batch.rs`). burn orders
//! its backward steps by depth, and targets computed on the device could make it add the two
//! gradients of the scores in the other order (a rounding difference, not an error).

use super::output;

/// `[batch, classes, positions]` of the logits and targets, positions being rows of `width`
/// pixels; the weights are `[batch, positions]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossShape {
    pub batch: usize,
    pub classes: usize,
    pub positions: usize,
    pub width: usize,
}

impl LossShape {
    fn check(&self, logits: &[f32], targets: &[f32], weights: &[f32]) {
        let n = self.batch * self.classes * self.positions;
        assert!(
            covers_classes(self.classes),
            "loss kernels: {} classes (covered: 1 to 20)",
            self.classes
        );
        assert_eq!(logits.len(), n, "loss logits: expected {self:?}");
        assert_eq!(targets.len(), n, "loss targets: expected {self:?}");
        assert_eq!(weights.len(), self.batch * self.positions, "loss weights: expected {self:?}");
    }
}

/// The class counts the kernels compile for (the U-Net's heads have 2 to 19).
pub fn covers_classes(classes: usize) -> bool {
    (1..=20).contains(&classes)
}

/// The per-pixel parts of the loss, up to the sums taken in lanes (`ordered_sum`): the
/// cross-entropy term `-Σ_c log_softmax(l)_c t_c * w` per pixel (`[batch, positions]`, for the
/// sum over the batch), and for each of Dice's products `S * Tw`, `S * S` and `Tw * Tw` (`S = softmax(l) *
/// w`, `Tw = t * w`) its sum over the batch, then over the rows (`[classes, width]`): the first
/// two of flex's three `sum_dim`s over axes 0, 2 and 3, in their order (each from `0.0`, adding
/// images, then rows, in order), so the products are never stored; the last, along the row, is
/// summed in lanes, in `ordered_sum`'s order.
pub fn forward(logits: &[f32], targets: &[f32], weights: &[f32], shape: LossShape) -> (Vec<f32>, [Vec<f32>; 3]) {
    shape.check(logits, targets, weights);
    dispatch_classes(
        shape.classes,
        Forward {
            logits,
            targets,
            weights,
            shape,
        },
    )
}

/// The gradients with respect to the logits from Dice and from the cross-entropy (in that
/// order, `[batch, classes, positions]` each), given burn's gradients of the cross-entropy's
/// batch sum (`[1]`, a number) and of Dice's class sums of `S * Tw` and `S * S` (`[classes]`).
pub fn grad(
    logits: &[f32],
    targets: &[f32],
    weights: &[f32],
    shape: LossShape,
    grad_ce_sum: f32,
    grad_intersect: &[f32],
    grad_score_sum: &[f32],
) -> [Vec<f32>; 2] {
    shape.check(logits, targets, weights);
    assert!(
        grad_intersect.len() == shape.classes && grad_score_sum.len() == shape.classes,
        "dice gradient: one value per class"
    );
    dispatch_classes(
        shape.classes,
        Grad {
            logits,
            targets,
            weights,
            shape,
            grad_ce_sum,
            grad_intersect,
            grad_score_sum,
        },
    )
}

/// A pass generic over the class count, so that a pixel's classes live in registers.
trait ClassPass {
    type Out;
    fn run<const N: usize>(self) -> Self::Out;
}

fn dispatch_classes<P: ClassPass>(classes: usize, pass: P) -> P::Out {
    macro_rules! arms {
        ($($n:literal)*) => {
            match classes {
                $($n => pass.run::<$n>(),)*
                _ => unreachable!("checked by LossShape::check"),
            }
        };
    }
    arms!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20)
}

/// One pixel, as burn's ops see it: softmax composed as `exp(l - max) / (0 + Σ exp)`.
struct Pixel<const N: usize> {
    shifted: [f32; N],
    exp: [f32; N],
    exp_sum: f32,
    /// `S`: the softmax times the weight.
    scores: [f32; N],
    /// `Tw`: the targets times the weight.
    targets: [f32; N],
    weight: f32,
}

impl<const N: usize> Pixel<N> {
    /// Pixel `i` of an image's `[classes, positions]` logits and targets.
    #[inline(always)]
    fn at(logits: &[f32], targets: &[f32], weight: f32, positions: usize, i: usize) -> Self {
        let l: [f32; N] = std::array::from_fn(|c| logits[c * positions + i]);
        // Flex's `max_dim`: the first largest value, the first NaN if any.
        let mut max = l[0];
        for &v in &l[1..] {
            if !max.is_nan() && (v.is_nan() || v > max) {
                max = v;
            }
        }
        let shifted = l.map(|v| v - max);
        let exp = shifted.map(f32::exp);
        let exp_sum = exp.iter().fold(0.0f32, |acc, &e| acc + e);
        Self {
            shifted,
            exp,
            exp_sum,
            scores: exp.map(|e| e / exp_sum * weight),
            targets: std::array::from_fn(|c| targets[c * positions + i] * weight),
            weight,
        }
    }

    /// `-(0 + Σ_c (s_c - ln Σ exp) * t_c) * w`, as `(log_softmax * t).sum_dim(1).neg() * w`.
    #[inline(always)]
    fn cross_entropy(&self, targets: &[f32], positions: usize, i: usize) -> f32 {
        let log_sum = self.exp_sum.ln();
        let mut sum = 0.0f32;
        for c in 0..N {
            sum += (self.shifted[c] - log_sum) * targets[c * positions + i];
        }
        -sum * self.weight
    }
}

/// An image's slices of the logits, targets and weights.
fn image<'a>(logits: &'a [f32], targets: &'a [f32], weights: &'a [f32], shape: LossShape, b: usize) -> (&'a [f32], &'a [f32], &'a [f32]) {
    let (len, p) = (shape.classes * shape.positions, shape.positions);
    (&logits[b * len..][..len], &targets[b * len..][..len], &weights[b * p..][..p])
}

struct Forward<'a> {
    logits: &'a [f32],
    targets: &'a [f32],
    weights: &'a [f32],
    shape: LossShape,
}

impl ClassPass for Forward<'_> {
    type Out = (Vec<f32>, [Vec<f32>; 3]);

    fn run<const N: usize>(self) -> (Vec<f32>, [Vec<f32>; 3]) {
        let LossShape {
            batch,
            positions: p,
            width,
            ..
        } = self.shape;
        let rows = p / width;
        let row_sums = N * width;
        // Rows in parallel, each over every image: the cross-entropy terms come out as
        // `[rows][batch][width]`, each product's batch sums as `[rows][classes][width]`.
        let [terms_by_row, intersect, square, target_square] = output::written_together(
            rows,
            [batch * width, row_sums, row_sums, row_sums],
            |y, [terms, intersect, square, target_square]| {
                let mut sums = [[[0.0f32; N]; 3]].repeat(width);
                let mut row_terms = vec![0.0f32; width];
                for b in 0..batch {
                    let (l, t, w) = image(self.logits, self.targets, self.weights, self.shape, b);
                    for (x, (term, [si, ss, tt])) in row_terms.iter_mut().zip(sums.iter_mut()).enumerate() {
                        let i = y * width + x;
                        let px = Pixel::<N>::at(l, t, w[i], p, i);
                        *term = px.cross_entropy(t, p, i);
                        // Products added to the sums over the images so far, in image order.
                        for c in 0..N {
                            si[c] += px.scores[c] * px.targets[c];
                            ss[c] += px.scores[c] * px.scores[c];
                            tt[c] += px.targets[c] * px.targets[c];
                        }
                    }
                    terms.copy(&row_terms);
                }
                for (k, out) in [intersect, square, target_square].into_iter().enumerate() {
                    (0..N).for_each(|class| out.from_fn(width, |x| sums[x][k][class]));
                }
            },
        );
        // The terms back to `[batch][rows][width]`, the layout flex sums.
        let terms = output::written(batch * p, p.max(1), |b, out| {
            for y in 0..rows {
                out.copy(&terms_by_row[(y * batch + b) * width..][..width]);
            }
        });
        // Each product's batch sums summed over the rows, in row order from 0.0.
        let over_rows = |by_row: &[f32]| -> Vec<f32> {
            let mut total = vec![0.0f32; row_sums];
            for row in by_row.chunks(row_sums) {
                for (t, &v) in total.iter_mut().zip(row) {
                    *t += v;
                }
            }
            total
        };
        (terms, [over_rows(&intersect), over_rows(&square), over_rows(&target_square)])
    }
}

/// Pixels per block of the backward pass (a block's gradients for every class stay in L1).
const BLOCK: usize = 128;

struct Grad<'a> {
    logits: &'a [f32],
    targets: &'a [f32],
    weights: &'a [f32],
    shape: LossShape,
    grad_ce_sum: f32,
    grad_intersect: &'a [f32],
    grad_score_sum: &'a [f32],
}

impl ClassPass for Grad<'_> {
    type Out = [Vec<f32>; 2];

    fn run<const N: usize>(self) -> [Vec<f32>; 2] {
        let (p, len) = (self.shape.positions, N * self.shape.positions);
        let g = self.grad_ce_sum;
        // Dice's class sums' backward steps (sum_dim over pixels and batch: 0 + g, times ones).
        let grad_si: [f32; N] = std::array::from_fn(|c| 1.0f32 * (0.0f32 + self.grad_intersect[c]));
        let grad_ss: [f32; N] = std::array::from_fn(|c| 1.0f32 * (0.0f32 + self.grad_score_sum[c]));
        output::written_together(self.shape.batch, [len, len], |b, [dice_out, ce_out]| {
            let (l, t, w) = image(self.logits, self.targets, self.weights, self.shape, b);
            let pixel_grads = |i: usize| -> ([f32; N], [f32; N]) {
                let px = Pixel::<N>::at(l, t, w[i], p, i);
                let (e, sum) = (&px.exp, px.exp_sum);
                // Cross-entropy, burn-autodiff's steps from the last op back: sum (g times
                // ones), * w, neg, sum_dim (0 + g, times ones), * t; then log_softmax =
                // shifted - ln(sum_dim(exp)): the log-sum's gradient is the class sum of the
                // negated one, ln's is times the reciprocal, sum_dim's 0 + g times ones, and
                // the shifted logits add their two (through exp, and directly).
                let grad_products = 1.0f32 * (0.0f32 + -(1.0f32 * g * px.weight));
                let grad_log_softmax: [f32; N] = std::array::from_fn(|c| grad_products * t[c * p + i]);
                let grad_log_sum = grad_log_softmax.iter().fold(0.0f32, |acc, &v| acc + -v);
                let grad_exp_ce = 1.0f32 * (0.0f32 + grad_log_sum * (1.0f32 / sum));
                let ce = std::array::from_fn(|c| grad_exp_ce * e[c] + grad_log_softmax[c]);
                // Dice: S feeds S * Tw and S * S (twice, the same product); burn-autodiff adds
                // them as `S*Tw's + (S*S's + S*S's)`. S = softmax * w, softmax = exp / sum:
                // exp's gradient times the sum's reciprocal, the sum's the class sum of
                // `g * (-exp / (sum * sum))`, then 0 + g times ones; exp's two added, times exp.
                let grad_softmax: [f32; N] = std::array::from_fn(|c| {
                    let from_square = grad_ss[c] * px.scores[c];
                    (grad_si[c] * px.targets[c] + (from_square + from_square)) * px.weight
                });
                let square = sum * sum;
                let grad_sum = (0..N).fold(0.0f32, |acc, c| acc + grad_softmax[c] * (-e[c] / square));
                let grad_from_sum = 1.0f32 * (0.0f32 + grad_sum);
                let recip = 1.0f32 / sum;
                let dice = std::array::from_fn(|c| (grad_from_sum + grad_softmax[c] * recip) * e[c]);
                (dice, ce)
            };
            let mut grads: Vec<([f32; N], [f32; N])> = Vec::with_capacity(BLOCK);
            dice_out.in_parts(N, p, |dice_out| {
                ce_out.in_parts(N, p, |ce_out| {
                    for start in (0..p).step_by(BLOCK) {
                        let n = BLOCK.min(p - start);
                        grads.clear();
                        grads.extend((start..start + n).map(pixel_grads));
                        for c in 0..N {
                            dice_out[c].from_fn(n, |k| grads[k].0[c]);
                            ce_out[c].from_fn(n, |k| grads[k].1[c]);
                        }
                    }
                })
            });
        })
    }
}
