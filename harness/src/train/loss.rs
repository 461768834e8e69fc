//! The supervised segmentation loss of SSL4MIS: 0.5 * (cross-entropy + Dice), generalised to
//! soft targets and per-pixel weights so pseudo labels (hard, soft, thresholded) use it too.

use crate::kernels;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::Tensor;

const SMOOTH: f64 = 1e-5;

/// Weighted cross-entropy between logits `[B,C,H,W]` and target distributions, averaged over the
/// weight mass (pixels with weight 0 do not count). The sums over many values
/// (`kernels::sum`, `kernels::sum_rows`, `kernels::mean`) add in one order on every CPU, so a
/// run's losses and gradients do not depend on the CPU's vector width.
pub fn cross_entropy(logits: Tensor<4>, targets: Tensor<4>, weights: Tensor<4>) -> Tensor<1> {
    let mass = kernels::sum(weights.clone()).clamp_min(1.0);
    let per_pixel = (log_softmax(logits, 1) * targets).sum_dim(1).neg();
    kernels::sum(per_pixel * weights) / mass
}

/// SSL4MIS's Dice loss over all classes on softmax scores:
/// mean over classes of `1 - (2 sum(s t) + e) / (sum(s^2) + sum(t^2) + e)`, with weights applied
/// to both scores and targets.
pub fn dice(logits: Tensor<4>, targets: Tensor<4>, weights: Tensor<4>) -> Tensor<1> {
    let [_, classes, _, _] = logits.dims();
    let scores = softmax(logits, 1) * weights.clone();
    let targets = targets * weights;
    let class_sums = |products: Tensor<4>| kernels::sum_rows(products.sum_dims(&[0, 2])).reshape([classes]);
    let intersect = class_sums(scores.clone() * targets.clone());
    let score_sum = class_sums(scores.clone() * scores);
    let target_sum = class_sums(targets.clone() * targets);
    let ratio = (intersect * 2.0 + SMOOTH) / (score_sum + target_sum + SMOOTH);
    kernels::mean(ratio.neg() + 1.0)
}

/// 0.5 * (CE + Dice).
pub fn segmentation(logits: Tensor<4>, targets: Tensor<4>, weights: Tensor<4>) -> Tensor<1> {
    // On flex (training), these ops fused into one: the same bits in a fraction of the passes.
    if let Some(fused) = kernels::segmentation_loss_on_flex(&logits, &targets, &weights, SMOOTH) {
        return fused;
    }
    (cross_entropy(logits.clone(), targets.clone(), weights.clone()) + dice(logits, targets, weights)) * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn tensor(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    #[test]
    fn confident_correct_prediction_has_small_loss() {
        let targets = tensor(vec![1.0, 0.0, 0.0, 1.0], [1, 2, 1, 2]);
        let weights = tensor(vec![1.0, 1.0], [1, 1, 1, 2]);
        let good = tensor(vec![10.0, -10.0, -10.0, 10.0], [1, 2, 1, 2]);
        let bad = tensor(vec![-10.0, 10.0, 10.0, -10.0], [1, 2, 1, 2]);
        let good_loss: f32 = segmentation(good, targets.clone(), weights.clone()).into_scalar();
        let bad_loss: f32 = segmentation(bad, targets, weights).into_scalar();
        assert!(good_loss < 1e-3, "{good_loss}");
        assert!(bad_loss > 0.9, "{bad_loss}");
    }

    /// The fused loss on flex gives burn's ops' bits: the loss value and the logits' gradient,
    /// with the logits also used by a second term (as mean teacher's consistency uses them),
    /// both as a leaf and as an op's output (then the other term's step runs at the loss's
    /// depth), so the order in which the logits' gradients are added is held too; 2, 4 and 19
    /// classes (25 are past the kernels: burn's ops written out in loss_ops.rs answer there),
    /// soft targets, zero weights, all-equal and large logits.
    #[test]
    fn fused_loss_is_bitwise_burns() {
        use burn::tensor::TensorData;
        let device = Device::flex().autodiff();
        // (classes, logit scale, height, width): 240 pixels span two of the passes' blocks.
        for (classes, scale, h, w) in [(2, 1.0, 5, 7), (4, 3.0, 12, 20), (19, 30.0, 5, 7), (4, 0.0, 5, 7), (25, 2.0, 5, 7)] {
            let shape = [3, classes, h, w];
            let random = |seed: u64, scale: f64| {
                let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let values: Vec<f32> = (0..shape.iter().product::<usize>())
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale as f32
                    })
                    .collect();
                TensorData::new(values, shape)
            };
            let logits = random(1 + classes as u64, scale);
            let targets = softmax(Tensor::<4>::from_data(random(7, 2.0), &device), 1).into_data();
            let weights: Vec<f32> = (0..3 * h * w).map(|i| [1.0, 0.0, 0.5, 2.0][i % 4]).collect();
            let weights = TensorData::new(weights, [3, 1, h, w]);
            let run = |own: bool, leaf: bool| {
                kernels::use_own_kernels(own);
                let x = Tensor::<4>::from_data(logits.clone(), &device).require_grad();
                let logits = if leaf { x.clone() } else { x.clone() * 1.0 };
                let t = Tensor::<4>::from_data(targets.clone(), &device);
                let w = Tensor::<4>::from_data(weights.clone(), &device);
                let other = (logits.clone() * logits.clone()).mean() * 0.25;
                // The fused op is the one compared (not burn's ops twice).
                let fused = kernels::segmentation_loss_on_flex(&logits, &t, &w, SMOOTH).is_some();
                assert_eq!(fused, own, "the fused op runs exactly when asked for");
                let loss = segmentation(logits, t, w);
                let grads = (loss.clone() + other).backward();
                kernels::use_own_kernels(true);
                let bits = |d: TensorData| d.try_to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                (bits(loss.into_data()), bits(x.grad(&grads).unwrap().into_data()))
            };
            for leaf in [true, false] {
                let (ours, burns) = (run(true, leaf), run(false, leaf));
                assert_eq!(ours.0, burns.0, "loss value, {classes} classes, scale {scale}, leaf {leaf}");
                assert_eq!(ours.1, burns.1, "logits' gradient, {classes} classes, scale {scale}, leaf {leaf}");
            }
        }
    }

    #[test]
    fn zero_weight_pixels_are_ignored() {
        let targets = tensor(vec![1.0, 1.0, 0.0, 0.0], [1, 2, 1, 2]);
        let logits = tensor(vec![5.0, -5.0, -5.0, 5.0], [1, 2, 1, 2]);
        let only_first = tensor(vec![1.0, 0.0], [1, 1, 1, 2]);
        let ce: f32 = cross_entropy(logits, targets, only_first).into_scalar();
        assert!(ce < 1e-3, "second pixel is wrong but ignored, got {ce}");
    }
}
