//! The 2D U-Net of SSL4MIS, the network the semi-supervised medical segmentation literature
//! compares on: ConvBlock = (conv3x3, BN, LeakyReLU, dropout, conv3x3, BN, LeakyReLU); down =
//! maxpool 2 + ConvBlock; up = conv1x1, bilinear x2, concat skip, ConvBlock; head conv3x3.
//! Width, depth and dropout come from the experiment file so tiny CI runs and paper-scale runs
//! share this one definition. The code is backend-agnostic: the device picks flex, CUDA, ...

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::interpolate::{Interpolate2d, Interpolate2dConfig, InterpolateMode};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, LeakyRelu, LeakyReluConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::kernels;
use serde::{Deserialize, Serialize};

/// `[model]` of an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Channels per level, shallowest first (SSL4MIS: [16, 32, 64, 128, 256]).
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// Encoder dropout per level (SSL4MIS: [0.05, 0.1, 0.2, 0.3, 0.5]).
    #[serde(default = "default_dropout")]
    pub dropout: Vec<f64>,
}

fn default_channels() -> Vec<usize> {
    vec![16, 32, 64, 128, 256]
}

fn default_dropout() -> Vec<f64> {
    vec![0.05, 0.1, 0.2, 0.3, 0.5]
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            channels: default_channels(),
            dropout: default_dropout(),
        }
    }
}

impl ModelSpec {
    /// Checks the lists agree and fit a resolution.
    pub fn validate(&self, resolution: usize) -> anyhow::Result<()> {
        if self.channels.len() < 2 {
            anyhow::bail!("model.channels needs at least 2 levels, got {:?}", self.channels);
        }
        if self.channels.len() > 16 {
            anyhow::bail!("model.channels has {} levels; at most 16 are supported", self.channels.len());
        }
        if self.channels.contains(&0) {
            anyhow::bail!("model.channels must all be at least 1, got {:?}", self.channels);
        }
        if self.channels.len() != self.dropout.len() {
            anyhow::bail!(
                "model.dropout has {} values but model.channels has {} levels",
                self.dropout.len(),
                self.channels.len()
            );
        }
        if let Some(p) = self.dropout.iter().find(|p| !(0.0..1.0).contains(*p)) {
            anyhow::bail!("model.dropout values must be in [0, 1), got {p}");
        }
        let factor = 1usize << (self.channels.len() - 1);
        if resolution == 0 {
            anyhow::bail!("budget.resolution must be at least {factor} (one pixel at the deepest of the model's levels), got 0");
        }
        if !resolution.is_multiple_of(factor) {
            anyhow::bail!("budget.resolution {resolution} must be divisible by 2^(levels-1) = {factor}");
        }
        Ok(())
    }

    /// Builds the network for `in_channels`-channel images (1 for CT/MRI, 3 for RGB) and
    /// `classes` output classes on `device`.
    pub fn init(&self, in_channels: usize, classes: usize, device: &Device) -> UNet {
        let c = &self.channels;
        let input = ConvBlock::new(in_channels, c[0], self.dropout[0], device);
        let down = (1..c.len())
            .map(|i| ConvBlock::new(c[i - 1], c[i], self.dropout[i], device))
            .collect();
        let up = (1..c.len()).rev().map(|i| UpBlock::new(c[i], c[i - 1], device)).collect();
        let head = Conv2dConfig::new([c[0], classes], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device);
        let model = UNet {
            input,
            down,
            up,
            head,
            pool: MaxPool2dConfig::new([2, 2]).init(),
        };
        model.visit(&mut DrawParameters);
        model
    }
}

/// Reads every parameter once, in the modules' field order. burn initialises a parameter
/// lazily, on its first read, from the device's generator at that moment; drawing them all in
/// `init` makes the initial weights depend on the seed the device holds then, and not on what a
/// first training step draws before or between the layers' first reads (dropout masks, say).
struct DrawParameters;

impl ModuleVisitor for DrawParameters {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

#[derive(Module, Debug)]
struct ConvBlock {
    conv_a: Conv2d,
    norm_a: BatchNorm,
    dropout: Dropout,
    conv_b: Conv2d,
    norm_b: BatchNorm,
    act: LeakyRelu,
}

impl ConvBlock {
    fn new(input: usize, output: usize, dropout: f64, device: &Device) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv_a: conv(input, output),
            norm_a: BatchNormConfig::new(output).init(device),
            dropout: DropoutConfig::new(dropout).init(),
            conv_b: conv(output, output),
            norm_b: BatchNormConfig::new(output).init(device),
            act: LeakyReluConfig::new().init(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        kernels::conv_block(self.layers(), &self.act, &self.dropout, x)
    }

    /// `forward` of `skip` and `x` concatenated along the channels.
    fn forward_cat(&self, skip: Tensor<4>, x: Tensor<4>) -> Tensor<4> {
        kernels::conv_block_cat(self.layers(), &self.act, &self.dropout, skip, x)
    }

    fn layers(&self) -> [(&Conv2d, &BatchNorm); 2] {
        [(&self.conv_a, &self.norm_a), (&self.conv_b, &self.norm_b)]
    }
}

#[derive(Module, Debug)]
struct UpBlock {
    reduce: Conv2d,
    upsample: Interpolate2d,
    block: ConvBlock,
}

impl UpBlock {
    /// `deep` channels come from below, `skip` channels from the encoder at this level.
    fn new(deep: usize, skip: usize, device: &Device) -> Self {
        Self {
            reduce: Conv2dConfig::new([deep, skip], [1, 1]).init(device),
            upsample: Interpolate2dConfig::new()
                .with_scale_factor(Some([2.0, 2.0]))
                .with_mode(InterpolateMode::Linear)
                .init(),
            block: ConvBlock::new(2 * skip, skip, 0.0, device),
        }
    }

    fn forward(&self, deep: Tensor<4>, skip: Tensor<4>) -> Tensor<4> {
        let x = kernels::interpolate(&self.upsample, kernels::conv2d(&self.reduce, deep));
        self.block.forward_cat(skip, x)
    }
}

/// The U-Net: `[batch, in_channels, H, W]` images to `[batch, classes, H, W]` logits.
#[derive(Module, Debug)]
pub struct UNet {
    input: ConvBlock,
    down: Vec<ConvBlock>,
    up: Vec<UpBlock>,
    head: Conv2d,
    pool: MaxPool2d,
}

impl UNet {
    /// Logits for a batch of images.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        let mut skips = vec![self.input.forward(images)];
        for block in &self.down {
            let below = kernels::max_pool(&self.pool, skips.last().unwrap().clone());
            skips.push(block.forward(below));
        }
        let mut x = skips.pop().unwrap();
        for up in &self.up {
            x = up.forward(x, skips.pop().unwrap());
        }
        kernels::conv2d(&self.head, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_has_class_channels_and_input_size() {
        let _serial = crate::backend::serial_random_stream();
        let device = Device::flex();
        let spec = ModelSpec {
            channels: vec![4, 8, 16],
            dropout: vec![0.0, 0.1, 0.2],
        };
        let model = spec.init(1, 3, &device);
        let x = Tensor::<4>::zeros([2, 1, 16, 16], &device);
        assert_eq!(model.forward(x).dims(), [2, 3, 16, 16]);
    }

    /// The initial weights are drawn in `init`: random draws made afterwards (a training step's
    /// dropout masks, say) leave them alone.
    #[test]
    fn initial_weights_are_drawn_at_init() {
        // Seeds and draws from the process's one stream: no other test may draw meanwhile.
        let _serial = crate::backend::serial_random_stream();
        let device = Device::flex();
        let spec = ModelSpec {
            channels: vec![4, 8],
            dropout: vec![0.0, 0.0],
        };
        let logits = |draw_in_between: bool| {
            device.seed(3);
            let model = spec.init(1, 2, &device);
            if draw_in_between {
                let _ = Tensor::<1>::random([100], burn::tensor::Distribution::Default, &device).into_data();
            }
            model.forward(Tensor::<4>::ones([1, 1, 8, 8], &device)).into_data()
        };
        assert_eq!(logits(true), logits(false));
    }

    #[test]
    fn validation_names_the_problem() {
        let spec = ModelSpec {
            channels: vec![4, 8, 16],
            dropout: vec![0.0],
        };
        assert!(spec.validate(16).unwrap_err().to_string().contains("model.dropout"));
        let spec = ModelSpec {
            channels: vec![4, 8, 16],
            dropout: vec![0.0; 3],
        };
        assert!(spec.validate(18).unwrap_err().to_string().contains("divisible"));
    }

    /// The kernels' paths against each other and against burn's, on a whole U-Net (the kernel
    /// crate's own tests stop at single ops).
    mod kernel_paths {
        use super::*;
        use crate::kernels::{isa, use_own_kernels};
        use burn::tensor::{Distribution, TensorData};

        fn bits(t: TensorData) -> Vec<u32> {
            t.try_to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
        }

        fn assert_close(what: &str, a: &TensorData, b: &TensorData, tolerance: f32) {
            assert_eq!(a.shape(), b.shape(), "{what}");
            let (a, b) = (a.try_to_vec::<f32>().unwrap(), b.try_to_vec::<f32>().unwrap());
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert!((u - v).abs() <= tolerance * (1.0 + v.abs()), "{what} {i}: {u} vs {v}");
            }
        }

        /// One whole U-Net training step (a forward pass with dropout, the backward pass, an SGD
        /// update, then the updated network's forward pass) gives the same bits on the portable path
        /// and on each SIMD path the CPU has (AVX2, AVX-512), at widths the U-Net trains with (16 to 64
        /// channels, 24 between).
        #[test]
        fn a_unet_training_step_gives_the_same_bits_on_every_isa() {
            use burn::optim::{GradientsParams, SgdConfig};
            use isa::Isa;
            let spec = ModelSpec {
                channels: vec![16, 24, 32, 64],
                dropout: vec![0.05, 0.1, 0.2, 0.3],
            };
            let step = |isa: Isa| {
                let _forced = isa::force(isa);
                assert_eq!(isa::current(), isa);
                let device = Device::flex().autodiff();
                device.seed(11);
                let model = spec.init(1, 4, &device);
                let x = Tensor::<4>::random([2, 1, 32, 32], Distribution::Normal(0.0, 1.0), &device).require_grad();
                let r = Tensor::<4>::random([2, 4, 32, 32], Distribution::Normal(0.0, 1.0), &device);
                let y = model.forward(x.clone());
                let grads = (y.clone() * r).sum().backward();
                let dx = x.grad(&grads).unwrap().into_data();
                let params = GradientsParams::from_grads(grads, &model);
                let mut optimizer = SgdConfig::new().init();
                let model = optimizer.step(0.1, model, params);
                let next = model.valid().forward(x.inner()).into_data();
                (bits(y.into_data()), bits(dx), bits(next))
            };
            let _serial = crate::backend::serial_random_stream();
            let portable = step(Isa::Portable);
            for isa in isa::compared_in("a U-Net training step").into_iter().skip(1) {
                let other = step(isa);
                assert!(portable.0 == other.0, "forward differs on {isa:?}");
                assert!(portable.1 == other.1, "input gradient differs on {isa:?}");
                assert!(portable.2 == other.2, "the updated network differs on {isa:?}");
            }
        }

        /// A U-Net seeded the same way gives the same first forward pass (in evaluation, so without
        /// dropout masks) on either path: the kernels read the same weights. (burn initialises
        /// parameters lazily; `ModelSpec::init` draws them all, and the wrappers read a convolution's
        /// weight before its bias as burn does, which once mattered: the other order drew other
        /// initial weights.)
        #[test]
        fn a_seeded_model_draws_the_same_weights_on_either_path() {
            let spec = ModelSpec {
                channels: vec![4, 8],
                dropout: vec![0.0, 0.2],
            };
            let run = |own: bool| {
                use_own_kernels(own);
                let device = Device::flex().autodiff();
                device.seed(5);
                let x = Tensor::<4>::ones([2, 1, 8, 8], &device);
                let y = spec.init(1, 3, &device).valid().forward(x.inner()).into_data();
                use_own_kernels(true);
                y
            };
            let _serial = crate::backend::serial_random_stream();
            let (own, burn) = (run(true), run(false));
            assert_close("logits", &own, &burn, 1e-4);
        }
    }
}
