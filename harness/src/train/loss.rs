//! The supervised segmentation loss of SSL4MIS: 0.5 * (cross-entropy + Dice), generalised to
//! soft targets and per-pixel weights so pseudo labels (hard, soft, thresholded) use it too.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::Tensor;

const SMOOTH: f64 = 1e-5;

/// Weighted cross-entropy between logits `[B,C,H,W]` and target distributions, averaged over the
/// weight mass (pixels with weight 0 do not count).
pub fn cross_entropy(logits: Tensor<4>, targets: Tensor<4>, weights: Tensor<4>) -> Tensor<1> {
    let mass = weights.clone().sum().clamp_min(1.0);
    let per_pixel = (log_softmax(logits, 1) * targets).sum_dim(1).neg();
    (per_pixel * weights).sum() / mass
}

/// SSL4MIS's Dice loss over all classes on softmax scores:
/// mean over classes of `1 - (2 sum(s t) + e) / (sum(s^2) + sum(t^2) + e)`, with weights applied
/// to both scores and targets.
pub fn dice(logits: Tensor<4>, targets: Tensor<4>, weights: Tensor<4>) -> Tensor<1> {
    let [_, classes, _, _] = logits.dims();
    let scores = softmax(logits, 1) * weights.clone();
    let targets = targets * weights;
    let intersect = (scores.clone() * targets.clone()).sum_dims(&[0, 2, 3]).reshape([classes]);
    let score_sum = (scores.clone() * scores).sum_dims(&[0, 2, 3]).reshape([classes]);
    let target_sum = (targets.clone() * targets).sum_dims(&[0, 2, 3]).reshape([classes]);
    let ratio = (intersect * 2.0 + SMOOTH) / (score_sum + target_sum + SMOOTH);
    (ratio.neg() + 1.0).mean()
}

/// 0.5 * (CE + Dice).
pub fn segmentation(logits: Tensor<4>, targets: Tensor<4>, weights: Tensor<4>) -> Tensor<1> {
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

    #[test]
    fn zero_weight_pixels_are_ignored() {
        let targets = tensor(vec![1.0, 1.0, 0.0, 0.0], [1, 2, 1, 2]);
        let logits = tensor(vec![5.0, -5.0, -5.0, 5.0], [1, 2, 1, 2]);
        let only_first = tensor(vec![1.0, 0.0], [1, 1, 1, 2]);
        let ce: f32 = cross_entropy(logits, targets, only_first).into_scalar();
        assert!(ce < 1e-3, "second pixel is wrong but ignored, got {ce}");
    }
}
