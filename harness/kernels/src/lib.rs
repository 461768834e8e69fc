//! The project's own CPU kernels for the U-Net's hot ops, used on the flex backend.
//!
//! A training step spends most of its time in convolutions, and burn's generic gradients for them
//! run far below the machine's arithmetic rate on flex (docs/benchmarks.md has the profile). The
//! kernels here compute the same functions directly over zero-padded images (`conv_cpu`, with the
//! inner loops in `microkernel`), and batch norm (fused with the LeakyReLU after it, its sums in
//! `channel_sums`), dropout, max pooling, bilinear resizing, concatenation and softmax over
//! channels in few passes (`elementwise` compiles their loops for AVX2 and AVX-512 too; `output`
//! hands out their output buffers and sizes their tasks, `scratch` keeps working buffers per
//! thread, `transpose` holds the register transposes two of them share); in inference a
//! block's two layers (convolution, batch norm and LeakyReLU each) are one op. They plug into burn's autodiff
//! through a backend extension (`extension`). Other backends (GPUs) and other shapes keep burn's
//! ops. The tests below check values and gradients against burn's.

pub mod batch_norm_cpu;
pub mod channel_ops;
pub mod channel_sums;
pub mod conv_cpu;
pub mod dropout_cpu;
pub mod elementwise;
pub mod extension;
pub mod fma_peak;
pub mod isa;
pub mod layer_probe;
pub mod loss_cpu;
pub mod loss_ops;
pub mod microkernel;
pub mod ordered_sum;
pub mod output;
pub mod pool_cpu;
pub mod resize_cpu;
pub mod scratch;
pub mod transpose;

use std::cell::Cell;
use std::sync::OnceLock;

use burn::backend::{Dispatch, DispatchDevice, DispatchTensor};
use burn::module::RunningState;
use burn::nn::conv::Conv2d;
use burn::nn::interpolate::{Interpolate2d, InterpolateMode};
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Dropout, LeakyRelu, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use batch_norm_cpu::Then;
use dropout_cpu::DropoutMask;
use extension::{EvalLayer, UnetKernels};

thread_local! {
    static OWN_KERNELS: Cell<bool> = Cell::new(default_own_kernels());
}

/// The process-wide default: the project's kernels unless `ATSO_KERNELS=burn` (for comparing
/// against burn's ops, e.g. when reproducing records written before the kernels existed).
fn default_own_kernels() -> bool {
    static DEFAULT: OnceLock<bool> = OnceLock::new();
    *DEFAULT.get_or_init(|| std::env::var("ATSO_KERNELS").map_or(true, |v| v != "burn"))
}

/// Switches the calling thread between the project's kernels (the default) and burn's ops, so a
/// benchmark can time both in one run. The choice is made where a model's forward pass runs, so
/// it is per thread: parallel runs and tests never see each other's setting. Results differ in
/// the last bits between the two (another summation order), so runs meant to reproduce a record
/// keep the default.
pub fn use_own_kernels(on: bool) {
    OWN_KERNELS.with(|own| own.set(on));
}

/// Whether the calling thread uses the project's kernels.
pub fn own_kernels() -> bool {
    OWN_KERNELS.with(Cell::get)
}

/// `conv.forward(x)`, through the project's kernel when the tensor lives on flex and the
/// convolution is one it covers (stride 1, no dilation, one group, equal padding, a bias).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match covered_padding(conv) {
        Some(padding) if own_kernels() && is_flex(&x) => {
            let (weight, bias) = conv_parameters(conv);
            let out = <Dispatch as UnetKernels>::padded_conv2d(x.into_dispatch(), weight, bias, padding);
            Tensor::from_dispatch(out)
        }
        _ => conv.forward(x),
    }
}

/// A covered convolution's weight and bias for the kernels, weight first as burn's
/// `Conv2d::forward` reads them: a parameter not yet drawn (burn draws lazily; `ModelSpec::init`
/// draws them all) draws in that order.
fn conv_parameters(conv: &Conv2d) -> (DispatchTensor, DispatchTensor) {
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref().expect("covered_padding checked the bias").val();
    (weight.into_dispatch(), bias.into_dispatch())
}

/// What batch norm in inference reads: gamma, beta and the running mean and variance on `device`.
fn eval_norm_parameters(norm: &BatchNorm, device: &Device) -> [DispatchTensor; 4] {
    [
        norm.gamma.val().into_dispatch(),
        norm.beta.val().into_dispatch(),
        norm.running_mean.value().to_device(device).into_dispatch(),
        norm.running_var.value().to_device(device).into_dispatch(),
    ]
}

/// `leaky_relu(act, batch_norm(norm, conv2d(conv, x)))`: a convolution block's layer, bit for
/// bit the three ops' values (and gradients). In inference on flex (a plain device, so batch
/// norm uses its running statistics) it is one op that normalizes and activates each output row
/// as the convolution writes it; in training, normalization and activation are one graph node.
pub fn conv_norm_leaky(conv: &Conv2d, norm: &BatchNorm, act: &LeakyRelu, x: Tensor<4>) -> Tensor<4> {
    match covered_padding(conv) {
        Some(padding) if own_kernels() && is_flex(&x) && !x.device().is_autodiff() => {
            let (weight, bias) = conv_parameters(conv);
            let [gamma, beta, mean, variance] = eval_norm_parameters(norm, &x.device());
            let out = <Dispatch as UnetKernels>::conv_norm_leaky_eval(
                x.into_dispatch(),
                weight,
                bias,
                padding,
                gamma,
                beta,
                mean,
                variance,
                norm.epsilon,
                act.negative_slope,
            );
            Tensor::from_dispatch(out)
        }
        _ => batch_norm_then(norm, Some(act), conv2d(conv, x)),
    }
}

/// A convolution block: `conv_norm_leaky` with the first layer, `dropout`, `conv_norm_leaky`
/// with the second. In inference on flex (where the dropout is the identity) it is one op that
/// takes each image from the first layer's rows straight into the second convolution's padded
/// copy (`conv_cpu::forward_twice_then`), the values bit for bit the layers'; elsewhere the
/// layers run one after the other.
pub fn conv_block(layers: [(&Conv2d, &BatchNorm); 2], act: &LeakyRelu, between: &Dropout, x: Tensor<4>) -> Tensor<4> {
    match fused_block_paddings(layers, &[&x]) {
        Some(paddings) => block_eval(layers, act, paddings, None, x),
        None => {
            let [(conv_a, norm_a), (conv_b, norm_b)] = layers;
            let x = conv_norm_leaky(conv_a, norm_a, act, x);
            let x = dropout(between, x);
            conv_norm_leaky(conv_b, norm_b, act, x)
        }
    }
}

/// `conv_block` of `skip` and `x` concatenated along the channels (a decoder block's input). In
/// inference on flex the fused block reads both where they lie, padding each image from them, so
/// the concatenation is never written (it had been 1.8 % of an inference batch); elsewhere
/// `cat_channels`, then `conv_block`. The same values either way.
pub fn conv_block_cat(layers: [(&Conv2d, &BatchNorm); 2], act: &LeakyRelu, between: &Dropout, skip: Tensor<4>, x: Tensor<4>) -> Tensor<4> {
    match fused_block_paddings(layers, &[&skip, &x]) {
        Some(paddings) => block_eval(layers, act, paddings, Some(skip), x),
        None => conv_block(layers, act, between, cat_channels(skip, x)),
    }
}

/// The paddings of a block the fused inference op takes: both convolutions' paddings covered,
/// the project's kernels on, and every input a flex tensor outside autodiff.
fn fused_block_paddings(layers: [(&Conv2d, &BatchNorm); 2], inputs: &[&Tensor<4>]) -> Option<[usize; 2]> {
    let [(conv_a, _), (conv_b, _)] = layers;
    let eligible = own_kernels() && inputs.iter().all(|x| is_flex(x) && !x.device().is_autodiff());
    match (covered_padding(conv_a), covered_padding(conv_b)) {
        (Some(padding_a), Some(padding_b)) if eligible => Some([padding_a, padding_b]),
        _ => None,
    }
}

/// The fused inference block over `x`, or over `skip` and `x` concatenated along the channels
/// (`UnetKernels::conv_block_eval`, `conv_block_eval_cat`), its parameters read in the order the
/// layers one after the other read them.
fn block_eval(
    layers: [(&Conv2d, &BatchNorm); 2],
    act: &LeakyRelu,
    paddings: [usize; 2],
    skip: Option<Tensor<4>>,
    x: Tensor<4>,
) -> Tensor<4> {
    let [(conv_a, norm_a), (conv_b, norm_b)] = layers;
    let device = x.device();
    let layer = |conv: &Conv2d, norm: &BatchNorm| {
        let (weight, bias) = conv_parameters(conv);
        let [gamma, beta, mean, variance] = eval_norm_parameters(norm, &device);
        EvalLayer {
            weight,
            bias,
            gamma,
            beta,
            mean,
            variance,
        }
    };
    let (layer_a, layer_b) = (layer(conv_a, norm_a), layer(conv_b, norm_b));
    let (epsilons, slope) = ([norm_a.epsilon, norm_b.epsilon], act.negative_slope);
    let out = match skip {
        None => <Dispatch as UnetKernels>::conv_block_eval(x.into_dispatch(), layer_a, layer_b, paddings, epsilons, slope),
        Some(skip) => <Dispatch as UnetKernels>::conv_block_eval_cat(
            skip.into_dispatch(),
            x.into_dispatch(),
            layer_a,
            layer_b,
            paddings,
            epsilons,
            slope,
        ),
    };
    Tensor::from_dispatch(out)
}

/// burn's `LeakyRelu::forward`, as one graph node with a one-pass gradient on flex (burn records
/// three ops whose gradients take several passes). Values and gradients are bit-for-bit burn's.
pub fn leaky_relu(act: &LeakyRelu, x: Tensor<4>) -> Tensor<4> {
    if own_kernels() && is_flex(&x) {
        Tensor::from_dispatch(<Dispatch as UnetKernels>::leaky_relu_node(x.into_dispatch(), act.negative_slope))
    } else {
        act.forward(x)
    }
}

/// burn's `BatchNorm::forward` on a 4-D activation. In training on flex the normalization and
/// its gradients come from `batch_norm_cpu`; the running statistics are updated as burn does.
pub fn batch_norm(norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    batch_norm_then(norm, None, x)
}

/// `act` (when given) after `batch_norm(norm, x)`. In training on flex both are one graph node
/// whose backward step recomputes the normalized value, saving a pass over the activation in
/// each direction; values and gradients are bit for bit the two ops'.
fn batch_norm_then(norm: &BatchNorm, act: Option<&LeakyRelu>, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let activate = |y: Tensor<4>| match act {
        Some(act) => leaky_relu(act, y),
        None => y,
    };
    // An empty activation takes burn's modules (the kernels' planes are never empty).
    if !(own_kernels() && is_flex(&x)) || x.shape().num_elements() == 0 {
        return activate(norm.forward(x));
    }
    if !(device.is_autodiff() && norm.training.is_enabled()) {
        // Inference, as `BatchNorm::forward` does it: the running statistics, in one pass.
        let [gamma, beta, mean, variance] = eval_norm_parameters(norm, &device);
        let out = <Dispatch as UnetKernels>::batch_norm_eval_node(x.into_dispatch(), gamma, beta, mean, variance, norm.epsilon);
        return activate(Tensor::from_dispatch(out));
    }
    let then = act.map_or(Then::Nothing, |act| Then::LeakyRelu(act.negative_slope as f32));
    let result = <Dispatch as UnetKernels>::batch_norm_train_node(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.beta.val().into_dispatch(),
        norm.epsilon,
        then,
    );
    let update = |state: &RunningState<Tensor<1>>, batch: DispatchTensor| {
        let batch = Tensor::<1>::from_dispatch(batch).detach();
        let running = state.value_sync().to_device(&device);
        let updated = running.mul_scalar(1.0 - norm.momentum).add(batch.mul_scalar(norm.momentum));
        state.update(updated.detach());
    };
    update(&norm.running_mean, result.mean);
    update(&norm.running_var, result.variance);
    Tensor::from_dispatch(result.output)
}

/// `layer.forward(x)`. In training on flex the mask comes from `dropout_cpu`, keyed by a seed
/// drawn from the device's generator (so it follows the run's seed, as burn's mask does); values
/// and gradients are burn's formula with another draw of the mask.
pub fn dropout(layer: &Dropout, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let active = layer.training.is_enabled() && device.is_autodiff() && layer.prob != 0.0;
    let [_, _, height, width] = x.dims();
    // burn's formula where the mask's threshold is not a probability below 1 (`DropoutConfig`
    // refuses p = 1, a hand-built layer may have it: burn then gives 0 x inf = NaN).
    let covered = (0.0..1.0).contains(&layer.prob) && height * width > 0;
    if !(active && covered && own_kernels() && is_flex(&x)) {
        return layer.forward(x);
    }
    let mask = DropoutMask::new(layer.prob, seed_from_device(&device), height * width);
    Tensor::from_dispatch(<Dispatch as UnetKernels>::dropout_node(x.into_dispatch(), mask))
}

/// A 64-bit seed from the device's generator: three uniform draws on [0, 1), each read as the
/// 23-bit integer `k` of `k / 2^23` (the resolution of an `f32` draw), packed side by side.
fn seed_from_device(device: &Device) -> u64 {
    let draws = Tensor::<1>::random([3], Distribution::Uniform(0.0, 1.0), device).into_data();
    let draws: Vec<f32> = draws.convert::<f32>().try_to_vec().expect("f32 after conversion");
    draws.iter().fold(0u64, |seed, &v| seed << 23 ^ (v as f64 * 8_388_608.0) as u64)
}

/// `Tensor::cat(vec![a, b], 1)` for two activations: on flex, a copy per image, images in
/// parallel (burn's values and gradients bit for bit; burn concatenates on one thread).
pub fn cat_channels(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    if own_kernels() && is_flex(&a) && is_flex(&b) {
        Tensor::from_dispatch(<Dispatch as UnetKernels>::cat_channels(a.into_dispatch(), b.into_dispatch()))
    } else {
        Tensor::cat(vec![a, b], 1)
    }
}

/// `softmax(x, 1)`: on flex outside autodiff, per image in parallel with the channel axis where
/// it lies (burn's values bit for bit; flex transposes the activation, runs rows as long as
/// the channel count and transposes back). With autodiff, burn's op and its gradient.
pub fn softmax_channels(x: Tensor<4>) -> Tensor<4> {
    if own_kernels() && is_flex(&x) && !x.device().is_autodiff() {
        Tensor::from_dispatch(<Dispatch as UnetKernels>::softmax_channels(x.into_dispatch()))
    } else {
        burn::tensor::activation::softmax(x, 1)
    }
}

/// `loss::segmentation` (harness/src/train/loss.rs) as one graph node whose per-pixel work is one
/// fused pass forward and one backward, on flex with autodiff (where burn composes the softmax
/// it starts from; flex's own, outside autodiff, sums in another order): burn's value and
/// gradients bit for bit, for targets and weights that enter as data (loss_cpu.rs says how and
/// why). `None` elsewhere, where the caller runs burn's ops.
pub fn segmentation_loss_on_flex(logits: &Tensor<4>, targets: &Tensor<4>, weights: &Tensor<4>, smooth: f64) -> Option<Tensor<1>> {
    (own_kernels() && is_flex(logits) && logits.device().is_autodiff()).then(|| {
        Tensor::from_dispatch(<Dispatch as UnetKernels>::segmentation_loss(
            logits.clone().into_dispatch(),
            targets.clone().into_dispatch(),
            weights.clone().into_dispatch(),
            smooth,
        ))
    })
}

/// `x.sum()`, its additions in the order `ordered_sum.rs` fixes for every CPU on flex (flex's own
/// order depends on the CPU's vector width); burn's `sum` elsewhere, and where `ATSO_KERNELS=burn`.
/// Its gradient is burn's.
pub fn sum<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    if own_kernels() && is_flex(&x) {
        Tensor::from_dispatch(<Dispatch as UnetKernels>::ordered_sum(x.into_dispatch()))
    } else {
        x.sum()
    }
}

/// `x.mean()` as [`sum`] orders it: the sum, then a division by the count.
pub fn mean<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    if own_kernels() && is_flex(&x) {
        Tensor::from_dispatch(<Dispatch as UnetKernels>::ordered_mean(x.into_dispatch()))
    } else {
        x.mean()
    }
}

/// `x.sum_dim(D - 1)` (the last axis kept, with size 1), each row summed as [`sum`] orders it.
pub fn sum_rows<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if own_kernels() && is_flex(&x) {
        Tensor::from_dispatch(<Dispatch as UnetKernels>::ordered_row_sums(x.into_dispatch()))
    } else {
        x.sum_dim(D - 1)
    }
}

/// `pool.forward(x)`; a 2 x 2, stride-2 pooling without padding on flex goes through the
/// project's kernel (bit for bit flex's values and gradients).
pub fn max_pool(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let plain = pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && !pool.ceil_mode
        && matches!(pool.padding, PaddingConfig2d::Valid);
    if plain && own_kernels() && is_flex(&x) {
        Tensor::from_dispatch(<Dispatch as UnetKernels>::max_pool2x2(x.into_dispatch()))
    } else {
        pool.forward(x)
    }
}

/// `up.forward(x)`; bilinear resizing on flex goes through the project's kernel (bit for bit
/// flex's values and gradients, with the coordinates computed once per call). Other backends
/// resize through [`separable_bilinear`]: burn's GPU backends have no bilinear gradient.
pub fn interpolate(up: &Interpolate2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, height, width] = x.dims();
    let size = match (up.output_size, up.scale_factor) {
        (Some(size), None) => Some(size),
        // burn's rule: floor(input size x scale factor).
        (None, Some([sh, sw])) => Some([(height as f64 * sh as f64) as usize, (width as f64 * sw as f64) as usize]),
        _ => None,
    };
    match size {
        Some([out_h, out_w]) if matches!(up.mode, InterpolateMode::Linear) => {
            if !is_flex(&x) {
                separable_bilinear(x, [out_h, out_w], up.align_corners)
            } else if own_kernels() {
                Tensor::from_dispatch(<Dispatch as UnetKernels>::resize_bilinear(
                    x.into_dispatch(),
                    out_h,
                    out_w,
                    up.align_corners,
                ))
            } else {
                up.forward(x)
            }
        }
        _ => up.forward(x),
    }
}

/// Bilinear resizing as two matrix products, `rows · x · colsᵀ`, with flex's coordinate mapping
/// in the matrices: the same function as burn's bilinear `interpolate`, built from ops whose
/// gradients every backend has (burn's cubecl backends, Vulkan and CUDA, panic on bilinear's
/// backward, so `ATSO_KERNELS=burn` cannot bring burn's op back there). Equal to flex's op to
/// float rounding (tested); a GPU matrix product may round its f32 inputs further (CUDA's TF32).
/// The two small matrices are built on the host and uploaded on every call.
pub fn separable_bilinear(x: Tensor<4>, [out_h, out_w]: [usize; 2], align_corners: bool) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let matrix = |input: usize, output: usize| {
        let values = resize_cpu::AxisMap::new(input, output, align_corners).matrix();
        Tensor::<2>::from_data(TensorData::new(values, [output, input]), &device).cast(x.dtype())
    };
    let (rows, cols) = (matrix(h, out_h), matrix(w, out_w));
    let wide = x.reshape([n * c * h, w]).matmul(cols.transpose()); // [n c h, out_w]
    let wide_t = wide.reshape([n * c, h, out_w]).swap_dims(1, 2).reshape([n * c * out_w, h]);
    let tall_t = wide_t.matmul(rows.transpose()); // [n c out_w, out_h]
    tall_t.reshape([n * c, out_w, out_h]).swap_dims(1, 2).reshape([n, c, out_h, out_w])
}

/// The padding of `conv` when the kernels cover it: the same on all four sides (a `Same` padding
/// only for odd kernels, where it is symmetric).
fn covered_padding(conv: &Conv2d) -> Option<usize> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => 0,
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == left && top == bottom && top == right => top,
        PaddingConfig2d::Same if conv.kernel_size[0] == conv.kernel_size[1] && conv.kernel_size[0] % 2 == 1 => conv.kernel_size[0] / 2,
        _ => return None,
    };
    let plain = conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1 && conv.bias.is_some();
    plain.then_some(padding)
}

fn is_flex<const D: usize>(x: &Tensor<D>) -> bool {
    matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// A xorshift32 stream from `seed` (not 0): the tests' cheap source of special-value positions,
/// independent of any random stream the kernels use.
#[cfg(test)]
fn xorshift32(mut state: u32) -> impl FnMut() -> u32 {
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }
}

/// The CPU backend keeps one random stream per process: tests that draw from it (seeding a
/// device, dropout masks, random tensors) hold this so concurrently running tests do not draw
/// from each other's stream.
#[cfg(test)]
fn serial_random_stream() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::interpolate::Interpolate2dConfig;
    use burn::nn::{BatchNormConfig, DropoutConfig, LeakyReluConfig};
    use burn::tensor::ops::InterpolateOptions;
    use burn::tensor::{Device, Distribution, Tensor, TensorData};

    /// The same convolution and input twice: once through the project's kernel, once through
    /// burn's `Conv2d::forward`. Returns the output and the three gradients of `sum(y * r)`.
    fn run(conv: &Conv2d, x: &TensorData, r: &TensorData, own: bool) -> [TensorData; 4] {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
        assert!(is_flex(&x), "the kernel path needs a flex tensor");
        use_own_kernels(own);
        let y = conv2d(conv, x.clone());
        use_own_kernels(true);
        let loss = (y.clone() * Tensor::<4>::from_data(r.clone(), &device)).sum();
        let grads = loss.backward();
        let weight: &Param<Tensor<4>> = &conv.weight;
        let bias = conv.bias.as_ref().unwrap();
        [
            y.into_data(),
            x.grad(&grads).unwrap().into_data(),
            weight.val().grad(&grads).unwrap().into_data(),
            bias.val().grad(&grads).unwrap().into_data(),
        ]
    }

    /// A random input and output weighting for `conv` at `[batch, height, width]`, then the
    /// output and the three gradients through the kernel and through burn, compared.
    fn compare_with_burn(conv: &Conv2d, [batch, height, width]: [usize; 3], device: &Device) {
        let channels = conv.weight.val().dims()[1];
        let x = Tensor::<4>::random([batch, channels, height, width], Distribution::Normal(0.0, 1.0), device);
        let out = conv.forward(x.clone()).dims();
        let r = Tensor::<4>::random(out, Distribution::Normal(0.0, 1.0), device);
        let (x, r) = (x.into_data(), r.into_data());
        let own = run(conv, &x, &r, true);
        let burn = run(conv, &x, &r, false);
        for (what, (a, b)) in ["output", "input gradient", "weight gradient", "bias gradient"]
            .iter()
            .zip(own.iter().zip(&burn))
        {
            assert_close(&format!("{what} at {:?}", conv.weight.val().dims()), a, b, 1e-4);
        }
    }

    #[test]
    fn values_and_gradients_match_burns_convolution() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(11);
        for (channels, kernel, padding) in [
            ([3, 5], [3, 3], PaddingConfig2d::Explicit(1, 1, 1, 1)),
            ([6, 4], [1, 1], PaddingConfig2d::Valid),
            ([2, 3], [3, 3], PaddingConfig2d::Same),
            ([4, 2], [3, 3], PaddingConfig2d::Valid),
        ] {
            let conv = Conv2dConfig::new(channels, kernel).with_padding(padding.clone()).init(&device);
            assert!(covered_padding(&conv).is_some(), "{padding:?} should take the project's kernel");
            compare_with_burn(&conv, [3, 9, 7], &device);
        }
    }

    /// The U-Net's widths: 16 to 64 output channels (several of the micro-kernel's lane groups,
    /// one of them partly filled at 24), planes wider and taller than a tile, odd sizes, and a
    /// 1 x 1 head, against burn's op.
    #[test]
    fn gradients_match_burns_at_the_unets_channel_counts() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(12);
        for (channels, kernel, size) in [
            ([1, 16], [3, 3], [2, 33, 29]),
            ([16, 16], [3, 3], [2, 17, 23]),
            ([16, 24], [3, 3], [2, 19, 13]),
            ([24, 32], [3, 3], [3, 11, 16]),
            ([32, 64], [3, 3], [2, 12, 9]),
            ([64, 40], [3, 3], [1, 8, 8]),
            ([32, 4], [1, 1], [2, 16, 16]),
        ] {
            let padding = PaddingConfig2d::Explicit(kernel[0] / 2, kernel[1] / 2, kernel[0] / 2, kernel[1] / 2);
            let conv = Conv2dConfig::new(channels, kernel).with_padding(padding).init(&device);
            assert!(covered_padding(&conv).is_some());
            compare_with_burn(&conv, size, &device);
        }
    }

    /// An infinite input in the last column: burn's weight gradient is infinite where a real
    /// output reads it and finite at the tap that reads it only from beyond the padding; the
    /// kernel's (whose padded rows read it there times a zero gradient) would be NaN, so that
    /// gradient is burn's, to the bit.
    #[test]
    fn an_infinite_input_beside_the_padding_gives_burns_weight_gradient() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(13);
        let conv = Conv2dConfig::new([2, 3], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let x = Tensor::<4>::random([1, 2, 6, 5], Distribution::Normal(0.0, 1.0), &device);
        let mut values = x.into_data().try_to_vec::<f32>().unwrap();
        values[2 * 5 + 4] = f32::INFINITY; // channel 0, row 2, last column
        let x = TensorData::new(values, [1, 2, 6, 5]);
        let r = Tensor::<4>::random([1, 3, 6, 5], Distribution::Normal(0.0, 1.0), &device).into_data();
        let [_, _, own, _] = run(&conv, &x, &r, true);
        let [_, _, burn, _] = run(&conv, &x, &r, false);
        let (own, burn) = (bits(own), bits(burn));
        assert_eq!(own, burn);
        let finite = burn.iter().filter(|&&b| f32::from_bits(b).is_finite()).count();
        assert!(finite > 0 && finite < burn.len(), "{finite} finite of {}", burn.len());
    }

    /// Empty activations and a hand-built dropout of p = 1 (`DropoutConfig` refuses it) take
    /// burn's ops: the same result, or the same panic.
    #[test]
    fn empty_activations_and_certain_dropout_behave_as_burns_ops() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        let outcome = |own: bool, f: &dyn Fn() -> TensorData| {
            use_own_kernels(own);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map(bits);
            use_own_kernels(true);
            result.map_err(|_| "panicked")
        };
        let norm = BatchNormConfig::new(3).init(&device);
        let act = LeakyReluConfig::new().init();
        for dims in [[2, 3, 0, 4], [0, 3, 4, 4], [2, 3, 4, 0]] {
            let x = Tensor::<4>::zeros(dims, &device).require_grad();
            let f = || {
                let y = batch_norm_then(&norm, Some(&act), x.clone());
                let grads = y.clone().sum().backward();
                let _ = x.grad(&grads);
                y.into_data()
            };
            assert_eq!(outcome(true, &f), outcome(false, &f), "batch norm of {dims:?}");
        }
        let mut layer = burn::nn::DropoutConfig::new(0.5).init();
        layer.prob = 1.0;
        let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let f = || dropout(&layer, x.clone()).into_data();
        let (own, burn) = (outcome(true, &f), outcome(false, &f));
        assert_eq!(own.as_ref().map(Vec::len), burn.as_ref().map(Vec::len));
        let all_nan = |b: &Vec<u32>| b.iter().all(|&v| f32::from_bits(v).is_nan());
        assert!(
            own.as_ref().is_ok_and(all_nan) && burn.as_ref().is_ok_and(all_nan),
            "burn's 0 x inf"
        );
    }

    fn assert_close(what: &str, a: &TensorData, b: &TensorData, tolerance: f32) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let (a, b) = (a.try_to_vec::<f32>().unwrap(), b.try_to_vec::<f32>().unwrap());
        for (i, (u, v)) in a.iter().zip(&b).enumerate() {
            assert!((u - v).abs() <= tolerance * (1.0 + v.abs()), "{what} {i}: {u} vs {v}");
        }
    }

    /// Batch norm and LeakyReLU in training: the project's nodes against burn's modules, values,
    /// running statistics and the gradients of `sum(leaky_relu(batch_norm(x)) * r)`.
    #[test]
    fn batch_norm_and_leaky_relu_match_burns_modules() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(12);
        let x = Tensor::<4>::random([4, 3, 6, 5], Distribution::Normal(0.5, 2.0), &device).into_data();
        let r = Tensor::<4>::random([4, 3, 6, 5], Distribution::Normal(0.0, 1.0), &device).into_data();
        let act = LeakyReluConfig::new().with_negative_slope(0.1).init();
        #[derive(PartialEq)]
        enum Path {
            Burn,
            OwnOps,
            OwnFused,
        }
        let run = |path: Path| {
            use_own_kernels(path != Path::Burn);
            // A fresh layer per run: clones of a layer share their running statistics.
            let mut norm = BatchNormConfig::new(3).init(&device);
            // The third channel's normalized values are all zeros (of either sign): LeakyReLU's
            // kink, where a recomputed value must match the stored one exactly.
            norm.gamma = Param::from_tensor(Tensor::<1>::from_floats([1.5, 0.7, 0.0], &device));
            norm.beta = Param::from_tensor(Tensor::<1>::from_floats([0.2, -0.4, 0.0], &device));
            let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
            let y = match path {
                Path::OwnFused => batch_norm_then(&norm, Some(&act), x.clone()),
                _ => leaky_relu(&act, batch_norm(&norm, x.clone())),
            };
            let grads = (y.clone() * Tensor::<4>::from_data(r.clone(), &device)).sum().backward();
            use_own_kernels(true);
            [
                y.into_data(),
                x.grad(&grads).unwrap().into_data(),
                norm.gamma.val().grad(&grads).unwrap().into_data(),
                norm.beta.val().grad(&grads).unwrap().into_data(),
                norm.running_mean.value_sync().into_data(),
                norm.running_var.value_sync().into_data(),
            ]
        };
        let (own, burn, fused) = (run(Path::OwnOps), run(Path::Burn), run(Path::OwnFused));
        let names = [
            "output",
            "input gradient",
            "gamma gradient",
            "beta gradient",
            "running mean",
            "running variance",
        ];
        for (((what, a), b), f) in names.iter().zip(&own).zip(&burn).zip(&fused) {
            assert_close(what, a, b, 1e-4);
            // Fusing normalization and activation into one node changes no bit.
            assert_eq!(bits(f.clone()), bits(a.clone()), "{what}: fused node against the two nodes");
        }
    }

    /// LeakyReLU's node gives burn's values and gradients bit for bit.
    #[test]
    fn leaky_relu_is_bitwise_burns() {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_floats([[[[-2.0, -0.0, 0.0, 3.0], [f32::MIN_POSITIVE, -1e-30, 7.5, -0.25]]]], &device);
        let act = LeakyReluConfig::new().with_negative_slope(0.2).init();
        let run = |own: bool| {
            use_own_kernels(own);
            let x = x.clone().require_grad();
            let y = leaky_relu(&act, x.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            use_own_kernels(true);
            (y.into_data(), x.grad(&grads).unwrap().into_data())
        };
        let both = |(y, dx): (TensorData, TensorData)| (bits(y), bits(dx));
        assert_eq!(both(run(true)), both(run(false)));
    }

    fn bits(t: TensorData) -> Vec<u32> {
        t.try_to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// Batch norm in inference: the one-pass kernel gives burn's four ops' values bit for bit.
    #[test]
    fn batch_norm_inference_is_bitwise_burns() {
        let _serial = serial_random_stream();
        let device = Device::flex();
        device.seed(13);
        let mut norm = BatchNormConfig::new(3).init(&device);
        norm.gamma = Param::from_tensor(Tensor::<1>::from_floats([1.5, 0.7, -1.2], &device));
        norm.beta = Param::from_tensor(Tensor::<1>::from_floats([0.1, -0.2, 0.3], &device));
        norm.running_mean = RunningState::new(Tensor::<1>::from_floats([0.3, -1.0, 2.5], &device));
        norm.running_var = RunningState::new(Tensor::<1>::from_floats([0.5, 2.0, 1e-3], &device));
        let x = Tensor::<4>::random([2, 3, 5, 4], Distribution::Normal(0.0, 2.0), &device);
        let run = |own: bool| {
            use_own_kernels(own);
            let y = batch_norm(&norm, x.clone()).into_data();
            use_own_kernels(true);
            bits(y)
        };
        assert_eq!(run(true), run(false));
    }

    /// Dropout in training: the mask follows the device's seed, about `prob` of the values are
    /// dropped and the rest scaled by `1 / (1 - prob)`, and the gradient passes (scaled) exactly
    /// where values were kept. Outside training it is the identity.
    #[test]
    fn dropout_follows_the_seed_and_its_gradient_the_mask() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        let layer = burn::nn::DropoutConfig::new(0.25).init();
        let x = Tensor::<4>::random([4, 3, 20, 20], Distribution::Uniform(1.0, 2.0), &device);
        let run = |seed: u64| {
            device.seed(seed);
            let x = x.clone().require_grad();
            let y = dropout(&layer, x.clone());
            let grads = y.clone().sum().backward();
            let values = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            (
                values(x.clone().inner()),
                values(y.inner()),
                x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap(),
            )
        };
        let (xs, ys, dxs) = run(3);
        let scale = (1.0 / 0.75f64) as f32;
        let dropped = ys.iter().filter(|&&v| v == 0.0).count() as f64 / ys.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "dropped fraction {dropped}");
        for ((x, y), dx) in xs.iter().zip(&ys).zip(&dxs) {
            if *y == 0.0 {
                assert_eq!(*dx, 0.0);
            } else {
                assert_eq!((*y, *dx), (x * scale, scale));
            }
        }
        assert_eq!(run(3).1, ys, "the same seed, the same mask");
        assert_ne!(run(4).1, ys, "another seed, another mask");
        let plain = x.clone().inner();
        let evaluated = dropout(&layer, plain.clone());
        assert_eq!(evaluated.into_data(), plain.into_data(), "no dropout outside autodiff");
    }

    /// A block's layer in inference: the fused op gives the values of the three ops it replaces
    /// (convolution, batch norm with running statistics, LeakyReLU) bit for bit, for a 3 x 3 and
    /// a 1 x 1 kernel, more output channels than one tile holds, and odd image sizes.
    #[test]
    fn a_fused_inference_layer_is_bitwise_its_three_ops() {
        let _serial = serial_random_stream();
        let device = Device::flex();
        device.seed(17);
        let channels = 7;
        let mut norm = BatchNormConfig::new(channels).init(&device);
        let per_channel = |values: [f32; 7]| Tensor::<1>::from_floats(values, &device);
        norm.gamma = Param::from_tensor(per_channel([1.5, 0.7, -1.2, 1.0, 0.2, 2.0, -0.4]));
        norm.beta = Param::from_tensor(per_channel([0.1, -0.2, 0.3, 0.0, -1.0, 0.5, 0.05]));
        norm.running_mean = RunningState::new(per_channel([0.3, -1.0, 2.5, 0.0, 0.1, -0.2, 1.0]));
        norm.running_var = RunningState::new(per_channel([0.5, 2.0, 1e-3, 1.0, 4.0, 0.3, 0.01]));
        let act = LeakyReluConfig::new().with_negative_slope(0.05).init();
        let x = Tensor::<4>::random([2, 3, 9, 10], Distribution::Normal(0.0, 2.0), &device);
        for (kernel, padding) in [(3, 1), (1, 0)] {
            let conv = Conv2dConfig::new([3, channels], [kernel, kernel])
                .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
                .init(&device);
            let fused = bits(conv_norm_leaky(&conv, &norm, &act, x.clone()).into_data());
            let composed = bits(leaky_relu(&act, batch_norm(&norm, conv2d(&conv, x.clone()))).into_data());
            assert_eq!(fused, composed, "{kernel} x {kernel} kernel");
        }
    }

    /// A block in inference is one op (`conv_cpu::forward_twice_then` runs) that gives the two
    /// layers' values (with the identity dropout between them) bit for bit, for a 3 x 3 pair and
    /// a 1 x 1 then 3 x 3 pair, over images wide enough for band boundaries inside rows and over
    /// images of whole half-tiles; and so does the block over two inputs read as their
    /// concatenation (`conv_block_cat`).
    #[test]
    fn a_fused_inference_block_is_bitwise_its_layers() {
        let _serial = serial_random_stream();
        let device = Device::flex();
        device.seed(19);
        let norm = |channels: usize, shift: f32| {
            let mut norm = BatchNormConfig::new(channels).init(&device);
            let per_channel = |f: &dyn Fn(f32) -> f32| {
                Tensor::<1>::from_floats((0..channels).map(|c| f(c as f32)).collect::<Vec<_>>().as_slice(), &device)
            };
            norm.gamma = Param::from_tensor(per_channel(&|c| 1.2 - 0.3 * c + shift));
            norm.beta = Param::from_tensor(per_channel(&|c| 0.1 * c - shift));
            norm.running_mean = RunningState::new(per_channel(&|c| 0.2 * c - 0.5));
            norm.running_var = RunningState::new(per_channel(&|c| 0.5 + c));
            norm
        };
        let act = LeakyReluConfig::new().with_negative_slope(0.05).init();
        let between = DropoutConfig::new(0.3).init();
        // 11 x 90 images are not whole half-tiles (a 1 x 1 first layer copies them); 16 x 16 ones
        // are (it reads them in place, where two parts are still copied).
        let sizes = [(11, 90), (16, 16)];
        let cases = sizes.into_iter().flat_map(|size| [(3, 1), (1, 0)].map(|first| (size, first)));
        for ((height, width), (first_kernel, first_padding)) in cases {
            let x = Tensor::<4>::random([2, 3, height, width], Distribution::Normal(0.0, 2.0), &device);
            let conv = |input: usize, output: usize, kernel: usize, padding: usize| {
                Conv2dConfig::new([input, output], [kernel, kernel])
                    .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
                    .init(&device)
            };
            let (conv_a, norm_a) = (conv(3, 6, first_kernel, first_padding), norm(6, 0.0));
            let (conv_b, norm_b) = (conv(6, 5, 3, 1), norm(5, 0.4));
            let calls = conv_cpu::TWICE_CALLS.load(std::sync::atomic::Ordering::Relaxed);
            let fused = bits(conv_block([(&conv_a, &norm_a), (&conv_b, &norm_b)], &act, &between, x.clone()).into_data());
            assert!(
                conv_cpu::TWICE_CALLS.load(std::sync::atomic::Ordering::Relaxed) > calls,
                "the fused op ran"
            );
            let layers = conv_norm_leaky(&conv_b, &norm_b, &act, conv_norm_leaky(&conv_a, &norm_a, &act, x.clone()));
            assert_eq!(
                fused,
                bits(layers.into_data()),
                "{height} x {width}, {first_kernel} x {first_kernel} kernel first"
            );
            // The same block over x's first channel and its other two, read where they lie.
            let (skip, rest) = (
                x.clone().slice([0..2, 0..1, 0..height, 0..width]),
                x.clone().slice([0..2, 1..3, 0..height, 0..width]),
            );
            let calls = conv_cpu::TWICE_CALLS.load(std::sync::atomic::Ordering::Relaxed);
            let of_parts = bits(conv_block_cat([(&conv_a, &norm_a), (&conv_b, &norm_b)], &act, &between, skip, rest).into_data());
            assert!(
                conv_cpu::TWICE_CALLS.load(std::sync::atomic::Ordering::Relaxed) > calls,
                "the fused op ran on the two parts"
            );
            assert_eq!(
                of_parts, fused,
                "{height} x {width}, {first_kernel} x {first_kernel} kernel first, over two parts"
            );
        }
    }

    /// Concatenation along the channels: values and both inputs' gradients bit for bit burn's
    /// `cat` (in training), and the values outside autodiff.
    #[test]
    fn channel_concatenation_is_bitwise_burns() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(23);
        let a = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 1.0), &device).into_data();
        let b = Tensor::<4>::random([2, 4, 5, 7], Distribution::Normal(0.0, 1.0), &device).into_data();
        let r = Tensor::<4>::random([2, 7, 5, 7], Distribution::Normal(0.0, 1.0), &device).into_data();
        let run = |own: bool| {
            use_own_kernels(own);
            let a = Tensor::<4>::from_data(a.clone(), &device).require_grad();
            let b = Tensor::<4>::from_data(b.clone(), &device).require_grad();
            let y = cat_channels(a.clone(), b.clone());
            let grads = (y.clone() * Tensor::<4>::from_data(r.clone(), &device)).sum().backward();
            let plain = cat_channels(a.clone().inner(), b.clone().inner()).into_data();
            use_own_kernels(true);
            let grad = |t: &Tensor<4>| bits(t.grad(&grads).unwrap().into_data());
            (bits(y.into_data()), grad(&a), grad(&b), bits(plain))
        };
        assert_eq!(run(true), run(false));
    }

    /// The ordered reductions: values in `ordered_sum`'s order (with and without autodiff), and
    /// gradients bit for bit those of burn's `sum`, `mean` and `sum_dim`, whose backward steps
    /// they keep. Rows of 37 leave a tail after the 16-lane groups.
    #[test]
    fn ordered_reductions_sum_in_one_order_with_burns_gradients() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(29);
        let shape = [2, 3, 5, 37];
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).into_data();
        let r = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).into_data();
        let r_rows = Tensor::<4>::random([2, 3, 5, 1], Distribution::Normal(0.0, 1.0), &device).into_data();
        let products: Vec<f32> = {
            let (x, r) = (x.try_to_vec::<f32>().unwrap(), r.try_to_vec::<f32>().unwrap());
            x.iter().zip(&r).map(|(a, b)| a * b).collect()
        };
        let run = |own: bool, which: usize| {
            use_own_kernels(own);
            let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
            let y = x.clone() * Tensor::<4>::from_data(r.clone(), &device);
            let (value, loss) = match which {
                0 => {
                    let s = sum(y);
                    (s.clone().into_data(), s)
                }
                1 => {
                    let m = mean(y);
                    (m.clone().into_data(), m)
                }
                _ => {
                    let rows = sum_rows(y);
                    let loss = (rows.clone() * Tensor::<4>::from_data(r_rows.clone(), &device)).sum();
                    (rows.into_data(), loss)
                }
            };
            let grads = loss.backward();
            use_own_kernels(true);
            (bits(value), bits(x.grad(&grads).unwrap().into_data()))
        };
        for which in 0..3 {
            let (own_value, own_grad) = run(true, which);
            let (_, burns_grad) = run(false, which);
            assert_eq!(own_grad, burns_grad, "gradient of reduction {which}");
            let expected: Vec<f32> = match which {
                0 => vec![ordered_sum::sum(&products)],
                1 => vec![ordered_sum::mean(&products)],
                _ => ordered_sum::sum_rows(&products, 37),
            };
            assert_eq!(
                own_value,
                expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "value of reduction {which}"
            );
        }
        // Outside autodiff, the same values.
        let plain = Tensor::<4>::from_data(TensorData::new(products.clone(), shape), &Device::flex());
        assert_eq!(bits(sum(plain.clone()).into_data()), vec![ordered_sum::sum(&products).to_bits()]);
        assert_eq!(bits(mean(plain).into_data()), vec![ordered_sum::mean(&products).to_bits()]);
    }

    /// Softmax over the channels outside autodiff: bit for bit burn's, for one channel, fewer
    /// channels than a SIMD register holds and more (where burn's row maximum is a vector
    /// reduction), large logits, minus infinity, a tie for the maximum and a zero maximum of
    /// either sign.
    #[test]
    fn channel_softmax_is_bitwise_burns() {
        let _serial = serial_random_stream();
        let device = Device::flex();
        device.seed(29);
        for channels in [1, 4, 19] {
            let x = Tensor::<4>::random([3, channels, 6, 5], Distribution::Normal(0.0, 4.0), &device);
            let mut values: Vec<f32> = x.into_data().try_to_vec().unwrap();
            // A channel holds 30 positions: `values[p + 30 k]` is channel k at position p.
            (values[0], values[1], values[2]) = (80.0, f32::NEG_INFINITY, -80.0);
            let plane = 30;
            if channels > 1 {
                (values[3], values[3 + plane]) = (50.0, 50.0);
                for c in 0..channels {
                    values[4 + c * plane] = -(c as f32) - 1.0;
                }
                (values[4], values[4 + plane]) = (-0.0, 0.0);
            }
            let x = Tensor::<4>::from_data(TensorData::new(values, [3, channels, 6, 5]), &device);
            let own = bits(softmax_channels(x.clone()).into_data());
            let burns = bits(burn::tensor::activation::softmax(x, 1).into_data());
            assert_eq!(own, burns, "{channels} channels");
        }
    }

    /// Bilinear resizing: values and input gradients bit for bit burn's, for both corner
    /// conventions, a scale factor and an explicit size.
    #[test]
    fn bilinear_resizing_is_bitwise_burns() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(14);
        let x = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 1.0), &device).into_data();
        for align_corners in [true, false] {
            for size in [None, Some([9, 16])] {
                let mut config = Interpolate2dConfig::new()
                    .with_mode(InterpolateMode::Linear)
                    .with_align_corners(align_corners);
                config = match size {
                    Some(size) => config.with_output_size(Some(size)),
                    None => config.with_scale_factor(Some([2.0, 2.0])),
                };
                let up = config.init();
                let run = |own: bool| {
                    use_own_kernels(own);
                    let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
                    let y = interpolate(&up, x.clone());
                    let r = Tensor::<4>::ones(y.dims(), &device) * y.clone().detach();
                    let grads = (y.clone() * r).sum().backward();
                    use_own_kernels(true);
                    (bits(y.into_data()), bits(x.grad(&grads).unwrap().into_data()))
                };
                assert_eq!(run(true), run(false), "align_corners {align_corners}, size {size:?}");
            }
        }
    }

    /// The separable form the GPU backends train with: burn's bilinear values and gradients to
    /// float rounding, for both corner conventions, upsampling by two, an odd size, shrinking
    /// (where one output's two sources can coincide at the border) and a single pixel.
    #[test]
    fn separable_bilinear_matches_burns_interpolate() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(16);
        let x = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 1.0), &device).into_data();
        for align_corners in [true, false] {
            for size in [[10, 14], [9, 16], [3, 4], [1, 1]] {
                let options = InterpolateOptions::new(burn::tensor::ops::InterpolateMode::Bilinear)
                    .with_align_corners(align_corners)
                    .with_output_size(size);
                let run = |separable: bool| {
                    let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
                    let y = if separable {
                        separable_bilinear(x.clone(), size, align_corners)
                    } else {
                        burn::tensor::module::interpolate(x.clone(), options.clone())
                    };
                    let r = Tensor::<4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
                    let grads = (y.clone() * r).sum().backward();
                    let values = |t: TensorData| (t.shape().to_vec(), t.try_to_vec::<f32>().unwrap());
                    (values(y.into_data()), values(x.grad(&grads).unwrap().into_data()))
                };
                device.seed(17);
                let ours = run(true);
                device.seed(17);
                let burns = run(false);
                for (what, (a, b)) in [("values", (&ours.0, &burns.0)), ("input gradient", (&ours.1, &burns.1))] {
                    assert_eq!(a.0, b.0, "{what} shape, align_corners {align_corners}, size {size:?}");
                    let worst = a.1.iter().zip(&b.1).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                    assert!(
                        worst <= 1e-5,
                        "{what} differ by {worst}, align_corners {align_corners}, size {size:?}"
                    );
                }
            }
        }
    }

    /// Max pooling: values and gradients bit for bit burn's, with ties (first value wins), NaNs
    /// (the last NaN wins), signed zeros and an odd size (the last row and column dropped).
    #[test]
    fn max_pooling_is_bitwise_burns() {
        let _serial = serial_random_stream();
        let device = Device::flex().autodiff();
        device.seed(15);
        let random = Tensor::<4>::random([2, 3, 6, 8], Distribution::Normal(0.0, 1.0), &device).into_data();
        let odd = Tensor::<4>::random([1, 2, 5, 7], Distribution::Normal(0.0, 1.0), &device).into_data();
        #[rustfmt::skip]
        let special = TensorData::new(vec![
            1.0, 1.0, -0.0, 0.0, f32::NAN, 2.0,
            1.0, 1.0, 0.0, -0.0, 3.0, f32::NAN,
            -5.0, f32::NAN, -1.0, -1.0, 4.0, 9.0,
            f32::NAN, -7.0, -1.0, -2.0, 9.0, 4.0,
            8.0, 8.0, 8.0, 8.0, 8.0, 8.0,
        ], [1, 1, 5, 6]);
        let pool = burn::nn::pool::MaxPool2dConfig::new([2, 2]).init();
        for x in [random, odd, special] {
            let run = |own: bool| {
                use_own_kernels(own);
                let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
                let y = max_pool(&pool, x.clone());
                let r = Tensor::<4>::from_data(
                    TensorData::new(
                        (0..y.shape().num_elements()).map(|i| i as f32 - 3.0).collect::<Vec<f32>>(),
                        y.dims(),
                    ),
                    &device,
                );
                let grads = (y.clone() * r).sum().backward();
                use_own_kernels(true);
                (bits(y.into_data()), bits(x.grad(&grads).unwrap().into_data()))
            };
            assert_eq!(run(true), run(false), "{x:?}");
        }
    }

    #[test]
    fn other_convolutions_keep_burns_path() {
        let device = Device::flex();
        let strided = Conv2dConfig::new([2, 2], [3, 3]).with_stride([2, 2]).init(&device);
        let no_bias = Conv2dConfig::new([2, 2], [3, 3]).with_bias(false).init(&device);
        let uneven = Conv2dConfig::new([2, 2], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 0, 1, 0))
            .init(&device);
        for conv in [strided, no_bias, uneven] {
            assert_eq!(covered_padding(&conv), None);
        }
    }
}
