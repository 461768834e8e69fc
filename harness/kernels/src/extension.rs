//! The U-Net's kernels plugged into burn through its backend-extension traits: a `Flex`
//! implementation (convolutions from `conv_cpu`, batch norm and its fused LeakyReLU from
//! `batch_norm_cpu`, dropout from `dropout_cpu`, max pooling from `pool_cpu`, bilinear resizing
//! from `resize_cpu`, concatenation and softmax over channels from `channel_ops`, the
//! segmentation loss from `loss_cpu`, a one-pass LeakyReLU gradient, and the fused inference
//! layer and block), and an
//! `Autodiff` implementation that records each op as one graph node whose gradients come from
//! the same kernels.
//!
//! The trait's default bodies are burn's own ops, so any backend the macro routes to stays
//! correct; only `Flex` overrides them. The gradients of a gradient (never taken here) would use
//! those defaults.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::ops::binary::binary_op;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{
    ActivationOps, BatchNormTrain, BatchNormTrainBackward, ConvOptions, FloatTensorOps, InterpolateMode, InterpolateOptions, ModuleOps,
};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, DType, ExtensionType, Flex, Shape, Slice, TensorData, TensorMetadata};
use burn::tensor::IntDType;

use super::batch_norm_cpu::{self, EvalNorm, NormShape, Then};
use super::channel_ops;
use super::conv_cpu::{self, ConvShape};
use super::dropout_cpu::DropoutMask;
use super::elementwise;
use super::loss_cpu::{self, LossShape};
use super::loss_ops::{burns_loss_grads, burns_loss_parts, combined_loss, dice_sum_grads, weight_mass, LossGrads, LossParts};
use super::ordered_sum;
use super::pool_cpu;
use super::resize_cpu;

/// The ops of a U-Net's training step and inference that the project computes itself on flex.
/// Each default body is burn's ops. `padded_conv2d` is a stride-1, dilation-1, single-group 2D convolution with
/// `padding` zeros on every side and a bias: the only convolution the U-Net uses.
#[backend_extension(Flex, Autodiff)]
pub trait UnetKernels: Backend {
    /// `[batch, c_in, h, w]` x `[c_out, c_in, kh, kw]` + `[c_out]` -> `[batch, c_out, h', w']`.
    fn padded_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, padding: usize) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), options(padding))
    }

    /// The gradient with respect to `x`, given the gradient of the output.
    fn padded_conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options(padding))
    }

    /// The gradient with respect to the weight, given the gradient of the output.
    fn padded_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options(padding))
    }

    /// The gradient with respect to the bias, given the gradient of the output.
    fn padded_conv2d_bias_grad(x: FloatTensor<Self>, bias: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::conv2d_bias_backward(x, bias, output_grad)
    }

    /// The weight and bias gradients together (a backward step that wants both): one pass over
    /// the output gradient where a backend can take the bias's sums on the way.
    fn padded_conv2d_param_grads(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        padding: usize,
    ) -> ConvParamGrads<Self> {
        ConvParamGrads {
            weight: Self::padded_conv2d_weight_grad(x.clone(), weight, output_grad.clone(), padding),
            bias: Self::padded_conv2d_bias_grad(x, bias, output_grad),
        }
    }

    /// `x` where `x >= 0`, else `negative_slope * x` (burn's `leaky_relu`, one graph node).
    fn leaky_relu_node(x: FloatTensor<Self>, negative_slope: f64) -> FloatTensor<Self> {
        Self::leaky_relu(x, negative_slope.into())
    }

    /// The gradient of `leaky_relu_node` at input `x`: `output_grad` where `x >= 0` (and where
    /// `x` is NaN), else `negative_slope * output_grad`; exactly what burn's composed version
    /// computes.
    fn leaky_relu_node_grad(x: FloatTensor<Self>, output_grad: FloatTensor<Self>, negative_slope: f64) -> FloatTensor<Self> {
        let bool_dtype = burn::backend::get_or_init_device_settings::<Self>(&x.device()).bool_dtype;
        let negative = Self::float_lower_elem(x, 0f32.into(), bool_dtype);
        let scaled = Self::float_mul_scalar(output_grad.clone(), negative_slope.into());
        Self::float_mask_where(output_grad, negative, scaled)
    }

    /// Batch normalization with given statistics (burn's `batch_norm`, inference).
    fn batch_norm_eval_node(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::batch_norm(x, gamma, beta, mean, variance, epsilon)
    }

    /// `leaky_relu_node(batch_norm_eval_node(padded_conv2d(x, weight, bias, padding), ...))`, for
    /// inference (no gradient): one op, so that flex normalizes and activates each output row as
    /// the convolution writes it instead of in two more passes over the activation.
    #[allow(clippy::too_many_arguments)]
    fn conv_norm_leaky_eval(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        negative_slope: f64,
    ) -> FloatTensor<Self> {
        burns_conv_norm_leaky_eval::<Self>(x, weight, bias, padding, gamma, beta, mean, variance, epsilon, negative_slope)
    }

    /// Two `conv_norm_leaky_eval` layers in a row (a convolution block in inference, its dropout
    /// the identity there): one op, so that flex takes each image from the first layer's rows
    /// straight into the second convolution's padded copy.
    fn conv_block_eval(
        x: FloatTensor<Self>,
        #[extension_type] layer_a: EvalLayer<Self>,
        #[extension_type] layer_b: EvalLayer<Self>,
        paddings: [usize; 2],
        epsilons: [f64; 2],
        negative_slope: f64,
    ) -> FloatTensor<Self> {
        block_as_layers::<Self>(x, [layer_a, layer_b], paddings, epsilons, negative_slope)
    }

    /// `conv_block_eval` of `skip` and `x` concatenated along the channels (a decoder block's
    /// input), which a backend may read where they lie instead of concatenating them first.
    fn conv_block_eval_cat(
        skip: FloatTensor<Self>,
        x: FloatTensor<Self>,
        #[extension_type] layer_a: EvalLayer<Self>,
        #[extension_type] layer_b: EvalLayer<Self>,
        paddings: [usize; 2],
        epsilons: [f64; 2],
        negative_slope: f64,
    ) -> FloatTensor<Self> {
        Self::conv_block_eval(Self::cat_channels(skip, x), layer_a, layer_b, paddings, epsilons, negative_slope)
    }

    /// Dropout in training, burn's formula `(x * mask) * (1 / (1 - prob))`, with the mask
    /// `mask` describes (`dropout_cpu`: the same on every backend and thread count).
    fn dropout_node(x: FloatTensor<Self>, mask: DropoutMask) -> FloatTensor<Self> {
        burns_dropout::<Self>(x, &mask)
    }

    /// The gradient of `dropout_node` with respect to its input.
    fn dropout_node_grad(output_grad: FloatTensor<Self>, mask: DropoutMask) -> FloatTensor<Self> {
        burns_dropout_grad::<Self>(output_grad, &mask)
    }

    /// Bilinear resizing of `[batch, channels, h, w]` to `[batch, channels, height, width]`
    /// (burn's `interpolate` in bilinear mode).
    fn resize_bilinear(x: FloatTensor<Self>, height: usize, width: usize, align_corners: bool) -> FloatTensor<Self> {
        Self::interpolate(x, [height, width], bilinear(align_corners))
    }

    /// The gradient of `resize_bilinear` with respect to its input `x`.
    fn resize_bilinear_grad(x: FloatTensor<Self>, output_grad: FloatTensor<Self>, align_corners: bool) -> FloatTensor<Self> {
        let [_, _, height, width] = output_grad.shape().dims();
        Self::interpolate_backward(x, output_grad, [height, width], bilinear(align_corners))
    }

    /// 2 x 2 max pooling with stride 2, no padding (burn's `max_pool2d` with those options).
    fn max_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false)
    }

    /// The gradient of `max_pool2x2` with respect to its input `x`.
    fn max_pool2x2_grad(x: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        burns_max_pool2x2_grad::<Self>(x, output_grad)
    }

    /// Batch normalization with the batch's statistics (burn's `batch_norm_train`), followed by
    /// `then` in the same op (burn's LeakyReLU, or nothing).
    fn batch_norm_train_node(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        then: Then,
    ) -> NormOutput<Self> {
        burns_batch_norm_train::<Self>(x, gamma, beta, epsilon, then)
    }

    /// The gradients of `batch_norm_train_node` (burn's `batch_norm_train_backward`, after
    /// `then`'s gradient at the normalized value, which is recomputed from `x`).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train_node_grad(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        then: Then,
        output_grad: FloatTensor<Self>,
    ) -> NormGrads<Self> {
        burns_batch_norm_train_grad::<Self>(x, gamma, beta, mean, variance, epsilon, then, output_grad)
    }

    /// `[batch, c_a, h, w]` and `[batch, c_b, h, w]` joined along the channels (burn's `cat`
    /// on axis 1).
    fn cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_cat(vec![a, b], 1)
    }

    /// Softmax over the channels of `[batch, channels, h, w]` (burn's `softmax` on axis 1).
    fn softmax_channels(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::softmax(x, 1)
    }

    /// The sum of every value (`[1]`), in one order on every CPU where the backend's own sum
    /// depends on the CPU (`ordered_sum.rs` says which and why); burn's `sum` elsewhere.
    fn ordered_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_sum(x)
    }

    /// `ordered_sum(x) / n` (`[1]`), burn's `mean` in that order.
    fn ordered_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mean(x)
    }

    /// The sums along the last axis, keeping it with size 1 (burn's `sum_dim` on that axis), in
    /// the order of `ordered_sum`.
    fn ordered_row_sums(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let last = x.shape().num_dims() - 1;
        Self::float_sum_dim(x, last)
    }

    /// The segmentation loss of `harness/src/train/loss.rs`, `0.5 * (cross-entropy + Dice)`
    /// (`[1]`): `logits` and `targets` `[batch, classes, h, w]`, `weights` `[batch, 1, h, w]`;
    /// burn's ops as loss.rs writes them, with softmax as burn composes it for autodiff (flex's
    /// own softmax, outside autodiff, sums in another order).
    fn segmentation_loss(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        smooth: f64,
    ) -> FloatTensor<Self> {
        combined_loss::<Self>(Self::segmentation_loss_parts(logits, targets, weights), smooth)
    }

    /// The loss's parts before they are combined: the cross-entropy (`[1]`) and Dice's class
    /// sums of `S * Tw`, `S * S` and `Tw * Tw` (`[classes]` each).
    fn segmentation_loss_parts(logits: FloatTensor<Self>, targets: FloatTensor<Self>, weights: FloatTensor<Self>) -> LossParts<Self> {
        burns_loss_parts::<Self>(logits, targets, weights)
    }

    /// The logits' gradients from Dice and from the cross-entropy, given burn's gradients of the
    /// cross-entropy's batch sum (`[1]`) and of Dice's class sums of `S * Tw` and `S * S`: the
    /// steps burn-autodiff takes back through loss.rs's ops.
    fn segmentation_loss_grads(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad_ce_sum: FloatTensor<Self>,
        grad_intersect: FloatTensor<Self>,
        grad_score_sum: FloatTensor<Self>,
    ) -> LossGrads<Self> {
        burns_loss_grads::<Self>(logits, targets, weights, grad_ce_sum, grad_intersect, grad_score_sum)
    }
}

/// Batch normalization's training-mode outputs: the output and the batch statistics.
#[derive(ExtensionType)]
pub struct NormOutput<B: Backend> {
    pub output: FloatTensor<B>,
    pub mean: FloatTensor<B>,
    pub variance: FloatTensor<B>,
}

/// One layer of a block in inference: a convolution's weight and bias, then its batch norm's
/// parameters and running statistics.
#[derive(ExtensionType)]
pub struct EvalLayer<B: Backend> {
    pub weight: FloatTensor<B>,
    pub bias: FloatTensor<B>,
    pub gamma: FloatTensor<B>,
    pub beta: FloatTensor<B>,
    pub mean: FloatTensor<B>,
    pub variance: FloatTensor<B>,
}

/// The gradients of a convolution with respect to its weight and bias.
#[derive(ExtensionType)]
pub struct ConvParamGrads<B: Backend> {
    pub weight: FloatTensor<B>,
    pub bias: FloatTensor<B>,
}

/// The gradients of batch normalization with respect to its input, `gamma` and `beta`.
#[derive(ExtensionType)]
pub struct NormGrads<B: Backend> {
    pub x: FloatTensor<B>,
    pub gamma: FloatTensor<B>,
    pub beta: FloatTensor<B>,
}

impl<B: Backend> From<BatchNormTrain<B>> for NormOutput<B> {
    fn from(result: BatchNormTrain<B>) -> Self {
        Self {
            output: result.output,
            mean: result.mean,
            variance: result.variance,
        }
    }
}

impl<B: Backend> From<BatchNormTrainBackward<B>> for NormGrads<B> {
    fn from(grads: BatchNormTrainBackward<B>) -> Self {
        Self {
            x: grads.x_grad,
            gamma: grads.gamma_grad,
            beta: grads.beta_grad,
        }
    }
}

/// burn's gradient of a 2 x 2, stride-2 max pooling: indices of the winners, then their scatter.
fn burns_max_pool2x2_grad<B: Backend>(x: FloatTensor<B>, output_grad: FloatTensor<B>) -> FloatTensor<B> {
    let indices = B::max_pool2d_with_indices(x.clone(), [2, 2], [2, 2], [0, 0], [1, 1], false, IntDType::I64).indices;
    B::max_pool2d_with_indices_backward(x, [2, 2], [2, 2], [0, 0], [1, 1], false, output_grad, indices).x_grad
}

/// The kernel-facing shape of the loss's inputs, when the kernels cover them: 4-D `f32` logits
/// and targets of one shape, `[batch, 1, h, w]` weights, a class count they compile for.
fn loss_shape(logits: &FlexTensor, targets: &FlexTensor, weights: &FlexTensor) -> Option<LossShape> {
    let (shape, pixels) = (logits.shape(), weights.shape());
    let covered = shape.num_dims() == 4
        && targets.shape() == shape
        && pixels.num_dims() == 4
        && pixels[0] == shape[0]
        && pixels[1] == 1
        && pixels[2..] == shape[2..]
        && shape.num_elements() > 0
        && loss_cpu::covers_classes(shape[1]);
    covered.then(|| LossShape {
        batch: shape[0],
        classes: shape[1],
        positions: shape[2] * shape[3],
        width: shape[3],
    })
}

/// `conv_norm_leaky_eval` as its three ops (on flex: where the fused kernel does not apply).
#[allow(clippy::too_many_arguments)]
fn burns_conv_norm_leaky_eval<B: UnetKernels>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    padding: usize,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    negative_slope: f64,
) -> FloatTensor<B> {
    let y = B::padded_conv2d(x, weight, bias, padding);
    B::leaky_relu_node(B::batch_norm_eval_node(y, gamma, beta, mean, variance, epsilon), negative_slope)
}

/// `conv_block_eval` as its two layers, each `conv_norm_leaky_eval` (the default, and flex where
/// the fused block does not apply); each layer's tensors in the trait's order: weight, bias,
/// gamma, beta, mean, variance.
fn block_as_layers<B: UnetKernels>(
    x: FloatTensor<B>,
    layers: [EvalLayer<B>; 2],
    paddings: [usize; 2],
    epsilons: [f64; 2],
    negative_slope: f64,
) -> FloatTensor<B> {
    let mut y = x;
    for ((layer, padding), epsilon) in layers.into_iter().zip(paddings).zip(epsilons) {
        let EvalLayer {
            weight,
            bias,
            gamma,
            beta,
            mean,
            variance,
        } = layer;
        y = B::conv_norm_leaky_eval(y, weight, bias, padding, gamma, beta, mean, variance, epsilon, negative_slope);
    }
    y
}

/// The fused inference layers' finish: a row normalized with running statistics, then the
/// LeakyReLU, as `leaky_relu_node(batch_norm_eval_node(..))` computes it.
fn norm_leaky_rows(norm: &EvalNorm, negative_slope: f64) -> impl conv_cpu::RowFinish + '_ {
    let slope = negative_slope as f32;
    move |c: usize, row: &mut [f32]| norm.apply_in_place(c, row, move |y| elementwise::leaky(y, slope))
}

/// `mask`'s 0 / 1 values as a tensor shaped like `like`.
fn mask_tensor<B: Backend>(like: &FloatTensor<B>, mask: &DropoutMask) -> FloatTensor<B> {
    let shape = like.shape();
    B::float_from_data(TensorData::new(mask.values(shape.num_elements()), shape), &like.device())
}

/// burn's ops for `dropout_node`: two products, the mask's then the scale's.
fn burns_dropout<B: Backend>(x: FloatTensor<B>, mask: &DropoutMask) -> FloatTensor<B> {
    let keep = mask_tensor::<B>(&x, mask);
    B::float_mul_scalar(B::float_mul(x, keep), (1.0 / (1.0 - mask.prob())).into())
}

/// burn's ops for `dropout_node_grad`: the gradients of the two products, in reverse order.
fn burns_dropout_grad<B: Backend>(output_grad: FloatTensor<B>, mask: &DropoutMask) -> FloatTensor<B> {
    let keep = mask_tensor::<B>(&output_grad, mask);
    B::float_mul(B::float_mul_scalar(output_grad, (1.0 / (1.0 - mask.prob())).into()), keep)
}

/// burn's ops for `batch_norm_train_node`: its batch norm, then `then`.
fn burns_batch_norm_train<B: UnetKernels>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
    then: Then,
) -> NormOutput<B> {
    let mut result: NormOutput<B> = B::batch_norm_train(x, gamma, beta, epsilon).into();
    if let Then::LeakyRelu(slope) = then {
        result.output = B::leaky_relu_node(result.output, slope as f64);
    }
    result
}

/// burn's ops for `batch_norm_train_node_grad`: `then`'s gradient at the normalized value
/// recomputed with the batch statistics, then burn's batch-norm gradient.
#[allow(clippy::too_many_arguments)]
fn burns_batch_norm_train_grad<B: UnetKernels>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    then: Then,
    output_grad: FloatTensor<B>,
) -> NormGrads<B> {
    let output_grad = match then {
        Then::Nothing => output_grad,
        Then::LeakyRelu(slope) => {
            let normalized = B::batch_norm(x.clone(), gamma.clone(), beta, mean.clone(), variance.clone(), epsilon);
            B::leaky_relu_node_grad(normalized, output_grad, slope as f64)
        }
    };
    B::batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad).into()
}

fn bilinear(align_corners: bool) -> InterpolateOptions {
    InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(align_corners)
}

fn options(padding: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [padding, padding], [1, 1], 1)
}

/// The kernel-facing shape of a convolution, from the input and weight tensors.
fn conv_shape(x: &FlexTensor, weight: &FlexTensor, padding: usize) -> ConvShape {
    let [batch, channels_in, height, width] = x.shape().dims();
    let [channels_out, _, kh, kw] = weight.shape().dims();
    ConvShape {
        batch,
        channels_in,
        channels_out,
        height,
        width,
        kernel: [kh, kw],
        padding,
    }
}

/// The convolution's shape when the kernels compute it: a shape they cover, and a weight and
/// bias that match the input.
fn covered_conv(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor, padding: usize) -> Option<ConvShape> {
    let shape = conv_shape(x, weight, padding);
    let matching = weight.shape()[1] == shape.channels_in && bias.shape().num_elements() == shape.channels_out;
    (shape.is_valid() && matching).then_some(shape)
}

/// Runs `kernel` over contiguous `f32` views of `tensors`, or returns `None` for another dtype
/// (which then takes burn's path).
fn with_f32<const N: usize, R>(tensors: [&FlexTensor; N], kernel: impl FnOnce([&[f32]; N]) -> R) -> Option<R> {
    if tensors.iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let owned = tensors.map(|t| {
        if t.as_slice::<f32>().is_some() {
            None
        } else {
            Some(t.to_contiguous())
        }
    });
    let mut views = [&[][..]; N];
    for ((view, tensor), copy) in views.iter_mut().zip(tensors).zip(&owned) {
        *view = copy.as_ref().unwrap_or(tensor).as_slice::<f32>().expect("contiguous after copy");
    }
    Some(kernel(views))
}

/// The kernel-facing shape of a 4-D activation; `None` for another rank or an empty one (burn's
/// path).
fn norm_shape(x: &FlexTensor) -> Option<NormShape> {
    let shape = x.shape();
    (shape.num_dims() == 4 && shape.num_elements() > 0).then(|| NormShape {
        batch: shape[0],
        channels: shape[1],
        positions: shape[2] * shape[3],
    })
}

fn flex_tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl UnetKernels for Flex {
    fn batch_norm_eval_node(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let output = norm_shape(&x).and_then(|shape| {
            with_f32([&x, &gamma, &beta, &mean, &variance], |[x, g, b, m, v]| {
                batch_norm_cpu::inference(x, g, b, m, v, epsilon, &shape)
            })
        });
        match output {
            Some(y) => flex_tensor(y, x.shape().dims::<4>().to_vec()),
            None => Self::batch_norm(x, gamma, beta, mean, variance, epsilon),
        }
    }

    fn dropout_node(x: FlexTensor, mask: DropoutMask) -> FlexTensor {
        match with_f32([&x], |[x]| mask.forward(x)) {
            Some(y) => flex_tensor(y, x.shape().dims::<4>().to_vec()),
            None => burns_dropout::<Self>(x, &mask),
        }
    }

    fn dropout_node_grad(output_grad: FlexTensor, mask: DropoutMask) -> FlexTensor {
        match with_f32([&output_grad], |[dy]| mask.backward(dy)) {
            Some(dx) => flex_tensor(dx, output_grad.shape().dims::<4>().to_vec()),
            None => burns_dropout_grad::<Self>(output_grad, &mask),
        }
    }

    fn cat_channels(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let ([batch, ca, h, w], [batch_b, cb, h_b, w_b]) = (a.shape().dims(), b.shape().dims());
        if (batch, h, w) != (batch_b, h_b, w_b) {
            return Self::float_cat(vec![a, b], 1);
        }
        match with_f32([&a, &b], |[a, b]| channel_ops::concat(a, b, batch, [ca * h * w, cb * h * w])) {
            Some(y) => flex_tensor(y, vec![batch, ca + cb, h, w]),
            None => Self::float_cat(vec![a, b], 1),
        }
    }

    fn softmax_channels(x: FlexTensor) -> FlexTensor {
        let [batch, channels, h, w] = x.shape().dims();
        match with_f32([&x], |[x]| channel_ops::softmax(x, batch, channels, h * w)) {
            Some(y) => flex_tensor(y, vec![batch, channels, h, w]),
            None => Self::softmax(x, 1),
        }
    }

    fn ordered_sum(x: FlexTensor) -> FlexTensor {
        match with_f32([&x], |[x]| ordered_sum::sum(x)) {
            Some(sum) => flex_tensor(vec![sum], vec![1]),
            None => Self::float_sum(x),
        }
    }

    fn ordered_mean(x: FlexTensor) -> FlexTensor {
        match with_f32([&x], |[x]| ordered_sum::mean(x)) {
            Some(mean) => flex_tensor(vec![mean], vec![1]),
            None => Self::float_mean(x),
        }
    }

    fn ordered_row_sums(x: FlexTensor) -> FlexTensor {
        let mut shape = x.shape().to_vec();
        let row_len = *shape.last().expect("a tensor has at least one axis");
        match with_f32([&x], |[x]| ordered_sum::sum_rows(x, row_len)) {
            // An empty row sums to zero (flex's sum_dim gives zeros there too).
            Some(sums) if row_len > 0 => {
                *shape.last_mut().expect("checked above") = 1;
                flex_tensor(sums, shape)
            }
            _ => Self::float_sum_dim(x, shape.len() - 1),
        }
    }

    fn segmentation_loss_parts(logits: FlexTensor, targets: FlexTensor, weights: FlexTensor) -> LossParts<Self> {
        let parts = loss_shape(&logits, &targets, &weights)
            .and_then(|shape| with_f32([&logits, &targets, &weights], |[l, t, w]| loss_cpu::forward(l, t, w, shape)));
        let Some((terms, row_sums)) = parts else {
            return burns_loss_parts::<Self>(logits, targets, weights);
        };
        // The last sums, over the batch for the cross-entropy and along the rows for Dice's
        // products, add as flex's do on an AVX-512 CPU, in that order on every CPU
        // (`ordered_sum`).
        let classes = logits.shape()[1];
        let width = logits.shape()[3];
        let [intersect, score_sum, target_sum] = row_sums.map(|sums| flex_tensor(ordered_sum::sum_rows(&sums, width), vec![classes]));
        LossParts {
            cross_entropy: Self::float_div(flex_tensor(vec![ordered_sum::sum(&terms)], vec![1]), weight_mass::<Self>(weights)),
            intersect,
            score_sum,
            target_sum,
        }
    }

    fn segmentation_loss_grads(
        logits: FlexTensor,
        targets: FlexTensor,
        weights: FlexTensor,
        grad_ce_sum: FlexTensor,
        grad_intersect: FlexTensor,
        grad_score_sum: FlexTensor,
    ) -> LossGrads<Self> {
        let grads = loss_shape(&logits, &targets, &weights).and_then(|shape| {
            with_f32(
                [&logits, &targets, &weights, &grad_ce_sum, &grad_intersect, &grad_score_sum],
                |[l, t, w, g, gi, gs]| loss_cpu::grad(l, t, w, shape, g[0], gi, gs),
            )
        });
        match grads {
            Some([dice, cross_entropy]) => {
                let dims = logits.shape().dims::<4>().to_vec();
                LossGrads {
                    dice: flex_tensor(dice, dims.clone()),
                    cross_entropy: flex_tensor(cross_entropy, dims),
                }
            }
            None => burns_loss_grads::<Self>(logits, targets, weights, grad_ce_sum, grad_intersect, grad_score_sum),
        }
    }

    fn max_pool2x2(x: FlexTensor) -> FlexTensor {
        let [batch, channels, h, w] = x.shape().dims();
        match with_f32([&x], |[x]| pool_cpu::forward(x, batch * channels, [h, w])) {
            Some(y) => flex_tensor(y, vec![batch, channels, h / 2, w / 2]),
            None => Self::max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false),
        }
    }

    fn max_pool2x2_grad(x: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
        let [batch, channels, h, w] = x.shape().dims();
        match with_f32([&x, &output_grad], |[x, dy]| pool_cpu::backward(x, dy, batch * channels, [h, w])) {
            Some(dx) => flex_tensor(dx, vec![batch, channels, h, w]),
            None => burns_max_pool2x2_grad::<Self>(x, output_grad),
        }
    }

    fn resize_bilinear(x: FlexTensor, height: usize, width: usize, align_corners: bool) -> FlexTensor {
        let [batch, channels, h, w] = x.shape().dims();
        let output = (h > 0 && w > 0 && height > 0 && width > 0).then(|| {
            with_f32([&x], |[x]| {
                resize_cpu::forward(x, batch * channels, [h, w], [height, width], align_corners)
            })
        });
        match output.flatten() {
            Some(y) => flex_tensor(y, vec![batch, channels, height, width]),
            None => Self::interpolate(x, [height, width], bilinear(align_corners)),
        }
    }

    fn resize_bilinear_grad(x: FlexTensor, output_grad: FlexTensor, align_corners: bool) -> FlexTensor {
        let [batch, channels, h, w] = x.shape().dims();
        let [_, _, height, width] = output_grad.shape().dims();
        let grad = (h > 0 && w > 0 && height > 0 && width > 0).then(|| {
            with_f32([&output_grad], |[dy]| {
                resize_cpu::backward(dy, batch * channels, [h, w], [height, width], align_corners)
            })
        });
        match grad.flatten() {
            Some(dx) => flex_tensor(dx, vec![batch, channels, h, w]),
            None => Self::interpolate_backward(x, output_grad, [height, width], bilinear(align_corners)),
        }
    }

    fn batch_norm_train_node(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64, then: Then) -> NormOutput<Self> {
        let result = norm_shape(&x).and_then(|shape| {
            with_f32([&x, &gamma, &beta], |[x, g, b]| {
                batch_norm_cpu::forward(x, g, b, epsilon, &shape, then)
            })
        });
        match result {
            Some(result) => NormOutput {
                output: flex_tensor(result.output, x.shape().dims::<4>().to_vec()),
                mean: flex_tensor(result.mean, vec![gamma.shape().num_elements()]),
                variance: flex_tensor(result.variance, vec![gamma.shape().num_elements()]),
            },
            None => burns_batch_norm_train::<Self>(x, gamma, beta, epsilon, then),
        }
    }

    fn batch_norm_train_node_grad(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        then: Then,
        output_grad: FlexTensor,
    ) -> NormGrads<Self> {
        let grads = norm_shape(&x).and_then(|shape| {
            with_f32([&x, &gamma, &beta, &mean, &variance, &output_grad], |[x, g, b, m, v, dy]| {
                batch_norm_cpu::backward(x, g, b, m, v, epsilon, dy, &shape, then)
            })
        });
        let channels = gamma.shape().num_elements();
        match grads {
            Some(grads) => NormGrads {
                x: flex_tensor(grads.x, x.shape().dims::<4>().to_vec()),
                gamma: flex_tensor(grads.gamma, vec![channels]),
                beta: flex_tensor(grads.beta, vec![channels]),
            },
            None => burns_batch_norm_train_grad::<Self>(x, gamma, beta, mean, variance, epsilon, then, output_grad),
        }
    }

    fn leaky_relu_node_grad(x: FlexTensor, output_grad: FlexTensor, negative_slope: f64) -> FlexTensor {
        let (slope32, slope64) = (negative_slope as f32, negative_slope);
        binary_op(
            x,
            output_grad,
            move |x: f32, g: f32| elementwise::leaky_grad(x, g, slope32),
            // `+ 0.0`: burn adds the two branches' gradients, which turns -0 into +0.
            move |x: f64, g: f64| (if x < 0.0 { g * slope64 } else { g }) + 0.0,
            None,
        )
    }

    fn padded_conv2d(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, padding: usize) -> FlexTensor {
        // Shapes outside the kernels, and mismatched ones, go to burn, whose op names the problem.
        let Some(shape) = covered_conv(&x, &weight, &bias, padding) else {
            return Self::conv2d(x, weight, Some(bias), options(padding));
        };
        match with_f32([&x, &weight, &bias], |[x, w, b]| conv_cpu::forward(x, w, b, &shape)) {
            Some(y) => flex_tensor(y, vec![shape.batch, shape.channels_out, shape.out_height(), shape.out_width()]),
            None => Self::conv2d(x, weight, Some(bias), options(padding)),
        }
    }

    fn conv_norm_leaky_eval(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        padding: usize,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        negative_slope: f64,
    ) -> FlexTensor {
        let shape = conv_shape(&x, &weight, padding);
        let channels = shape.channels_out;
        let covered = covered_conv(&x, &weight, &bias, padding).is_some()
            && [&gamma, &beta, &mean, &variance]
                .iter()
                .all(|t| t.shape().num_elements() == channels);
        let output = covered.then(|| {
            with_f32([&x, &weight, &bias, &gamma, &beta, &mean, &variance], |[x, w, b, g, bt, m, v]| {
                let norm = EvalNorm::new(g, bt, m, v, epsilon);
                let finish = norm_leaky_rows(&norm, negative_slope);
                conv_cpu::forward_then(x, w, b, &shape, &finish)
            })
        });
        match output.flatten() {
            Some(y) => flex_tensor(y, vec![shape.batch, channels, shape.out_height(), shape.out_width()]),
            None => burns_conv_norm_leaky_eval::<Self>(x, weight, bias, padding, gamma, beta, mean, variance, epsilon, negative_slope),
        }
    }

    fn conv_block_eval(
        x: FlexTensor,
        layer_a: EvalLayer<Self>,
        layer_b: EvalLayer<Self>,
        paddings: [usize; 2],
        epsilons: [f64; 2],
        negative_slope: f64,
    ) -> FlexTensor {
        let layers = [layer_a, layer_b];
        match flex_block_eval(&[&x], &layers, paddings, epsilons, negative_slope) {
            Some(y) => y,
            None => block_as_layers::<Self>(x, layers, paddings, epsilons, negative_slope),
        }
    }

    fn conv_block_eval_cat(
        skip: FlexTensor,
        x: FlexTensor,
        layer_a: EvalLayer<Self>,
        layer_b: EvalLayer<Self>,
        paddings: [usize; 2],
        epsilons: [f64; 2],
        negative_slope: f64,
    ) -> FlexTensor {
        let layers = [layer_a, layer_b];
        match flex_block_eval(&[&skip, &x], &layers, paddings, epsilons, negative_slope) {
            Some(y) => y,
            None => {
                let [layer_a, layer_b] = layers;
                Self::conv_block_eval(Self::cat_channels(skip, x), layer_a, layer_b, paddings, epsilons, negative_slope)
            }
        }
    }

    fn padded_conv2d_input_grad(x: FlexTensor, weight: FlexTensor, output_grad: FlexTensor, padding: usize) -> FlexTensor {
        let shape = conv_shape(&x, &weight, padding);
        let grad = shape
            .is_valid()
            .then(|| with_f32([&weight, &output_grad], |[w, dy]| conv_cpu::input_grad(w, dy, &shape)));
        match grad.flatten() {
            Some(dx) => flex_tensor(dx, x.shape().dims::<4>().to_vec()),
            None => Self::conv2d_x_backward(x, weight, output_grad, options(padding)),
        }
    }

    fn padded_conv2d_weight_grad(x: FlexTensor, weight: FlexTensor, output_grad: FlexTensor, padding: usize) -> FlexTensor {
        let shape = conv_shape(&x, &weight, padding);
        let grad = shape
            .is_valid()
            .then(|| with_f32([&x, &output_grad], |[x, dy]| conv_cpu::weight_grad(x, dy, &shape)));
        flex_weight_grad(grad.flatten(), x, weight, output_grad, padding)
    }

    fn padded_conv2d_param_grads(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        output_grad: FlexTensor,
        padding: usize,
    ) -> ConvParamGrads<Self> {
        let shape = conv_shape(&x, &weight, padding);
        let own = shape
            .is_valid()
            .then(|| with_f32([&x, &output_grad], |[x, dy]| conv_cpu::weight_and_bias_grad(x, dy, &shape, true)))
            .flatten();
        let Some((dw, Some(db))) = own else {
            return ConvParamGrads {
                weight: Self::padded_conv2d_weight_grad(x.clone(), weight, output_grad.clone(), padding),
                bias: Self::padded_conv2d_bias_grad(x, bias, output_grad),
            };
        };
        ConvParamGrads {
            bias: flex_tensor(db, vec![shape.channels_out]),
            weight: flex_weight_grad(Some(dw), x, weight, output_grad, padding),
        }
    }

    fn padded_conv2d_bias_grad(x: FlexTensor, bias: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
        let [batch, channels_out, height, width] = output_grad.shape().dims();
        // The bias gradient reads only the output's shape: a 1 x 1 kernel over one input channel
        // describes it. An empty axis (which the kernels do not cover) takes burn's op.
        let shape = ConvShape {
            batch,
            channels_in: 1,
            channels_out,
            height,
            width,
            kernel: [1, 1],
            padding: 0,
        };
        let own = shape
            .is_valid()
            .then(|| with_f32([&output_grad], |[dy]| conv_cpu::bias_grad(dy, &shape)));
        match own.flatten() {
            Some(db) => flex_tensor(db, vec![channels_out]),
            None => Self::conv2d_bias_backward(x, bias, output_grad),
        }
    }
}

/// Flex's fused inference block (`conv_cpu::forward_twice_then`) over `parts` (one activation,
/// or two to be read as if concatenated along the channels), with `layers`' convolution and
/// norm parameters (`[weight, bias, gamma, beta, mean, variance]` each): `None` where the kernels
/// do not cover the shapes or the dtype (the caller then takes burn's ops: the layers one by one,
/// after concatenating two parts).
fn flex_block_eval(
    parts: &[&FlexTensor],
    layers: &[EvalLayer<Flex>; 2],
    paddings: [usize; 2],
    epsilons: [f64; 2],
    negative_slope: f64,
) -> Option<FlexTensor> {
    let [EvalLayer {
        weight: weight_a,
        bias: bias_a,
        gamma: gamma_a,
        beta: beta_a,
        mean: mean_a,
        variance: variance_a,
    }, EvalLayer {
        weight: weight_b,
        bias: bias_b,
        gamma: gamma_b,
        beta: beta_b,
        mean: mean_b,
        variance: variance_b,
    }] = layers;
    let norm_covers =
        |shape: &ConvShape, parameters: [&FlexTensor; 4]| parameters.iter().all(|t| t.shape().num_elements() == shape.channels_out);
    // The parts: 4-D, the same images and sizes, their channels added up.
    let dims: Vec<[usize; 4]> = parts
        .iter()
        .filter(|t| t.shape().num_dims() == 4)
        .map(|t| t.shape().dims())
        .collect();
    let same_images = dims.len() == parts.len() && dims.windows(2).all(|d| (d[0][0], d[0][2], d[0][3]) == (d[1][0], d[1][2], d[1][3]));
    let [batch, _, height, width] = *dims.first().filter(|_| same_images)?;
    let channels_in: usize = dims.iter().map(|d| d[1]).sum();
    let [channels_a, weight_channels, kernel_height, kernel_width] = weight_a.shape().dims();
    let shape_a = ConvShape {
        batch,
        channels_in,
        channels_out: channels_a,
        height,
        width,
        kernel: [kernel_height, kernel_width],
        padding: paddings[0],
    };
    // Both convolutions and both norms covered, the second convolution reading the first one's
    // output; the second shape is built only from a first one the kernels cover (its output size
    // is computed from it).
    if !(shape_a.is_valid() && weight_channels == channels_in && bias_a.shape().num_elements() == channels_a) {
        return None;
    }
    let [channels_b, _, kernel_height, kernel_width] = weight_b.shape().dims();
    let shape_b = ConvShape {
        channels_in: shape_a.channels_out,
        channels_out: channels_b,
        height: shape_a.out_height(),
        width: shape_a.out_width(),
        kernel: [kernel_height, kernel_width],
        padding: paddings[1],
        ..shape_a
    };
    let covered = shape_b.is_valid()
        && weight_b.shape().dims::<4>() == [shape_b.channels_out, shape_b.channels_in, shape_b.kernel[0], shape_b.kernel[1]]
        && bias_b.shape().num_elements() == shape_b.channels_out
        && norm_covers(&shape_a, [gamma_a, beta_a, mean_a, variance_a])
        && norm_covers(&shape_b, [gamma_b, beta_b, mean_b, variance_b]);
    if !covered {
        return None;
    }
    let parameters = [
        weight_a, bias_a, gamma_a, beta_a, mean_a, variance_a, weight_b, bias_b, gamma_b, beta_b, mean_b, variance_b,
    ];
    let block = |input: conv_cpu::ConvInput| {
        with_f32(parameters, |[wa, ba, ga, bta, ma, va, wb, bb, gb, btb, mb, vb]| {
            let (norm_a, norm_b) = (
                EvalNorm::new(ga, bta, ma, va, epsilons[0]),
                EvalNorm::new(gb, btb, mb, vb, epsilons[1]),
            );
            let (between, finish) = (norm_leaky_rows(&norm_a, negative_slope), norm_leaky_rows(&norm_b, negative_slope));
            conv_cpu::forward_twice_then(input, [(wa, ba, &shape_a), (wb, bb, &shape_b)], &between, &finish)
        })
    };
    let y = match parts {
        [x] => with_f32([x], |[x]| block(conv_cpu::ConvInput::One(x))),
        [first, second] => with_f32([first, second], |[first, second]| block(conv_cpu::ConvInput::Cat([first, second]))),
        _ => None,
    }
    .flatten()?;
    Some(flex_tensor(
        y,
        vec![shape_b.batch, shape_b.channels_out, shape_b.out_height(), shape_b.out_width()],
    ))
}

/// The weight gradient as a tensor: the kernel's `computed` one, or burn's op where the kernel did
/// not cover the input or gave a non-finite value. The kernel's sums also read the values beside
/// the padding, times a zero output gradient: an infinite input there gives NaN where burn's sum,
/// which never reads them, stays finite. A non-finite gradient is therefore recomputed by burn's
/// op (a check of the small weight gradient; a finite sum never takes it).
fn flex_weight_grad(computed: Option<Vec<f32>>, x: FlexTensor, weight: FlexTensor, output_grad: FlexTensor, padding: usize) -> FlexTensor {
    match computed.filter(|dw| dw.iter().all(|v| v.is_finite())) {
        Some(dw) => flex_tensor(dw, weight.shape().dims::<4>().to_vec()),
        None => Flex::conv2d_weight_backward(x, weight, output_grad, options(padding)),
    }
}

/// The backward step of `padded_conv2d`: each tracked parent gets its gradient from the kernels.
#[derive(Debug)]
struct PaddedConv2dBackward;

impl<B: UnetKernels> Backward<B, 3> for PaddedConv2dBackward {
    type State = (NodeId, NodeId, NodeId, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, bias_state, padding) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_state);
        let bias: FloatTensor<B> = checkpointer.retrieve_node_output(bias_state);
        if let Some(node) = node_x {
            let grad = B::padded_conv2d_input_grad(x.clone(), weight.clone(), output_grad.clone(), padding);
            grads.register::<B>(node.id, grad);
        }
        match (node_weight, node_bias) {
            (Some(weight_node), Some(bias_node)) => {
                let both = B::padded_conv2d_param_grads(x, weight, bias, output_grad, padding);
                grads.register::<B>(weight_node.id, both.weight);
                grads.register::<B>(bias_node.id, both.bias);
            }
            (Some(node), None) => grads.register::<B>(node.id, B::padded_conv2d_weight_grad(x, weight, output_grad, padding)),
            (None, Some(node)) => grads.register::<B>(node.id, B::padded_conv2d_bias_grad(x, bias, output_grad)),
            (None, None) => {}
        }
    }
}

/// The backward step of `leaky_relu_node`, from its saved input.
#[derive(Debug)]
struct LeakyReluBackward;

impl<B: UnetKernels> Backward<B, 1> for LeakyReluBackward {
    type State = (FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x, negative_slope) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::leaky_relu_node_grad(x, output_grad, negative_slope));
        }
    }
}

/// The backward step of `dropout_node`: the mask the forward pass drew, kept in the shared
/// `DropoutMask` (a backend whose forward pass did not draw it draws it here).
#[derive(Debug)]
struct DropoutBackward;

impl<B: UnetKernels> Backward<B, 1> for DropoutBackward {
    type State = DropoutMask;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::dropout_node_grad(output_grad, ops.state));
        }
    }
}

/// The backward steps of `ordered_sum`, `ordered_mean` and `ordered_row_sums`: burn-autodiff's
/// steps for `sum`, `mean` and `sum_dim` (ones, times `1 / n` for the mean, times the gradient
/// spread over the input's shape), so only the forward order of additions changes.
#[derive(Debug, Clone, Copy)]
enum OrderedReduction {
    Sum,
    Mean,
    RowSums,
}

impl<B: UnetKernels> Backward<B, 1> for OrderedReduction {
    type State = Shape;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Some(node) = node_x else { return };
        let shape = ops.state;
        let (device, dtype) = (grad.device(), grad.dtype());
        let ones = B::float_ones(shape.clone(), &device, dtype.into());
        let (factor, grad) = match self {
            OrderedReduction::Sum => (ones, B::float_reshape(grad, Shape::from(vec![1; shape.num_dims()]))),
            OrderedReduction::Mean => {
                let factor = B::float_mul_scalar(ones, (1.0 / shape.num_elements() as f64).into());
                (factor, B::float_reshape(grad, Shape::from(vec![1; shape.num_dims()])))
            }
            // burn sums the gradient along the axis it spreads it over (of size 1: a copy).
            OrderedReduction::RowSums => (ones, B::float_sum_dim(grad, shape.num_dims() - 1)),
        };
        grads.register::<B>(node.id, B::float_mul(factor, grad));
    }
}

impl OrderedReduction {
    fn forward<B: UnetKernels>(self, x: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            OrderedReduction::Sum => B::ordered_sum(x),
            OrderedReduction::Mean => B::ordered_mean(x),
            OrderedReduction::RowSums => B::ordered_row_sums(x),
        }
    }

    /// The reduction as one graph node of `Autodiff<B>`, at the depth of burn's own op.
    fn record<B: UnetKernels, C: CheckpointStrategy>(self, x: FloatTensor<Autodiff<B, C>>) -> FloatTensor<Autodiff<B, C>> {
        let shape = x.shape();
        match self.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(shape, self.forward::<B>(x.into_primitive())),
            OpsKind::UnTracked(prep) => prep.finish(self.forward::<B>(x.into_primitive())),
        }
    }
}

/// The backward step of `segmentation_loss`, one graph node where burn's ops made about forty.
/// The logits get the two gradients burn's ops gave them, Dice's then the cross-entropy's, from
/// a node at the depth of burn's first ops on them, so gradients from other uses of the logits
/// (mean teacher's consistency term) are added in the same order as before.
#[derive(Debug)]
struct SegmentationLossBackward;

type LossSums<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

impl<B: UnetKernels> Backward<B, 2> for SegmentationLossBackward {
    type State = (NodeId, FloatTensor<B>, FloatTensor<B>, f64, LossSums<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_logits, detached_max] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (logits_state, targets, weights, smooth, (intersect, score_sum, target_sum)) = ops.state;
        let logits: FloatTensor<B> = checkpointer.retrieve_node_output(logits_state);
        if let Some(node) = detached_max {
            // Tracked only when the logits are a leaf that requires a gradient (a test's): the
            // loss does not depend on the shift, and the detached copy's gradient is never read.
            let mut shape = logits.shape();
            shape[1] = 1;
            grads.register::<B>(node.id, B::float_zeros(shape, &logits.device(), logits.dtype().into()));
        }
        let Some(node) = node_logits else { return };
        // 0.5 * (ce + dice): each term's gradient is the loss's times 0.5; ce = sum / mass.
        let grad_terms = B::float_mul_scalar(grad, 0.5.into());
        let (grad_intersect, grad_score_sum) = dice_sum_grads::<B>(intersect, score_sum, target_sum, smooth, grad_terms.clone());
        let grad_ce_sum = B::float_mul(grad_terms, B::float_recip(weight_mass::<B>(weights.clone())));
        let result = B::segmentation_loss_grads(logits, targets, weights, grad_ce_sum, grad_intersect, grad_score_sum);
        grads.register::<B>(node.id, result.dice);
        grads.register::<B>(node.id, result.cross_entropy);
    }
}

/// The backward step of `max_pool2x2`, from its saved input (the winners are recomputed).
#[derive(Debug)]
struct MaxPool2x2Backward;

impl<B: UnetKernels> Backward<B, 1> for MaxPool2x2Backward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::max_pool2x2_grad(ops.state, output_grad));
        }
    }
}

/// The backward step of `batch_norm_train_node`, from the saved input, `gamma`, `beta` and
/// statistics.
#[derive(Debug)]
struct BatchNormBackward;

impl<B: UnetKernels> Backward<B, 3> for BatchNormBackward {
    type State = (NodeId, NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, f64, Then);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x_state, gamma_state, beta_state, mean, variance, epsilon, then) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(gamma_state);
        let beta: FloatTensor<B> = checkpointer.retrieve_node_output(beta_state);
        let result = B::batch_norm_train_node_grad(x, gamma, beta, mean, variance, epsilon, then, output_grad);
        for (node, grad) in [(node_x, result.x), (node_gamma, result.gamma), (node_beta, result.beta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The backward step of `resize_bilinear`, from the saved input.
#[derive(Debug)]
struct ResizeBilinearBackward;

impl<B: UnetKernels> Backward<B, 1> for ResizeBilinearBackward {
    type State = (NodeId, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x_state, align_corners) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::resize_bilinear_grad(x, output_grad, align_corners));
        }
    }
}

/// The backward step of `cat_channels`: each input's channels of the output gradient.
#[derive(Debug)]
struct CatChannelsBackward;

impl<B: UnetKernels> Backward<B, 2> for CatChannelsBackward {
    /// The channel counts of the two inputs.
    type State = [usize; 2];

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let [channels_a, channels_b] = ops.state;
        if let Some(node) = node_a {
            grads.register::<B>(node.id, channel_range::<B>(output_grad.clone(), 0, channels_a));
        }
        if let Some(node) = node_b {
            grads.register::<B>(node.id, channel_range::<B>(output_grad, channels_a, channels_b));
        }
    }
}

/// Channels `start..start + len` of `[batch, channels, h, w]` (the gradient of `cat_channels` for
/// one of its inputs): burn's slice on every backend, which on flex is a view that the
/// gradient's consumers read in place (a parallel copy was no faster in an A/B of whole training
/// steps).
fn channel_range<B: Backend>(x: FloatTensor<B>, start: usize, len: usize) -> FloatTensor<B> {
    let [batch, _, h, w] = x.shape().dims();
    B::float_slice(
        x,
        &[
            Slice::from(0..batch),
            Slice::from(start..start + len),
            Slice::from(0..h),
            Slice::from(0..w),
        ],
    )
}

impl<B: UnetKernels, C: CheckpointStrategy> UnetKernels for Autodiff<B, C> {
    fn segmentation_loss(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        smooth: f64,
    ) -> FloatTensor<Self> {
        // Targets or weights with a gradient of their own take burn's ops (and burn's graph).
        if targets.is_tracked() || weights.is_tracked() {
            return combined_loss::<Self>(burns_loss_parts::<Self>(logits, targets, weights), smooth);
        }
        // burn's first ops on the logits subtract their detached maximum: with that maximum as a
        // second parent (it gets no gradient), this node sits at those ops' depth in the graph,
        // so the logits' gradients from other uses are added in the order burn's ops gave.
        let max = Self::float_max_dim(Self::float_detach(logits.clone()), 1);
        let (targets, weights) = (targets.into_primitive(), weights.into_primitive());
        let parts = B::segmentation_loss_parts(logits.primitive().clone(), targets.clone(), weights.clone());
        let sums = (parts.intersect.clone(), parts.score_sum.clone(), parts.target_sum.clone());
        let loss = combined_loss::<B>(parts, smooth);
        match SegmentationLossBackward
            .prepare::<C>([logits.node(), max.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&logits), targets, weights, smooth, sums);
                prep.finish(state, loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(loss),
        }
    }

    fn ordered_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
        OrderedReduction::Sum.record::<B, C>(x)
    }

    fn ordered_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        OrderedReduction::Mean.record::<B, C>(x)
    }

    fn ordered_row_sums(x: FloatTensor<Self>) -> FloatTensor<Self> {
        OrderedReduction::RowSums.record::<B, C>(x)
    }

    fn cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let channels = [a.shape()[1], b.shape()[1]];
        match CatChannelsBackward.prepare::<C>([a.node(), b.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(channels, B::cat_channels(a.into_primitive(), b.into_primitive())),
            OpsKind::UnTracked(prep) => prep.finish(B::cat_channels(a.into_primitive(), b.into_primitive())),
        }
    }

    fn resize_bilinear(x: FloatTensor<Self>, height: usize, width: usize, align_corners: bool) -> FloatTensor<Self> {
        match ResizeBilinearBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), align_corners);
                prep.finish(state, B::resize_bilinear(x.into_primitive(), height, width, align_corners))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::resize_bilinear(x.into_primitive(), height, width, align_corners)),
        }
    }

    fn batch_norm_train_node(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        then: Then,
    ) -> NormOutput<Self> {
        let prep = BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (output, mean, variance) = match prep {
            OpsKind::Tracked(mut prep) => {
                let saved = (prep.checkpoint(&x), prep.checkpoint(&gamma), prep.checkpoint(&beta));
                let result = B::batch_norm_train_node(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), epsilon, then);
                let state = (
                    saved.0,
                    saved.1,
                    saved.2,
                    result.mean.clone(),
                    result.variance.clone(),
                    epsilon,
                    then,
                );
                (prep.finish(state, result.output), result.mean, result.variance)
            }
            OpsKind::UnTracked(prep) => {
                let result = B::batch_norm_train_node(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), epsilon, then);
                (prep.finish(result.output), result.mean, result.variance)
            }
        };
        NormOutput {
            output,
            // The statistics leave the graph, as burn's own batch norm returns them.
            mean: <FloatTensor<Self>>::new(mean),
            variance: <FloatTensor<Self>>::new(variance),
        }
    }

    fn max_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match MaxPool2x2Backward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let output = B::max_pool2x2(input.clone());
                prep.finish(input, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool2x2(x.into_primitive())),
        }
    }

    fn dropout_node(x: FloatTensor<Self>, mask: DropoutMask) -> FloatTensor<Self> {
        match DropoutBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(mask.clone(), B::dropout_node(x.into_primitive(), mask)),
            OpsKind::UnTracked(prep) => prep.finish(B::dropout_node(x.into_primitive(), mask)),
        }
    }

    fn leaky_relu_node(x: FloatTensor<Self>, negative_slope: f64) -> FloatTensor<Self> {
        match LeakyReluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let output = B::leaky_relu_node(input.clone(), negative_slope);
                prep.finish((input, negative_slope), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::leaky_relu_node(x.into_primitive(), negative_slope)),
        }
    }

    fn padded_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, padding: usize) -> FloatTensor<Self> {
        match PaddedConv2dBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), prep.checkpoint(&bias), padding);
                let output = B::padded_conv2d(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), padding);
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::padded_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                padding,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flex's weight and bias gradients taken together give the bits of the two taken one by one
    /// (the trait's default body), at a shape whose rows are not whole lanes.
    #[test]
    fn flex_param_grads_together_are_bitwise_the_separate_ones() {
        let values = |len: usize, seed: f32| -> Vec<f32> { (0..len).map(|i| (i as f32 * 0.37 + seed).sin()).collect() };
        let (batch, c_in, c_out, h, w) = (3, 5, 11, 6, 13);
        let x = || flex_tensor(values(batch * c_in * h * w, 1.0), vec![batch, c_in, h, w]);
        let weight = || flex_tensor(values(c_out * c_in * 9, 2.0), vec![c_out, c_in, 3, 3]);
        let bias = || flex_tensor(values(c_out, 3.0), vec![c_out]);
        let dy = || flex_tensor(values(batch * c_out * h * w, 4.0), vec![batch, c_out, h, w]);
        let bits = |t: FlexTensor| {
            t.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        let together = <Flex as UnetKernels>::padded_conv2d_param_grads(x(), weight(), bias(), dy(), 1);
        assert_eq!(
            bits(together.weight),
            bits(<Flex as UnetKernels>::padded_conv2d_weight_grad(x(), weight(), dy(), 1))
        );
        assert_eq!(
            bits(together.bias),
            bits(<Flex as UnetKernels>::padded_conv2d_bias_grad(x(), bias(), dy()))
        );
    }

    /// Flex's dropout kernels give the bits of the default bodies (burn's products with the same
    /// mask), forward and backward.
    #[test]
    fn flex_dropout_is_bitwise_the_default_ops() {
        let values: Vec<f32> = (0..2 * 3 * 7 * 5).map(|i| (i as f32 * 0.61).sin() * 3.0).collect();
        let tensor = || flex_tensor(values.clone(), vec![2, 3, 7, 5]);
        let mask = || DropoutMask::new(0.3, 9, 35);
        let bits = |t: FlexTensor| {
            t.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bits(<Flex as UnetKernels>::dropout_node(tensor(), mask())),
            bits(burns_dropout::<Flex>(tensor(), &mask()))
        );
        assert_eq!(
            bits(<Flex as UnetKernels>::dropout_node_grad(tensor(), mask())),
            bits(burns_dropout_grad::<Flex>(tensor(), &mask()))
        );
    }
}
