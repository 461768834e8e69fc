//! Batched inference: class probabilities per slice, computed without autodiff and with the
//! network in evaluation mode (BatchNorm running statistics, no dropout).

use super::batch::images_tensor;
use crate::model::UNet;
use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::Device;

/// Softmax probabilities for each image, class-major (`classes x size x size`) per image,
/// averaged over `models` (an ensemble; usually one model). `device` must be a plain
/// (non-autodiff) device.
pub fn probabilities(models: &[UNet], images: &[&[f32]], size: usize, batch_size: usize, device: &Device) -> Vec<Vec<f32>> {
    let models: Vec<UNet> = models.iter().map(|m| m.valid().to_device(device)).collect();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch_size.max(1)) {
        let input = images_tensor(chunk, size, device);
        let mut mean = None;
        for model in &models {
            let probs = softmax(model.forward(input.clone()), 1);
            mean = Some(match mean {
                None => probs,
                Some(sum) => sum + probs,
            });
        }
        let Some(sum) = mean else { return Vec::new() };
        let sum = if models.len() > 1 { sum / models.len() as f32 } else { sum };
        let [b, classes, h, w] = sum.dims();
        let probs: Vec<f32> = sum.into_data().try_into_vec_as::<f32>().expect("float probabilities");
        let per_image = classes * h * w;
        out.extend((0..b).map(|i| probs[i * per_image..(i + 1) * per_image].to_vec()));
    }
    out
}

/// Most probable class per pixel of class-major probabilities.
pub fn argmax(probs: &[f32], classes: usize) -> Vec<u8> {
    let pixels = probs.len() / classes;
    (0..pixels)
        .map(|p| {
            let mut best = 0;
            for c in 1..classes {
                if probs[c * pixels + p] > probs[best * pixels + p] {
                    best = c;
                }
            }
            best as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_picks_largest_class() {
        // two pixels, three classes, class-major
        let probs = [0.1, 0.7, 0.8, 0.2, 0.1, 0.1];
        assert_eq!(argmax(&probs, 3), [1, 0]);
    }
}
