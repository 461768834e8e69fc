//! Training examples, seeded sampling and batch assembly (with augmentation).
//!
//! Examples live on the host; a batch is assembled into tensors on the training device only when
//! a step needs it. A target is either hard labels (255 = ignore) or a soft class distribution with
//! a per-pixel weight, which covers true labels, hard and soft pseudo labels, and pixels dropped by
//! a confidence threshold with one code path.

use super::augment::{Augmentation, Transform};
use crate::rng::{self, SeededRng};
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::Arc;

/// The label value skipped by the loss and the metrics (defined with the data that makes it).
pub use crate::data::IGNORE;

/// What a training image should be segmented into.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One class per pixel, `IGNORE` for pixels without a label.
    Hard(Vec<u8>),
    /// `classes x pixels` probabilities (class-major) and a weight per pixel.
    Soft { probs: Vec<f32>, weight: Vec<f32> },
}

/// One training image and its target.
#[derive(Debug, Clone)]
pub struct Example {
    pub image: Arc<Vec<f32>>,
    pub target: Arc<Target>,
}

/// A pool's sampling position (see [`Pool::state`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoolState {
    order: Vec<usize>,
    position: usize,
    rng: crate::checkpoint::RngState,
}

/// A set of examples drawn without replacement, reshuffled each epoch from a seeded stream.
#[derive(Debug, Clone)]
pub struct Pool {
    examples: Vec<Example>,
    order: Vec<usize>,
    position: usize,
    rng: SeededRng,
}

impl Pool {
    /// A pool whose shuffling follows `seed` and `purpose`.
    pub fn new(examples: Vec<Example>, seed: u64, purpose: &str) -> Self {
        let order = (0..examples.len()).collect();
        let mut pool = Self {
            examples,
            order,
            position: 0,
            rng: rng::stream(seed, purpose),
        };
        pool.reshuffle();
        pool
    }

    fn reshuffle(&mut self) {
        rng::shuffle(&mut self.order, &mut self.rng);
        self.position = 0;
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The next `count` examples (cloned handles, cheap).
    pub fn draw(&mut self, count: usize) -> Vec<Example> {
        self.draw_indices(count).into_iter().map(|i| self.examples[i].clone()).collect()
    }

    /// Where the pool stands (order, position, random stream), for checkpoints.
    pub fn state(&self) -> PoolState {
        PoolState {
            order: self.order.clone(),
            position: self.position,
            rng: crate::checkpoint::RngState::of(&self.rng),
        }
    }

    /// Restores a [`Pool::state`] (of a pool over the same examples).
    pub fn restore(&mut self, state: &PoolState) -> anyhow::Result<()> {
        if state.order.len() != self.examples.len() {
            anyhow::bail!(
                "checkpoint of a pool of {} examples applied to one of {}",
                state.order.len(),
                self.examples.len()
            );
        }
        self.order = state.order.clone();
        self.position = state.position;
        self.rng = state.rng.restore();
        Ok(())
    }

    /// The example at `index` of the list the pool was made from.
    pub fn get(&self, index: usize) -> &Example {
        &self.examples[index]
    }

    /// Positions (in the list the pool was made from) of the next `count` examples, for callers
    /// that keep other data aligned with that list.
    pub fn draw_indices(&mut self, count: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count && !self.examples.is_empty() {
            if self.position == self.order.len() {
                self.reshuffle();
            }
            out.push(self.order[self.position]);
            self.position += 1;
        }
        out
    }
}

/// Tensors of one batch: images `[B,C_in,H,W]`, target distributions `[B,C,H,W]`, weights
/// `[B,1,H,W]`, and the transform each example went through.
pub struct Batch {
    pub images: Tensor<4>,
    pub targets: Tensor<4>,
    pub weights: Tensor<4>,
    pub transforms: Vec<Transform>,
}

/// What a batch looks like: classes, square size, and the label given to pixels an augmentation
/// brings in from outside the image (background for medical data, as SSL4MIS's zero fill;
/// `IGNORE` where class 0 is a real class, as in driving scenes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLayout {
    pub classes: usize,
    pub size: usize,
    pub outside: u8,
}

/// Assembles `examples` into a batch, each augmented by a transform drawn from `augmentation`.
pub fn assemble(examples: &[Example], layout: BatchLayout, augmentation: &Augmentation, rng: &mut SeededRng, device: &Device) -> Batch {
    let transforms: Vec<Transform> = examples.iter().map(|_| augmentation.draw(rng)).collect();
    assemble_with(examples, &transforms, layout, device)
}

/// Assembles `examples` with the given transforms (one per example), so a second set of
/// targets can be laid over exactly the same augmented images.
pub fn assemble_with(examples: &[Example], transforms: &[Transform], layout: BatchLayout, device: &Device) -> Batch {
    let BatchLayout { classes, size, outside } = layout;
    let pixels = size * size;
    let b = examples.len();
    let in_channels = examples.first().map_or(1, |e| (e.image.len() / pixels).max(1));
    let mut images = vec![0f32; b * in_channels * pixels];
    let mut targets = vec![0f32; b * classes * pixels];
    let mut weights = vec![0f32; b * pixels];
    for (i, (example, transform)) in examples.iter().zip(transforms).enumerate() {
        for (dst, src) in transform.source_map(size).into_iter().enumerate() {
            let Some(src) = src else {
                if (outside as usize) < classes {
                    targets[(i * classes + outside as usize) * pixels + dst] = 1.0;
                    weights[i * pixels + dst] = 1.0;
                }
                continue;
            };
            for c in 0..in_channels {
                images[(i * in_channels + c) * pixels + dst] = example.image[c * pixels + src];
            }
            match example.target.as_ref() {
                Target::Hard(labels) => {
                    let class = labels[src];
                    if class != IGNORE && (class as usize) < classes {
                        targets[(i * classes + class as usize) * pixels + dst] = 1.0;
                        weights[i * pixels + dst] = 1.0;
                    }
                }
                Target::Soft { probs, weight } => {
                    for c in 0..classes {
                        targets[(i * classes + c) * pixels + dst] = probs[c * pixels + src];
                    }
                    weights[i * pixels + dst] = weight[src];
                }
            }
        }
    }
    Batch {
        images: Tensor::from_data(TensorData::new(images, [b, in_channels, size, size]), device),
        targets: Tensor::from_data(TensorData::new(targets, [b, classes, size, size]), device),
        weights: Tensor::from_data(TensorData::new(weights, [b, 1, size, size]), device),
        transforms: transforms.to_vec(),
    }
}

/// Stacks images only (for inference); channels are inferred from the image length.
pub fn images_tensor(images: &[&[f32]], size: usize, device: &Device) -> Tensor<4> {
    let in_channels = images.first().map_or(1, |i| (i.len() / (size * size)).max(1));
    let data: Vec<f32> = images.iter().flat_map(|i| i.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, [images.len(), in_channels, size, size]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(value: f32, label: u8) -> Example {
        Example {
            image: Arc::new(vec![value; 4]),
            target: Arc::new(Target::Hard(vec![label, label, IGNORE, label])),
        }
    }

    #[test]
    fn pool_visits_every_example_once_per_epoch() {
        let mut pool = Pool::new((0..5).map(|i| example(i as f32, 0)).collect(), 1, "t");
        let mut seen: Vec<f32> = pool.draw(5).iter().map(|e| e.image[0]).collect();
        seen.sort_by(f32::total_cmp);
        assert_eq!(seen, [0.0, 1.0, 2.0, 3.0, 4.0]);
        let again: Vec<f32> = Pool::new((0..5).map(|i| example(i as f32, 0)).collect(), 1, "t")
            .draw(5)
            .iter()
            .map(|e| e.image[0])
            .collect();
        let first: Vec<f32> = Pool::new((0..5).map(|i| example(i as f32, 0)).collect(), 1, "t")
            .draw(5)
            .iter()
            .map(|e| e.image[0])
            .collect();
        assert_eq!(again, first);
    }

    #[test]
    fn ignored_pixels_get_zero_weight() {
        let device = Device::flex();
        let layout = BatchLayout {
            classes: 2,
            size: 2,
            outside: 0,
        };
        let batch = assemble(&[example(0.5, 1)], layout, &Augmentation::none(), &mut rng::stream(0, "t"), &device);
        let weights: Vec<f32> = batch.weights.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(weights, [1.0, 1.0, 0.0, 1.0]);
        let targets: Vec<f32> = batch.targets.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(targets, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
    }
}
