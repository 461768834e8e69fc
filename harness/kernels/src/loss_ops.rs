//! The segmentation loss of `harness/src/train/loss.rs` written out as burn's backend ops, forward
//! and, step by step, the gradient burn-autodiff computes for it.
//!
//! Why a module of its own: the fused kernel (`loss_cpu`) must give burn's bits, and burn's
//! gradient is an order of operations nobody wrote down: the backward steps of about forty ops,
//! each with its own reductions over broadcast axes, multiplications by reciprocals and
//! accumulations of a tensor's gradients in the order burn-autodiff runs its steps. Here that
//! order is spelled out once, in burn's own ops. It is what `UnetKernels`' default bodies run
//! (every backend but flex, and flex past the classes the kernel compiles for), the reading the
//! kernel's comments refer to, and, through the default bodies, part of what the loss's test
//! holds to burn-autodiff bit for bit.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, ExtensionType, TensorMetadata};

use super::extension::UnetKernels;

/// The segmentation loss's parts: the cross-entropy and Dice's three class sums.
#[derive(ExtensionType)]
pub struct LossParts<B: Backend> {
    pub cross_entropy: FloatTensor<B>,
    pub intersect: FloatTensor<B>,
    pub score_sum: FloatTensor<B>,
    pub target_sum: FloatTensor<B>,
}

/// The logits' two gradients from the segmentation loss, kept apart because burn-autodiff adds
/// them to the logits one after the other.
#[derive(ExtensionType)]
pub struct LossGrads<B: Backend> {
    pub dice: FloatTensor<B>,
    pub cross_entropy: FloatTensor<B>,
}

/// The weighted cross-entropy as burn's ops: the mean over the weight mass (at least 1) of
/// `-Σ_c log_softmax(logits)_c * targets_c`, each pixel times its weight.
fn burns_cross_entropy<B: UnetKernels>(logits: FloatTensor<B>, targets: FloatTensor<B>, weights: FloatTensor<B>) -> FloatTensor<B> {
    let per_pixel = B::float_neg(B::float_sum_dim(B::float_mul(B::log_softmax(logits, 1), targets), 1));
    B::float_div(B::ordered_sum(B::float_mul(per_pixel, weights.clone())), weight_mass::<B>(weights))
}

/// The weights' sum, at least 1: what the cross-entropy's sum is divided by.
pub(crate) fn weight_mass<B: UnetKernels>(weights: FloatTensor<B>) -> FloatTensor<B> {
    B::float_clamp_min(B::ordered_sum(weights), 1.0.into())
}

/// Softmax over axis 1 as burn composes it for autodiff: `exp(x - max) / sum_dim(exp)`, the
/// maximum detached; the exponentials and their sum are returned too.
fn composed_softmax<B: Backend>(logits: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let max = B::float_max_dim(B::float_detach(logits.clone()), 1);
    let exp = B::float_exp(B::float_sub(logits, max));
    let exp_sum = B::float_sum_dim(exp.clone(), 1);
    (B::float_div(exp.clone(), exp_sum.clone()), exp, exp_sum)
}

/// A Dice product's sums over batch and pixels, one per class (`[classes]`): burn's
/// `sum_dims(&[0, 2, 3])`, one axis after the other, the last (along the rows) in the order
/// `ordered_row_sums` keeps on every CPU.
fn class_sums<B: UnetKernels>(products: FloatTensor<B>) -> FloatTensor<B> {
    let classes = products.shape()[1];
    let over_images_and_rows = B::float_sum_dim(B::float_sum_dim(products, 0), 2);
    B::float_reshape(B::ordered_row_sums(over_images_and_rows), [classes].into())
}

/// The loss's parts as burn's ops (`loss.rs`'s `cross_entropy`, and `dice` up to its sums).
pub(crate) fn burns_loss_parts<B: UnetKernels>(logits: FloatTensor<B>, targets: FloatTensor<B>, weights: FloatTensor<B>) -> LossParts<B> {
    let cross_entropy = burns_cross_entropy::<B>(logits.clone(), targets.clone(), weights.clone());
    let scores = B::float_mul(composed_softmax::<B>(logits).0, weights.clone());
    let targets = B::float_mul(targets, weights);
    LossParts {
        cross_entropy,
        intersect: class_sums::<B>(B::float_mul(scores.clone(), targets.clone())),
        score_sum: class_sums::<B>(B::float_mul(scores.clone(), scores)),
        target_sum: class_sums::<B>(B::float_mul(targets.clone(), targets)),
    }
}

/// `0.5 * (cross-entropy + Dice)`, Dice as `mean(1 - (2 I + smooth) / (S + T + smooth))`: burn's
/// ops.
pub(crate) fn combined_loss<B: UnetKernels>(parts: LossParts<B>, smooth: f64) -> FloatTensor<B> {
    let (numerator, denominator) = dice_ratio_parts::<B>(parts.intersect, parts.score_sum, parts.target_sum, smooth);
    let ratio = B::float_div(numerator, denominator);
    let dice = B::ordered_mean(B::float_add_scalar(B::float_neg(ratio), 1.0.into()));
    B::float_mul_scalar(B::float_add(parts.cross_entropy, dice), 0.5.into())
}

/// `(2 I + smooth, S + T + smooth)`.
fn dice_ratio_parts<B: Backend>(
    intersect: FloatTensor<B>,
    score_sum: FloatTensor<B>,
    target_sum: FloatTensor<B>,
    smooth: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    (
        B::float_add_scalar(B::float_mul_scalar(intersect, 2.0.into()), smooth.into()),
        B::float_add_scalar(B::float_add(score_sum, target_sum), smooth.into()),
    )
}

/// burn-autodiff's gradients of Dice with respect to its class sums of `S * Tw` and `S * S`
/// (`[classes]` each), given Dice's gradient `[1]`.
pub(crate) fn dice_sum_grads<B: Backend>(
    intersect: FloatTensor<B>,
    score_sum: FloatTensor<B>,
    target_sum: FloatTensor<B>,
    smooth: f64,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let classes = intersect.shape()[0];
    let (device, dtype) = (intersect.device(), intersect.dtype());
    let (numerator, denominator) = dice_ratio_parts::<B>(intersect, score_sum, target_sum, smooth);
    // mean (ones times 1/n, times the gradient), + 1, neg, then the division's two sides.
    let mean_factor = B::float_mul_scalar(
        B::float_ones([classes].into(), &device, dtype.into()),
        (1.0 / classes as f64).into(),
    );
    let grad_ratio = B::float_neg(B::float_mul(mean_factor, B::float_reshape(grad, [1].into())));
    let grad_numerator = B::float_mul(grad_ratio.clone(), B::float_recip(denominator.clone()));
    let denominator_squared = B::float_mul(denominator.clone(), denominator);
    let grad_denominator = B::float_mul(grad_ratio, B::float_div(B::float_neg(numerator), denominator_squared));
    // 2 I + smooth: times 2; S + T + smooth: as it is.
    (B::float_mul_scalar(grad_numerator, 2.0.into()), grad_denominator)
}

/// burn-autodiff's gradients of the loss's parts with respect to the logits, step by step from
/// the last op back: what the flex kernel (`loss_cpu::grad`) reproduces.
pub(crate) fn burns_loss_grads<B: Backend>(
    logits: FloatTensor<B>,
    targets: FloatTensor<B>,
    weights: FloatTensor<B>,
    grad_ce_sum: FloatTensor<B>,
    grad_intersect: FloatTensor<B>,
    grad_score_sum: FloatTensor<B>,
) -> LossGrads<B> {
    let (shape, pixel_shape, classes) = (logits.shape(), weights.shape(), logits.shape()[1]);
    let (device, dtype) = (logits.device(), logits.dtype());
    let ones = |shape| B::float_ones(shape, &device, dtype.into());
    let (softmax, exp, exp_sum) = composed_softmax::<B>(logits);
    // Cross-entropy: sum(per_pixel * weights), neg, sum_dim(_, 1), * targets; then log_softmax
    // = shifted - log(sum_dim(exp(shifted))).
    let grad_pixels = B::float_mul(ones(pixel_shape), B::float_reshape(grad_ce_sum, [1, 1, 1, 1].into()));
    let grad_class_sum = B::float_neg(B::float_mul(grad_pixels, weights.clone()));
    let grad_products = B::float_mul(ones(shape.clone()), B::float_sum_dim(grad_class_sum, 1));
    let grad_log_softmax = B::float_mul(grad_products, targets.clone());
    let grad_log_sum = B::float_sum_dim(B::float_neg(grad_log_softmax.clone()), 1);
    let grad_exp_sum = B::float_mul(grad_log_sum, B::float_recip(exp_sum.clone()));
    let grad_exp = B::float_mul(ones(shape.clone()), B::float_sum_dim(grad_exp_sum, 1));
    let cross_entropy = B::float_add(B::float_mul(grad_exp, exp.clone()), grad_log_softmax);
    // Dice: the class sums' steps (reshape, sum_dim over 3, 2, 0: 0 + g, times ones), then S
    // = softmax * weights feeding S * Tw and S * S.
    let scores = B::float_mul(softmax, weights.clone());
    let targets = B::float_mul(targets, weights.clone());
    let spread = |g: FloatTensor<B>| {
        let g = B::float_reshape(g, [1, classes, 1, 1].into());
        let g = B::float_mul(ones([1, classes, 1, shape[3]].into()), B::float_sum_dim(g, 3));
        let g = B::float_mul(ones([1, classes, shape[2], shape[3]].into()), B::float_sum_dim(g, 2));
        B::float_mul(ones(shape.clone()), B::float_sum_dim(g, 0))
    };
    let from_square = B::float_mul(spread(grad_score_sum), scores);
    let from_intersect = B::float_mul(spread(grad_intersect), targets);
    let grad_scores = B::float_add(from_intersect, B::float_add(from_square.clone(), from_square));
    // softmax = exp / exp_sum.
    let grad_softmax = B::float_mul(grad_scores, weights);
    let grad_exp_direct = B::float_mul(grad_softmax.clone(), B::float_recip(exp_sum.clone()));
    let exp_sum_squared = B::float_mul(exp_sum.clone(), exp_sum);
    let grad_exp_sum = B::float_sum_dim(
        B::float_mul(grad_softmax, B::float_div(B::float_neg(exp.clone()), exp_sum_squared)),
        1,
    );
    let grad_exp_from_sum = B::float_mul(ones(shape), B::float_sum_dim(grad_exp_sum, 1));
    let dice = B::float_mul(B::float_add(grad_exp_from_sum, grad_exp_direct), exp);
    LossGrads { dice, cross_entropy }
}
