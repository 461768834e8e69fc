//! Batched inference: class probabilities per slice, computed without autodiff and with the
//! network in evaluation mode (BatchNorm running statistics, no dropout).

use super::batch::images_tensor;
use crate::kernels;
use crate::model::UNet;
use burn::module::Module;
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
            let probs = kernels::softmax_channels(model.forward(input.clone()));
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

/// Class probabilities for every slice of every case (outer: case, inner: slice), averaged over
/// `models`: one pass over all slices (batches may span cases), regrouped by case.
pub fn case_probabilities(
    models: &[UNet],
    cases: &[&crate::data::Case],
    size: usize,
    batch_size: usize,
    device: &Device,
) -> Vec<Vec<Vec<f32>>> {
    let images: Vec<&[f32]> = cases.iter().flat_map(|c| c.slices.iter().map(|s| s.image.as_slice())).collect();
    let mut probabilities = probabilities(models, &images, size, batch_size, device).into_iter();
    cases
        .iter()
        .map(|case| probabilities.by_ref().take(case.slices.len()).collect())
        .collect()
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
    fn an_ensemble_predicts_the_mean_of_its_members_softmax() {
        // It seeds and draws from the process's one stream: no other test may draw meanwhile.
        let _serial = crate::backend::serial_random_stream();
        let device = Device::flex();
        let spec = crate::model::ModelSpec {
            channels: vec![4, 8],
            dropout: vec![0.0, 0.0],
        };
        // Two differently initialised members (burn draws initial weights from the device's stream).
        device.seed(1);
        let a = spec.init(1, 3, &device);
        device.seed(2);
        let b = spec.init(1, 3, &device);
        let images: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..64).map(|p| ((p * 7 + i * 13) % 17) as f32 / 17.0).collect())
            .collect();
        let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let pa = probabilities(std::slice::from_ref(&a), &refs, 8, 2, &device);
        let pb = probabilities(std::slice::from_ref(&b), &refs, 8, 2, &device);
        let both = probabilities(&[a, b], &refs, 8, 2, &device);
        assert_ne!(pa, pb, "the members differ");
        for ((x, y), m) in pa.iter().flatten().zip(pb.iter().flatten()).zip(both.iter().flatten()) {
            assert!((m - (x + y) / 2.0).abs() < 1e-6, "{m} vs mean of {x} and {y}");
        }
    }

    #[test]
    fn argmax_picks_largest_class() {
        // two pixels, three classes, class-major
        let probs = [0.1, 0.7, 0.8, 0.2, 0.1, 0.1];
        assert_eq!(argmax(&probs, 3), [1, 0]);
    }
}
