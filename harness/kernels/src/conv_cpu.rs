//! The U-Net's convolutions on the CPU, forward and both gradients, on plain `f32` slices in
//! NCHW order.
//!
//! Why not burn's generic path: flex runs the input gradient as a transposed convolution and the
//! weight gradient as a convolution whose kernel is the whole output image, at a fraction of the
//! machine's arithmetic rate. Why not im2col and a GEMM crate (this module's first version): at
//! the 16-channel layers, building the patch matrix and packing it for the GEMM cost as much as
//! the arithmetic. Here each image is copied once into zero-padded planes whose rows are
//! `width + padding` wide: `padding` zeros, then the row, the next row's zeros serving as this
//! one's right-hand padding. In that layout every kernel tap is a constant offset from the output
//! position, so the forward pass is a matrix product whose right operand is read straight from
//! the padded image (`microkernel::forward_tile`), and the weight gradient one whose sum runs
//! over positions (`microkernel::weight_tile`). In the padded layout each output row carries
//! `kernel - 1 - padding` junk columns (one for the U-Net's 3 x 3 kernels), and each image's
//! positions are rounded up to whole half-tiles (at 8 x 8, 72 as 80). The forward tiles skip
//! both where every output row is whole runs of a register's positions (all the U-Net's levels
//! on AVX2; all but 8 x 8 on AVX-512): they take the output row by row and write each run
//! straight to its place in the output (or the next convolution's padded copy), so nothing is
//! computed aside and copied out. The weight gradient chains over the output's rows too
//! (`microkernel::Positions`), its output gradient transposed without padding.
//!
//! Only what the U-Net needs is covered: stride 1, dilation 1, one group, the same padding on all
//! four sides. Every value is one sum in an order fixed by the shape alone: work is split across
//! images, never inside a sum, and per-image weight gradients are added in image order. So a
//! result depends neither on the thread count nor on the CPU (the micro-kernels' SIMD and plain
//! versions give the same bits).

use std::borrow::Cow;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::isa;
#[cfg(x86_kernels)]
use super::isa::Isa;
use super::microkernel::{self, Run, BLOCK, HALF_TILE, LANES, TILE, WEIGHT_GROUPS, WEIGHT_TAPS};
use super::output;
use super::scratch::Scratch;

/// Shapes of one stride-1 convolution with symmetric zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub padding: usize,
}

impl ConvShape {
    pub fn out_height(&self) -> usize {
        self.height + 2 * self.padding + 1 - self.kernel[0]
    }

    pub fn out_width(&self) -> usize {
        self.width + 2 * self.padding + 1 - self.kernel[1]
    }

    /// Output positions per image.
    fn positions(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Taps per output channel: `channels_in * kh * kw` (the sums' length).
    fn patch_len(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    fn input_len(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    fn output_len(&self) -> usize {
        self.channels_out * self.positions()
    }

    /// Whether this shape is one the kernels compute: no empty axis, a square kernel no larger
    /// than the padded input, padded by less than its size (so the input gradient is a
    /// convolution too). Other shapes take burn's path.
    pub fn is_valid(&self) -> bool {
        self.channels_in > 0
            && self.channels_out > 0
            && self.height > 0
            && self.width > 0
            && self.kernel[0] >= 1
            && self.kernel[0] == self.kernel[1]
            && self.padding < self.kernel[0]
            && self.height + 2 * self.padding >= self.kernel[0]
            && self.width + 2 * self.padding >= self.kernel[1]
            && self.lengths().is_some()
    }

    /// The element counts of the input, weight and output, in checked arithmetic: None when one
    /// would overflow (no buffer could hold it, and a wrapped count would let the raw-pointer
    /// tiles read past a short buffer).
    fn lengths(&self) -> Option<[usize; 3]> {
        let padded_h = self.height.checked_add(self.padding.checked_mul(2)?)?;
        let padded_w = self.width.checked_add(self.padding.checked_mul(2)?)?;
        let out_h = (padded_h + 1).checked_sub(self.kernel[0])?;
        let out_w = (padded_w + 1).checked_sub(self.kernel[1])?;
        // The padded planes the tiles read, with a tile's slack, must be countable too.
        padded_h.checked_mul(padded_w)?.checked_add(TILE)?.checked_mul(self.channels_in)?;
        let input = self
            .batch
            .checked_mul(self.channels_in)?
            .checked_mul(self.height)?
            .checked_mul(self.width)?;
        let weight = self
            .channels_out
            .checked_mul(self.channels_in)?
            .checked_mul(self.kernel[0])?
            .checked_mul(self.kernel[1])?;
        let output = self.batch.checked_mul(self.channels_out)?.checked_mul(out_h)?.checked_mul(out_w)?;
        Some([input, weight, output])
    }

    /// Row length of the padded planes, and of output rows in the padded layout: `padding` zeros,
    /// then the row's values. The next row's leading zeros are this row's right-hand padding (a
    /// tap reaching past a row's end reads them; past the last row, the next plane's top rows or
    /// the copy's zero tail), so an output row carries `kernel - 1 - padding` junk columns.
    fn padded_width(&self) -> usize {
        self.width + self.padding
    }

    fn padded_plane(&self) -> usize {
        (self.height + 2 * self.padding) * self.padded_width()
    }

    /// Output positions per channel in the padded layout (`out_height` rows of `padded_width`),
    /// rounded up to whole half-tiles (the last tile of a channel may be a half one).
    fn padded_positions(&self) -> usize {
        (self.out_height() * self.padded_width()).next_multiple_of(HALF_TILE)
    }

    /// Positions of the padded layout per forward band (the last band of an image may be
    /// shorter): `band_positions`, but at least a row's worth and at most the image. Bands are
    /// cut at whole half-tiles, not at row ends, so no position is computed twice (bands of whole
    /// rows rounded up to half-tiles computed 3 % of level 1's positions twice: 387 as 400).
    fn forward_band(&self) -> usize {
        let row = self.padded_width().next_multiple_of(HALF_TILE);
        self.band_positions().max(row).min(self.padded_positions())
    }

    /// Whether the forward tiles take this shape's output row by row, in runs of `run` positions
    /// (`microkernel::run_positions`), and write each run straight to its place: where every
    /// output row is whole runs and an image whole half-tiles. Then no junk column is computed,
    /// and no band is computed aside and copied out (at 8 x 8, 64 positions were 80 computed).
    fn rows_in_runs(&self, run: usize) -> bool {
        self.out_width().is_multiple_of(run) && self.positions().is_multiple_of(HALF_TILE)
    }

    /// Output positions (row-major, no junk) per forward band when the tiles take rows in runs:
    /// `band_positions`, but at least a row's worth and at most the image.
    fn row_band(&self) -> usize {
        let row = self.out_width().next_multiple_of(HALF_TILE);
        self.band_positions().max(row).min(self.positions())
    }

    /// Whether an image is its own padded copy as far as the tiles read it: a 1 x 1 kernel without
    /// padding (rows `width` apart, one plane after the other) over whole half-tiles of positions,
    /// so no read goes past the image's end. The U-Net's 1 x 1 convolutions (the decoder's
    /// channel reductions and the head) then read their input where it lies instead of copying
    /// it (at 128 x 128 the head's copy, 1 MiB an image, cost more than its 1 MFLOP).
    fn reads_input_in_place(&self) -> bool {
        self.kernel == [1, 1] && self.padding == 0 && (self.height * self.width).is_multiple_of(HALF_TILE)
    }

    /// Where row `row` of input channel `channel` starts in an image's padded copy: below the
    /// plane's `padding` zero rows, after the row's `padding` leading zeros.
    fn padded_row(&self, channel: usize, row: usize) -> usize {
        channel * self.padded_plane() + (row + self.padding) * self.padded_width() + self.padding
    }

    /// Length of one image's padded copy: the planes, then zeros for the last tile's reads.
    fn padded_len(&self) -> usize {
        self.channels_in * self.padded_plane() + TILE + self.kernel[1]
    }

    /// For each tap `(ci, ky, kx)`, in that order: where its input lies relative to the output
    /// position in the padded layout.
    fn tap_offsets(&self) -> Vec<usize> {
        let (kh, kw, pw) = (self.kernel[0], self.kernel[1], self.padded_width());
        (0..self.channels_in)
            .flat_map(|ci| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| ci * self.padded_plane() + ky * pw + kx)))
            .collect()
    }

    /// Output positions the forward pass aims to compute together, so that the padded input they
    /// read stays in the core's cache: about `BAND_BYTES` of input, a multiple of `TILE`, from
    /// the shape alone (`forward_band` and `row_band` make it at least a row's worth).
    fn band_positions(&self) -> usize {
        let per_position = 4 * self.channels_in;
        let positions = (BAND_BYTES / per_position).saturating_sub(2 * self.padded_width());
        (positions / TILE * TILE).clamp(TILE, MAX_BAND)
    }
}

/// Padded input one forward band reads (about a quarter of a typical L2), and the most positions
/// `band_positions` gives (so a band's outputs, a block of channels a tile row, stay in L1).
const BAND_BYTES: usize = 256 * 1024;
const MAX_BAND: usize = 512;

/// Rebuilds `padded` as one image's zero-padded copy: each channel with `shape.padding` rows of
/// zeros above and below and `shape.padding` zeros before each row (which also pad the row
/// before it on the right), rows `padded_width` apart, then zeros up to `shape.padded_len()`. One
/// sequential pass writes every value once, borders included, so a reused buffer needs no
/// zero-filling.
fn pad_into(image: &[f32], shape: &ConvShape, padded: &mut Vec<f32>) {
    let (w, len) = (shape.width, shape.padded_len());
    assert_eq!(image.len(), shape.input_len(), "conv padding: expected one image");
    padded.clear();
    padded.reserve(len);
    // Written into the spare capacity, each stretch of zeros and each row with one slice
    // operation (growing the vector value by value cost a capacity check a row, at 8 x 8 as
    // much as the copy).
    let slots = &mut padded.spare_capacity_mut()[..len];
    pad_frame(shape, slots);
    for (channel, values) in image.chunks(shape.height * w).enumerate() {
        for (row, values) in values.chunks(w).enumerate() {
            let at = shape.padded_row(channel, row);
            copy_row(&mut slots[at..at + w], values);
        }
    }
    // SAFETY: `pad_frame` wrote the zeros (the padding and the tail) and the loop every row's
    // values, which together are all `len` values.
    unsafe { padded.set_len(len) };
}

/// Copies a row of an image into its padded copy. Rows shorter than 64 values go 8 values at a
/// time through registers: at 16 x 16 and 8 x 8 (2 048 rows an image at every level) a `memcpy`
/// call a row cost two to three times what the bytes did.
#[inline(always)]
fn copy_row(dst: &mut [MaybeUninit<f32>], values: &[f32]) {
    assert_eq!(dst.len(), values.len(), "conv padding: a row of another length");
    if values.len() >= 64 {
        dst.write_copy_of_slice(values);
        return;
    }
    let (mut to, mut from) = (dst.chunks_exact_mut(8), values.chunks_exact(8));
    for (to, from) in (&mut to).zip(&mut from) {
        let eight: [f32; 8] = from.try_into().expect("chunks of 8");
        to.copy_from_slice(&eight.map(MaybeUninit::new));
    }
    for (to, &value) in to.into_remainder().iter_mut().zip(from.remainder()) {
        to.write(value);
    }
}

/// What happens to a row of output channel `c` (or a part of one) once the convolution has
/// computed it: `(c, values)`, changing the values in place while they are in the core's cache.
pub trait RowFinish: Fn(usize, &mut [f32]) + Sync {}
impl<F: Fn(usize, &mut [f32]) + Sync> RowFinish for F {}

/// The plain convolution's finish: the row as computed.
fn as_computed(_channel: usize, _row: &mut [f32]) {}

/// One image's padded copy in a buffer of its own.
fn padded_image(image: &[f32], shape: &ConvShape) -> Vec<f32> {
    let mut padded = Vec::new();
    pad_into(image, shape, &mut padded);
    padded
}

/// What the tiles read for image `b` of `input`: the image itself where it is its own padded
/// copy (`reads_input_in_place`), else its padded copy, made in `padded`.
fn padded_source<'a>(input: &'a [f32], b: usize, shape: &ConvShape, padded: &'a mut Vec<f32>) -> &'a [f32] {
    let image = image(input, b, shape.input_len());
    if shape.reads_input_in_place() {
        return image;
    }
    pad_into(image, shape, padded);
    padded
}

/// One image's output gradient laid out for the weight-gradient tile: position-major
/// (`[positions][channels_out rounded up to LANES]`), zeros in the extra channels. Built a row of
/// positions at a time: each row's block (`out_width x lanes` values) is zeroed and filled while
/// it sits in L1.
fn transposed_output_into(dense: &[f32], shape: &ConvShape, dyt: &mut Vec<f32>) {
    let lanes = shape.channels_out.next_multiple_of(LANES);
    let (ow, positions) = (shape.out_width(), shape.positions());
    dyt.clear();
    dyt.reserve(positions * lanes);
    for oy in 0..shape.out_height() {
        let start = dyt.len();
        dyt.resize(start + ow * lanes, 0.0);
        let block = &mut dyt[start..];
        // Blocks of 8 channels x 8 columns turned around in registers where the CPU has AVX2,
        // the rest value by value.
        #[cfg_attr(not(x86_kernels), allow(unused_mut))]
        let (mut blocked_channels, mut blocked_columns) = (0, 0);
        #[cfg(x86_kernels)]
        if isa::current() >= Isa::Avx2 {
            (blocked_channels, blocked_columns) = (shape.channels_out / 8 * 8, ow / 8 * 8);
            // SAFETY: `current` names AVX2 only where the CPU has it.
            unsafe { transpose_blocks_avx2(dense, positions, oy * ow, [blocked_channels, blocked_columns], block, lanes) };
        }
        for (c, channel) in dense.chunks(positions).enumerate() {
            let done = if c < blocked_channels { blocked_columns } else { 0 };
            for (ox, &value) in channel[oy * ow..][..ow].iter().enumerate().skip(done) {
                block[ox * lanes + c] = value;
            }
        }
    }
}

/// `transposed_output_into` a buffer of its own.
fn transposed_output(dense: &[f32], shape: &ConvShape) -> Vec<f32> {
    let mut dyt = Vec::new();
    transposed_output_into(dense, shape, &mut dyt);
    dyt
}

/// `block[x * lanes + c] = dense[c * positions + row_start + x]` for `c < channels`, `x < columns`
/// (both multiples of 8), an 8 x 8 block at a time in AVX2 registers: rows of `dense` `positions`
/// apart become columns of `block`, whose rows are `lanes` apart (the output gradient turned
/// position-major, and the weight gradient's sums turned back to `[c_out][taps]`).
#[cfg(x86_kernels)]
#[target_feature(enable = "avx2")]
fn transpose_blocks_avx2(
    dense: &[f32],
    positions: usize,
    row_start: usize,
    [channels, columns]: [usize; 2],
    block: &mut [f32],
    lanes: usize,
) {
    use std::arch::x86_64::*;
    for c0 in (0..channels).step_by(8) {
        for x0 in (0..columns).step_by(8) {
            // SAFETY (loads and stores): each slice is bounds-checked to 8 values first.
            let rows: [__m256; 8] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(dense[(c0 + i) * positions + row_start + x0..][..8].as_ptr()) });
            let columns_of_block = super::transpose::transpose_8x8(rows);
            for (j, column) in columns_of_block.into_iter().enumerate() {
                unsafe { _mm256_storeu_ps(block[(x0 + j) * lanes + c0..][..8].as_mut_ptr(), column) };
            }
        }
    }
}

/// The output channels of each forward block, `(first, count)`: as few blocks as `block` allows,
/// their sizes as even as they go (at most one apart). With AVX2's blocks of 6, 16 channels were
/// 6 + 6 + 4 and 32 were five blocks of 6 and one of 2, whose tiles hold 8 and 4 accumulators:
/// too few to cover the multiply-adds' latency. Now 6 + 5 + 5, and 6 + 6 + 5 + 5 + 5 + 5.
fn channel_blocks(channels_out: usize, block: usize) -> Vec<(usize, usize)> {
    let blocks = channels_out.div_ceil(block);
    let (base, larger) = (channels_out / blocks.max(1), channels_out % blocks.max(1));
    let mut first = 0;
    (0..blocks)
        .map(|index| {
            let count = base + usize::from(index < larger);
            first += count;
            (first - count, count)
        })
        .collect()
}

/// `weight` (`[c_out, taps]`) regrouped for the forward tile: for each of `blocks`
/// (`channel_blocks`), its channels `[taps][block]`, zero past the block's count. Blocks in
/// parallel (at 256 channels this is 600 000 scattered writes, which one thread did while the
/// others waited).
fn pack_weights(weight: &[f32], blocks: &[(usize, usize)], taps: usize, block: usize) -> Vec<f32> {
    let mut packed = vec![0.0f32; blocks.len() * taps * block];
    packed
        .par_chunks_mut(taps * block)
        .zip(blocks)
        .for_each(|(packed_block, &(first, count))| {
            for (c, row) in weight[first * taps..][..count * taps].chunks(taps).enumerate() {
                for (k, &value) in row.iter().enumerate() {
                    packed_block[k * block + c] = value;
                }
            }
        });
    packed
}

/// The input and output-gradient slices of image `b`.
fn image(data: &[f32], b: usize, len: usize) -> &[f32] {
    &data[b * len..][..len]
}

/// `y = conv(x, weight) + bias`: `x` is `[batch, c_in, h, w]`, `weight` `[c_out, c_in, kh, kw]`,
/// `bias` `[c_out]`; returns `[batch, c_out, out_h, out_w]`. Each output is `bias` plus its taps
/// in `(ci, ky, kx)` order, one fused multiply-add each.
pub(crate) fn forward(input: &[f32], weight: &[f32], bias: &[f32], shape: &ConvShape) -> Vec<f32> {
    forward_then(input, weight, bias, shape, &as_computed)
}

/// `forward`, with each output row passed through `finish` while it is still in the core's cache
/// (inference fuses the normalization and activation that follow the convolution this way).
pub(crate) fn forward_then(input: &[f32], weight: &[f32], bias: &[f32], shape: &ConvShape, finish: &impl RowFinish) -> Vec<f32> {
    check_lengths(shape, Some(input), Some(weight), None);
    let conv = PackedConv::new(weight, bias, shape);
    output::written_by_chunks(
        shape.batch * shape.output_len(),
        shape.output_len(),
        || (Scratch::take(), Scratch::take()),
        |(padded, local), b, out| {
            let src = padded_source(input, b, shape, padded);
            // SAFETY: `image` writes every value of the planes it is given (its promise).
            unsafe {
                out.write_with(shape.output_len(), |values| {
                    conv.image(src, Planes::dense(values, shape), local, finish)
                })
            };
        },
    )
}

/// Two convolutions in a row, image by image, the first one writing its output rows straight
/// into the second one's padded copy, where `between` finishes them, and `finish` the second
/// one's rows in the output. For inference, a block's two layers: the activation between them
/// is never written to a tensor of its own, nor read back and copied into padding; each image
/// stays in the core's cache from one convolution to the next. Every value is computed as
/// `forward_then` computes it.
pub(crate) fn forward_twice_then(
    input: &[f32],
    [(weight_a, bias_a, shape_a), (weight_b, bias_b, shape_b)]: [(&[f32], &[f32], &ConvShape); 2],
    between: &impl RowFinish,
    finish: &impl RowFinish,
) -> Vec<f32> {
    check_lengths(shape_a, Some(input), Some(weight_a), None);
    check_lengths(shape_b, None, Some(weight_b), None);
    assert!(
        shape_a.batch == shape_b.batch
            && shape_a.channels_out == shape_b.channels_in
            && [shape_a.out_height(), shape_a.out_width()] == [shape_b.height, shape_b.width],
        "conv twice: the second convolution's input {shape_b:?} is not the first one's output {shape_a:?}"
    );
    #[cfg(test)]
    TWICE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (first, second) = (
        PackedConv::new(weight_a, bias_a, shape_a),
        PackedConv::new(weight_b, bias_b, shape_b),
    );
    output::written_by_chunks(
        shape_b.batch * shape_b.output_len(),
        shape_b.output_len(),
        || (Scratch::take(), Scratch::take(), Scratch::take()),
        |(padded_a, padded_b, local), b, out| {
            let src = padded_source(input, b, shape_a, padded_a);
            let len = shape_b.padded_len();
            padded_b.clear();
            padded_b.reserve(len);
            let slots = &mut padded_b.spare_capacity_mut()[..len];
            pad_frame(shape_b, slots);
            let rows = Planes {
                values: &mut slots[shape_b.padded_row(0, 0)..],
                channel_stride: shape_b.padded_plane(),
                row_stride: shape_b.padded_width(),
            };
            first.image(src, rows, local, between);
            // SAFETY: `pad_frame` wrote the padding and the tail, and the first convolution every
            // value of every channel's rows at `padded_row` (`image`'s promise).
            unsafe { padded_b.set_len(len) };
            // SAFETY: as in `forward_then`.
            unsafe {
                out.write_with(shape_b.output_len(), |values| {
                    second.image(padded_b, Planes::dense(values, shape_b), local, finish)
                })
            };
        },
    )
}

/// Calls of `forward_twice_then`, for tests that a fused path was taken.
#[cfg(test)]
pub(crate) static TWICE_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Writes the zeros of an image's padded copy into `slots` (the padding rows, each row's leading
/// zeros, the tail), leaving the image's rows, at `ConvShape::padded_row`, to the caller.
fn pad_frame(shape: &ConvShape, slots: &mut [MaybeUninit<f32>]) {
    let (w, pw, p, plane) = (shape.width, shape.padded_width(), shape.padding, shape.padded_plane());
    let zero = MaybeUninit::new(0.0);
    for channel in slots[..shape.channels_in * plane].chunks_mut(plane) {
        channel[..p * pw].fill(zero);
        for row in channel[p * pw..plane - p * pw].chunks_mut(pw) {
            // One zero written in place where the padding is one (the U-Net's 3 x 3 kernels): a
            // `memset` call a row cost more than the row's copy at 8 x 8.
            match p {
                1 => row[0] = zero,
                _ => row[..p].fill(zero),
            }
            debug_assert_eq!(row.len(), p + w);
        }
        channel[plane - p * pw..].fill(zero);
    }
    slots[shape.channels_in * plane..].fill(zero);
}

/// Where a convolution's output goes: channel `c`'s row `row` starts at `c * channel_stride +
/// row * row_stride` of `values` (an output tensor's image, or the rows of the next
/// convolution's padded copy).
struct Planes<'p> {
    values: &'p mut [MaybeUninit<f32>],
    channel_stride: usize,
    row_stride: usize,
}

impl<'p> Planes<'p> {
    /// An image of the output tensor, `[channels_out, out_height, out_width]`.
    fn dense(values: &'p mut [MaybeUninit<f32>], shape: &ConvShape) -> Self {
        Self {
            values,
            channel_stride: shape.positions(),
            row_stride: shape.out_width(),
        }
    }

    /// Values `column..end` of channel `c`'s row `row`.
    fn row_part(&mut self, c: usize, row: usize, columns: std::ops::Range<usize>) -> &mut [MaybeUninit<f32>] {
        let at = c * self.channel_stride + row * self.row_stride;
        &mut self.values[at + columns.start..at + columns.end]
    }
}

/// The output rows a band of positions `band` reaches, in order, each with the columns it holds:
/// output row `row` lies at positions `row * pitch..row * pitch + out_width` (`pitch` the output
/// width where the tiles take rows in runs, the padded width where a band includes the rows'
/// junk columns, which, like the positions past the last row, are left out).
fn band_rows(band: std::ops::Range<usize>, pitch: usize, shape: &ConvShape) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let (ow, oh) = (shape.out_width(), shape.out_height());
    (band.start / pitch..band.end.div_ceil(pitch).min(oh)).filter_map(move |row| {
        let columns = band.start.max(row * pitch) - row * pitch..band.end.min(row * pitch + ow).saturating_sub(row * pitch);
        (!columns.is_empty()).then_some((row, columns))
    })
}

/// One convolution's weights packed for the forward tile, with the shape, bias and tap offsets
/// its tiles read, and how its tiles cover the output: packed once per call, then run image by
/// image.
struct PackedConv<'a> {
    shape: &'a ConvShape,
    bias: &'a [f32],
    packed: Vec<f32>,
    /// The output channels of each packed block (`channel_blocks`).
    blocks: Vec<(usize, usize)>,
    offsets: Vec<usize>,
    block: usize,
    tile: usize,
    run: usize,
    /// Whether the tiles take the output row by row and write it in place
    /// (`ConvShape::rows_in_runs`), else bands of the padded layout computed aside and copied.
    rows: bool,
}

impl<'a> PackedConv<'a> {
    fn new(weight: &[f32], bias: &'a [f32], shape: &'a ConvShape) -> Self {
        assert_eq!(bias.len(), shape.channels_out, "conv bias: expected {} values", shape.channels_out);
        // Read once: the packing and every tile of this call use the same block, tile and runs.
        let isa = isa::current();
        let block = microkernel::forward_block(isa);
        let run = microkernel::run_positions(isa);
        let blocks = channel_blocks(shape.channels_out, block);
        Self {
            shape,
            bias,
            packed: pack_weights(weight, &blocks, shape.patch_len(), block),
            blocks,
            offsets: shape.tap_offsets(),
            block,
            tile: microkernel::forward_tile_positions(isa),
            run,
            rows: shape.rows_in_runs(run),
        }
    }

    /// One image from `src` (its padded copy, `padded_source`) into `dst`, in bands of positions
    /// (about `band_positions`, so the padded input a band reads stays in the core's cache),
    /// each output row (or the part of it a band holds) passed through `finish` as soon as its
    /// band is done. Writes every value of `dst`'s `channels_out` planes of `out_height` rows of
    /// `out_width`, nothing else of it. At 16 channels and 128 x 128 a whole image's output
    /// (1 MiB) beside its padded input (1 MiB) filled a 2 MiB L2, and the level scaled badly from
    /// one thread to two.
    fn image(&self, src: &[f32], mut dst: Planes, local: &mut Scratch, finish: &impl RowFinish) {
        let shape = self.shape;
        let (ow, oh) = (shape.out_width(), shape.out_height());
        let needed = (shape.channels_out - 1) * dst.channel_stride + (oh - 1) * dst.row_stride + ow;
        assert!(
            needed <= dst.values.len() && dst.row_stride >= ow && dst.channel_stride >= (oh - 1) * dst.row_stride + ow,
            "conv output: {needed} values in planes that do not overlap"
        );
        match self.rows {
            true => self.image_in_rows(src, &mut dst, finish),
            false => self.image_in_bands(src, &mut dst, local, finish),
        }
    }

    /// `image` where output rows are whole runs: a band is consecutive output positions, its
    /// tiles' runs never cross a row's end, and they write straight into `dst`.
    fn image_in_rows(&self, src: &[f32], dst: &mut Planes, finish: &impl RowFinish) {
        let shape = self.shape;
        let (pw, ow) = (shape.padded_width(), shape.out_width());
        let (positions, band) = (shape.positions(), shape.row_band());
        let mut runs = Vec::with_capacity(band / self.run);
        for band_start in (0..positions).step_by(band) {
            let band_end = (band_start + band).min(positions);
            runs.clear();
            runs.extend((band_start..band_end).step_by(self.run).map(|k| {
                let (row, x) = (k / ow, k % ow);
                Run {
                    src: row * pw + x,
                    out: row * dst.row_stride + x,
                }
            }));
            // SAFETY: `dst.values` holds `values.len()` values, which the tiles' writes are
            // checked against; the first tap chunk writes every value a later one reads.
            unsafe { self.tiles(src, &runs, dst.values.as_mut_ptr().cast(), dst.values.len(), dst.channel_stride) };
            for c in 0..shape.channels_out {
                for (row, columns) in band_rows(band_start..band_end, ow, shape) {
                    // SAFETY: the band's tiles wrote these values (its runs cover the band's
                    // positions, every channel's).
                    finish(c, unsafe { dst.row_part(c, row, columns).assume_init_mut() });
                }
            }
        }
    }

    /// `image` for other shapes: a band is consecutive positions of the padded layout, junk
    /// columns included, computed in `local`, and its rows are copied out.
    fn image_in_bands(&self, src: &[f32], dst: &mut Planes, local: &mut Scratch, finish: &impl RowFinish) {
        let shape = self.shape;
        let pw = shape.padded_width();
        let (positions, band) = (shape.padded_positions(), shape.forward_band());
        // Every value of `local` a band reads is written by its first tap chunk first.
        let local = local.at_least(shape.channels_out * band);
        let mut runs = Vec::with_capacity(band / self.run);
        for band_start in (0..positions).step_by(band) {
            let band_end = (band_start + band).min(positions);
            runs.clear();
            runs.extend((band_start..band_end).step_by(self.run).map(|p| Run {
                src: p,
                out: p - band_start,
            }));
            // SAFETY: `local` holds `local.len()` values, written by the first tap chunk first.
            unsafe { self.tiles(src, &runs, local.as_mut_ptr(), local.len(), band) };
            for c in 0..shape.channels_out {
                for (row, columns) in band_rows(band_start..band_end, pw, shape) {
                    let computed = &local[c * band + row * pw + columns.start - band_start..][..columns.len()];
                    finish(c, dst.row_part(c, row, columns).write_copy_of_slice(computed));
                }
            }
        }
    }

    /// Every tile of one band: for each chunk of taps, block of output channels and tile's worth
    /// of `runs`, channel `c`'s values at `out + c * out_stride + run.out`. The tiles carry their
    /// sums from one chunk to the next through `out`, so the chunks change no bit.
    ///
    /// # Safety
    /// `out` must be valid for reads and writes of `out_len` values (which the runs' writes are
    /// checked against).
    unsafe fn tiles(&self, src: &[f32], runs: &[Run], out: *mut f32, out_len: usize, out_stride: usize) {
        let (shape, block, offsets) = (self.shape, self.block, &self.offsets);
        let (taps, max_offset) = (offsets.len(), offsets.last().copied().unwrap_or(0));
        let furthest = |at: fn(&Run) -> usize| runs.iter().map(at).max().unwrap_or(0) + self.run;
        // Every read inside `src`, every write inside `out`, whole half-tiles.
        assert!(
            furthest(|r| r.src) + max_offset <= src.len()
                && (shape.channels_out - 1) * out_stride + furthest(|r| r.out) <= out_len
                && (runs.len() * self.run).is_multiple_of(HALF_TILE),
            "conv tiles: a run outside the source or the output"
        );
        for chunk_start in (0..taps).step_by(TAP_CHUNK) {
            let chunk = chunk_start..(chunk_start + TAP_CHUNK).min(taps);
            for (weights, &(first, channels)) in self.packed.chunks(taps * block).zip(&self.blocks) {
                let init = (chunk_start == 0).then(|| &self.bias[first..]);
                for tile_runs in runs.chunks(self.tile / self.run) {
                    // SAFETY: checked above (channels `first..first + channels` of `out`, the
                    // runs' reads and writes).
                    unsafe {
                        microkernel::forward_tile(
                            channels,
                            block,
                            self.run,
                            tile_runs,
                            src.as_ptr(),
                            &offsets[chunk.clone()],
                            &weights[chunk.start * block..chunk.end * block],
                            init,
                            out.add(first * out_stride),
                            out_stride,
                        );
                    }
                }
            }
        }
    }
}

/// Taps per forward chunk: 256 taps of at most `MAX_BLOCK` packed weights are 8 KiB.
const TAP_CHUNK: usize = 256;

/// `dL/dx` from `dL/dy` (`[batch, c_out, out_h, out_w]`): the "full" convolution of `dL/dy` with
/// the kernel flipped in space and its channel axes swapped, padded by `k - 1 - padding`. Written
/// as a forward convolution it runs the forward pass's tiles.
pub(crate) fn input_grad(weight: &[f32], output_grad: &[f32], shape: &ConvShape) -> Vec<f32> {
    let (kh, kw) = (shape.kernel[0], shape.kernel[1]);
    check_lengths(shape, None, Some(weight), Some(output_grad));
    let (ci_n, co_n) = (shape.channels_in, shape.channels_out);
    let mut flipped = vec![0.0f32; weight.len()];
    // `flipped[ci][co]` is `weight[co][ci]` turned by 180 degrees; each `ci` on a thread.
    flipped.par_chunks_mut(co_n * kh * kw).enumerate().for_each(|(ci, out)| {
        for (co, kernel) in out.chunks_mut(kh * kw).enumerate() {
            let source = &weight[(co * ci_n + ci) * kh * kw..][..kh * kw];
            for (flipped_value, &value) in kernel.iter_mut().rev().zip(source) {
                *flipped_value = value;
            }
        }
    });
    assert!(
        kh == kw && shape.padding < kh,
        "input_grad covers square kernels padded by less than their size"
    );
    let transposed = ConvShape {
        batch: shape.batch,
        channels_in: co_n,
        channels_out: ci_n,
        height: shape.out_height(),
        width: shape.out_width(),
        kernel: shape.kernel,
        padding: kh - 1 - shape.padding,
    };
    forward(output_grad, &flipped, &vec![0.0; ci_n], &transposed)
}

/// `dL/dW` (`[c_out, c_in, kh, kw]`). For each tap and output channel, the products of each
/// shifted input value with `dL/dy` are chained over an image's positions in order
/// (`microkernel::weight_tile`, output channels along the registers, up to `weight_taps` taps
/// per call; how many changes no chain), and the images' sums are added in image order.
///
/// Tasks split the work one of two ways, whichever reads less: where an image's sums (taps x
/// channels) are smaller than its padded input and output gradient (the large, shallow levels),
/// a task is one image and a group of its taps, and walks that image once through all its taps
/// (tasks of taps over all images streamed the whole batch through every task); each image's
/// sums are kept and added in image order at the end. Where the sums are the larger (the deep,
/// small levels: 2.4 MB an image at 256 channels), a task is a group of taps over every image,
/// adding each image's sums into its total as it goes, a call's worth at a time straight from
/// the registers' chains (`image_tap_sums_added`). Either way every sum is the same chain.
pub(crate) fn weight_grad(input: &[f32], output_grad: &[f32], shape: &ConvShape) -> Vec<f32> {
    check_lengths(shape, Some(input), None, Some(output_grad));
    let (taps, stride) = (shape.patch_len(), shape.positions());
    let (oh, ow, pw) = (shape.out_height(), shape.out_width(), shape.padded_width());
    let lanes = shape.channels_out.next_multiple_of(LANES);
    let offsets = shape.tap_offsets();
    // Where the tiles' reads of an image's input end: the last output row's last position, plus
    // the furthest tap.
    let src_end = (oh - 1) * pw + ow + offsets.last().copied().unwrap_or(0);
    assert!(src_end <= shape.padded_len());
    assert!(!shape.reads_input_in_place() || src_end <= shape.input_len());
    // `rows` whole output rows from where the tile's pointers start, as the tiles visit them.
    let output_rows = |rows: usize| microkernel::Positions {
        rows,
        row_len: ow,
        src_row: pw,
    };
    // One image's sums for the taps at `tap_offsets`, into `sums` (`[taps][lanes]`, zeros), from
    // its padded input `src` and transposed output gradient `dy`.
    let image_tap_sums = |src: &[f32], dy: &[f32], tap_offsets: &[usize], sums: &mut [f32]| {
        assert!(src.len() >= src_end && dy.len() == stride * lanes && sums.len() == tap_offsets.len() * lanes);
        // Rows per band: a band's output-gradient rows (`lanes` values a position) take about
        // 64 KiB, read once per tap call.
        let band = (16 * 1024 / lanes / ow).max(1);
        for band_start in (0..oh).step_by(band) {
            let rows = band.min(oh - band_start);
            for first in (0..lanes).step_by(WEIGHT_GROUPS * LANES) {
                let channel_groups = ((lanes - first) / LANES).min(WEIGHT_GROUPS);
                let per_call = microkernel::weight_taps(channel_groups);
                for (chunk, chunk_offsets) in tap_offsets.chunks(per_call).enumerate() {
                    // SAFETY: reads of `src` end by `src_end` (checked), of `dy` at row
                    // `(band_start + rows) * ow <= stride` and column `first + LANES groups <=
                    // lanes`; `sums` holds these taps x `lanes`.
                    unsafe {
                        microkernel::weight_tile(
                            channel_groups,
                            src.as_ptr().add(band_start * pw),
                            chunk_offsets,
                            dy.as_ptr().add(band_start * ow * lanes + first),
                            lanes,
                            output_rows(rows),
                            sums.as_mut_ptr().add(chunk * per_call * lanes + first),
                            lanes,
                        );
                    }
                }
            }
        }
    };
    // One image's sums for the taps at `tap_offsets`, each added into `total` (`[taps][lanes]`)
    // as soon as its chain is whole: a call's taps and channels chain over all the image's
    // positions in registers, then go into `total`. A whole image's sums had been zeroed, filled
    // and added in passes of their own, at 256 channels 2.4 MB an image streamed three times for
    // 12 MFLOP of tiles. (The deep levels only: an image's positions are few.)
    let image_tap_sums_added = |src: &[f32], dy: &[f32], tap_offsets: &[usize], total: &mut [f32]| {
        assert!(src.len() >= src_end && dy.len() == stride * lanes && total.len() == tap_offsets.len() * lanes);
        let mut call_sums = [0.0f32; WEIGHT_TAPS * WEIGHT_GROUPS * LANES];
        for first in (0..lanes).step_by(WEIGHT_GROUPS * LANES) {
            let channel_groups = ((lanes - first) / LANES).min(WEIGHT_GROUPS);
            let width = channel_groups * LANES;
            let per_call = microkernel::weight_taps(channel_groups);
            for (chunk, chunk_offsets) in tap_offsets.chunks(per_call).enumerate() {
                let sums = &mut call_sums[..chunk_offsets.len() * width];
                sums.fill(0.0);
                // SAFETY: reads of `src` end by `src_end` (checked), of `dy` at row `stride` and
                // column `first + width <= lanes`; `sums` holds these taps x `width`.
                unsafe {
                    microkernel::weight_tile(
                        channel_groups,
                        src.as_ptr(),
                        chunk_offsets,
                        dy.as_ptr().add(first),
                        lanes,
                        output_rows(oh),
                        sums.as_mut_ptr(),
                        width,
                    );
                }
                for (j, tap_sums) in sums.chunks(width).enumerate() {
                    let tap_total = &mut total[(chunk * per_call + j) * lanes + first..][..width];
                    for (t, s) in tap_total.iter_mut().zip(tap_sums) {
                        *t += s;
                    }
                }
            }
        }
    };
    // Tap groups, in whole tap blocks: enough tasks for every thread four times over.
    let blocks = taps.div_ceil(BLOCK);
    let tasks_wanted = 4 * rayon::current_num_threads();
    let by_image = taps * lanes < shape.padded_len() + stride * lanes;
    let tap_groups = if by_image {
        tasks_wanted.div_ceil(shape.batch.max(1))
    } else {
        tasks_wanted
    };
    let group_taps = blocks.div_ceil(tap_groups.clamp(1, blocks)) * BLOCK;
    // Tasks that share an image read its padded input and transposed gradient, made once for
    // all; a task that is a whole image makes its own in the thread's buffers, and reads them
    // while they are still in the core's cache.
    let whole_images = by_image && group_taps >= taps;
    // Per image: its padded input, and its transposed output gradient.
    type Prepared<'a> = (Vec<Cow<'a, [f32]>>, Vec<Vec<f32>>);
    let prepared: Option<Prepared> = (!whole_images).then(|| {
        let per_image = |f: &(dyn Fn(usize) -> Vec<f32> + Sync)| -> Vec<Vec<f32>> {
            (0..shape.batch)
                .into_par_iter()
                .with_max_len(output::leaf_len(shape.batch))
                .map(f)
                .collect()
        };
        let padded = match shape.reads_input_in_place() {
            true => (0..shape.batch)
                .map(|b| Cow::Borrowed(image(input, b, shape.input_len())))
                .collect(),
            false => per_image(&|b| padded_image(image(input, b, shape.input_len()), shape))
                .into_iter()
                .map(Cow::Owned)
                .collect(),
        };
        (
            padded,
            per_image(&|b| transposed_output(image(output_grad, b, shape.output_len()), shape)),
        )
    });
    let mut transposed = vec![0.0f32; taps * lanes];
    if by_image {
        // `[image][taps][lanes]`, each task's taps contiguous within its image.
        let mut image_sums = vec![0.0f32; shape.batch * taps * lanes];
        match &prepared {
            None => image_sums
                .par_chunks_mut(taps * lanes)
                .enumerate()
                .with_max_len(1)
                .for_each(|(b, sums)| {
                    let (mut padded, mut dyt) = (Scratch::take(), Scratch::take());
                    let src = padded_source(input, b, shape, &mut padded);
                    transposed_output_into(image(output_grad, b, shape.output_len()), shape, &mut dyt);
                    image_tap_sums(src, &dyt, &offsets, sums);
                }),
            Some((padded, dyt)) => {
                let tasks: Vec<(usize, &[usize], &mut [f32])> = image_sums
                    .chunks_mut(taps * lanes)
                    .enumerate()
                    .flat_map(|(b, image_sum)| {
                        let image_groups = image_sum.chunks_mut(group_taps * lanes).zip(offsets.chunks(group_taps));
                        image_groups.map(move |(sums, tap_offsets)| (b, tap_offsets, sums))
                    })
                    .collect();
                tasks
                    .into_par_iter()
                    .with_max_len(1)
                    .for_each(|(b, tap_offsets, sums)| image_tap_sums(&padded[b], &dyt[b], tap_offsets, sums));
            }
        }
        transposed
            .par_chunks_mut(lanes)
            .enumerate()
            .with_min_len(64)
            .for_each(|(k, total)| {
                for sums in image_sums.chunks(taps * lanes) {
                    for (t, s) in total.iter_mut().zip(&sums[k * lanes..][..lanes]) {
                        *t += s;
                    }
                }
            });
    } else {
        let (padded, dyt) = prepared.as_ref().expect("tasks of taps read prepared images");
        transposed
            .par_chunks_mut(group_taps * lanes)
            .zip(offsets.par_chunks(group_taps))
            .with_max_len(1)
            .for_each(|(total, tap_offsets)| {
                for b in 0..shape.batch {
                    image_tap_sums_added(&padded[b], &dyt[b], tap_offsets, total);
                }
            });
    }
    // `[taps][lanes]` to `[c_out][taps]`, `LANES` output channels a task (one thread did this
    // alone: 600 000 scattered writes at 256 channels). Where the CPU has AVX2, blocks of 8 taps
    // x 8 channels are turned around in registers and stored a row of 8 taps at a time (value by
    // value, each store went to another channel's row: a cache line written 4 bytes at a time).
    let mut grad = vec![0.0f32; shape.channels_out * taps];
    grad.par_chunks_mut(LANES * taps).enumerate().for_each(|(block, rows)| {
        let (first, channels) = (block * LANES, rows.len() / taps);
        #[cfg_attr(not(x86_kernels), allow(unused_mut))]
        let mut blocked_taps = 0;
        #[cfg(x86_kernels)]
        if channels == 8 && isa::current() >= Isa::Avx2 {
            blocked_taps = taps / 8 * 8;
            // SAFETY: `current` names AVX2 only where the CPU has it. Tap `k` is "channel" `k` of
            // the generic transpose, the block's channels its columns.
            unsafe { transpose_blocks_avx2(&transposed, lanes, first, [blocked_taps, 8], rows, taps) };
        }
        for (k, row) in transposed.chunks(lanes).enumerate().skip(blocked_taps) {
            for (c, &value) in row[first..].iter().take(channels).enumerate() {
                rows[c * taps + k] = value;
            }
        }
    });
    grad
}

/// Panics unless the given slices hold what `shape` says (an empty slice is not checked): the
/// micro-kernels read through raw pointers, so a short buffer must stop here rather than be read
/// past.
fn check_lengths(shape: &ConvShape, input: Option<&[f32]>, weight: Option<&[f32]>, output_grad: Option<&[f32]>) {
    assert!(shape.is_valid(), "conv: shape {shape:?} is outside what these kernels compute");
    let [input_len, weight_len, output_len] = shape.lengths().expect("a valid shape's lengths fit");
    for (what, data, expected) in [
        ("input", input, input_len),
        ("weight", weight, weight_len),
        ("output gradient", output_grad, output_len),
    ] {
        if let Some(data) = data {
            assert_eq!(data.len(), expected, "conv {what}: {} values for shape {shape:?}", data.len());
        }
    }
}

/// `dL/dbias` (`[c_out]`): `dL/dy` summed over images and positions, each channel in `LANES`
/// running sums (positions `LANES` apart) added first to last per image, images in order.
pub(crate) fn bias_grad(output_grad: &[f32], shape: &ConvShape) -> Vec<f32> {
    check_lengths(shape, None, None, Some(output_grad));
    let n = shape.positions();
    // Channels in parallel: each channel's sum is one thread's, in image order.
    (0..shape.channels_out)
        .into_par_iter()
        .map(|c| {
            let mut g = 0.0f32;
            for image in output_grad.chunks(shape.output_len()) {
                let row = &image[c * n..][..n];
                let mut lanes = [0.0f32; LANES];
                let mut chunks = row.chunks_exact(LANES);
                for chunk in &mut chunks {
                    for (lane, value) in lanes.iter_mut().zip(chunk) {
                        *lane += value;
                    }
                }
                for (lane, value) in lanes.iter_mut().zip(chunks.remainder()) {
                    *lane += value;
                }
                g += lanes.iter().sum::<f32>();
            }
            g
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elementwise;

    /// The definition, written out: a loop per output value.
    fn naive_forward(x: &[f32], w: &[f32], bias: &[f32], s: &ConvShape) -> Vec<f32> {
        let (oh, ow) = (s.out_height(), s.out_width());
        let mut y = vec![0.0; s.batch * s.channels_out * oh * ow];
        for b in 0..s.batch {
            for co in 0..s.channels_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[co] as f64;
                        for ci in 0..s.channels_in {
                            for ky in 0..s.kernel[0] {
                                for kx in 0..s.kernel[1] {
                                    let (iy, ix) = ((oy + ky) as isize - s.padding as isize, (ox + kx) as isize - s.padding as isize);
                                    if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize {
                                        continue;
                                    }
                                    let xv = x[((b * s.channels_in + ci) * s.height + iy as usize) * s.width + ix as usize];
                                    let wv = w[((co * s.channels_in + ci) * s.kernel[0] + ky) * s.kernel[1] + kx];
                                    acc += (xv * wv) as f64;
                                }
                            }
                        }
                        y[((b * s.channels_out + co) * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn shapes_outside_the_kernels_are_refused() {
        let base = shapes()[0];
        assert!(base.is_valid());
        assert!(!ConvShape { kernel: [3, 1], ..base }.is_valid());
        assert!(!ConvShape { padding: 3, ..base }.is_valid());
        assert!(!ConvShape { channels_in: 0, ..base }.is_valid());
        assert!(!ConvShape { width: 0, ..base }.is_valid());
        // Counts that would overflow (and wrap in a release build) are refused, not computed.
        assert!(!ConvShape {
            batch: usize::MAX / 2,
            ..base
        }
        .is_valid());
        assert!(!ConvShape {
            height: usize::MAX - 1,
            ..base
        }
        .is_valid());
        assert!(!ConvShape {
            height: 1,
            padding: 0,
            ..base
        }
        .is_valid());
    }

    /// A 5 x 5 kernel with padding 2 on a one-pixel-wide image: most kernel columns see only
    /// padding. Still the definition's values, and its gradients are still adjoint.
    #[test]
    fn narrow_images_with_wide_kernels() {
        let s = ConvShape {
            batch: 2,
            channels_in: 2,
            channels_out: 3,
            height: 4,
            width: 1,
            kernel: [5, 5],
            padding: 2,
        };
        assert!(s.is_valid());
        let (x, w, b) = (
            values(s.batch * s.input_len(), 10),
            values(s.channels_out * s.patch_len(), 11),
            values(3, 12),
        );
        close(&forward(&x, &w, &b, &s), &naive_forward(&x, &w, &b, &s));
        let dy = values(s.batch * s.output_len(), 13);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        let reference = dot(&forward(&x, &w, &[0.0; 3], &s), &dy);
        assert!((reference - dot(&x, &input_grad(&w, &dy, &s))).abs() < 1e-3 * (1.0 + reference.abs()));
        assert!((reference - dot(&w, &weight_grad(&x, &dy, &s))).abs() < 1e-3 * (1.0 + reference.abs()));
    }

    #[test]
    #[should_panic(expected = "conv weight")]
    fn a_weight_of_the_wrong_size_is_refused() {
        let s = shapes()[0];
        let x = values(s.batch * s.input_len(), 1);
        forward(&x, &values(5, 2), &values(s.channels_out, 3), &s);
    }

    #[test]
    #[should_panic(expected = "outside what these kernels compute")]
    fn a_shape_outside_the_kernels_is_refused_by_every_entry() {
        let s = ConvShape { width: 0, ..shapes()[0] };
        weight_grad(&[], &[], &s);
    }

    #[test]
    #[should_panic(expected = "conv output gradient")]
    fn a_short_output_gradient_is_refused_by_the_bias_gradient() {
        let s = shapes()[0];
        bias_grad(&values(3, 1), &s);
    }

    /// Forward bands are whole half-tiles, at least a row's worth (or the whole image), cover an
    /// image's positions, and every band's reads stay inside the padded copy; some shapes have
    /// band boundaries inside rows.
    #[test]
    fn bands_cover_the_positions_within_bounds() {
        let mut cut_rows = false;
        for s in shapes() {
            let band = s.band_positions();
            assert!(band % TILE == 0 && (TILE..=MAX_BAND).contains(&band), "{s:?}: {band}");
            let (positions, band) = (s.padded_positions(), s.forward_band());
            assert!(
                band % HALF_TILE == 0 && band <= positions && band >= s.padded_width().min(positions),
                "{s:?}"
            );
            cut_rows |= positions > band && band % s.padded_width() != 0;
            let max_offset = s.tap_offsets().last().copied().unwrap_or(0);
            for start in (0..positions).step_by(band) {
                let len = band.min(positions - start);
                assert!(len % HALF_TILE == 0 && start + len + max_offset <= s.padded_len(), "{s:?}");
            }
        }
        assert!(cut_rows, "no shape has a band boundary inside a row");
        // Where the tiles take rows in runs, bands of output positions: whole half-tiles, at
        // least a row's worth (or the image), some cut inside rows. The shapes cover all three
        // layouts: runs of 16 and of 8, runs of 8 only, bands of the padded layout.
        let (mut cut_rows, mut layouts) = (false, std::collections::BTreeSet::new());
        for s in shapes() {
            layouts.insert((s.rows_in_runs(16), s.rows_in_runs(8)));
            if s.rows_in_runs(8) {
                let (positions, band, row) = (s.positions(), s.row_band(), s.out_width());
                assert!(band % HALF_TILE == 0 && band <= positions && band >= row.min(positions), "{s:?}");
                cut_rows |= positions > band && band % row != 0;
            }
        }
        assert!(cut_rows, "no shape has a band of rows in runs cut inside a row");
        assert_eq!(layouts.len(), 3, "{layouts:?}");
    }

    /// Forward blocks cover the output channels once, in order, as few as the block allows, their
    /// sizes at most one apart: 16 channels in blocks of 6 are 6 + 5 + 5, not 6 + 6 + 4.
    #[test]
    fn forward_blocks_are_few_and_even() {
        for block in [BLOCK, microkernel::MAX_BLOCK] {
            for channels in 1..=300 {
                let blocks = channel_blocks(channels, block);
                assert_eq!(blocks.len(), channels.div_ceil(block), "{channels} in blocks of {block}");
                let mut next = 0;
                for &(first, count) in &blocks {
                    assert!(first == next && (1..=block).contains(&count), "{channels}: {blocks:?}");
                    next += count;
                }
                assert_eq!(next, channels);
                let sizes = blocks.iter().map(|&(_, count)| count);
                assert!(sizes.clone().max().unwrap() - sizes.min().unwrap() <= 1, "{channels}: {blocks:?}");
            }
        }
        assert_eq!(channel_blocks(16, BLOCK), [(0, 6), (6, 5), (11, 5)]);
    }

    /// 1 x 1 kernels without padding read their input in place where it covers whole half-tiles
    /// (both kinds are among `shapes`, which every test of values runs).
    #[test]
    fn one_by_one_kernels_read_whole_half_tiles_in_place() {
        let in_place: Vec<bool> = shapes().iter().map(ConvShape::reads_input_in_place).collect();
        assert!(in_place[1] && in_place[8] && !in_place[7], "{in_place:?}");
        assert_eq!(in_place.iter().filter(|&&b| b).count(), 3, "3 x 3 kernels always copy");
    }

    /// The two padded layouts put each value where the tiles look for it, and zeros elsewhere.
    #[test]
    fn padded_layouts_hold_each_value_once() {
        for s in shapes() {
            let dense = values(s.output_len(), 3);
            let lanes = s.channels_out.next_multiple_of(LANES);
            let dyt = transposed_output(&dense, &s);
            assert_eq!(dyt.len(), s.positions() * lanes);
            for (i, &value) in dense.iter().enumerate() {
                let (c, position) = (i / s.positions(), i % s.positions());
                assert_eq!(dyt[position * lanes + c], value, "{s:?}");
            }
            let total = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
            assert_eq!(total(&dyt), total(&dense), "{s:?}: values outside their places");
            let image = values(s.input_len(), 4);
            // A reused buffer with other values in it: every border is written again.
            let mut src = vec![7.0; s.padded_len() + 5];
            pad_into(&image, &s, &mut src);
            assert_eq!(src.len(), s.padded_len(), "{s:?}");
            assert_eq!(total(&src), total(&image), "{s:?}: input values outside their places");
            assert_eq!(padded_image(&image, &s), src, "{s:?}: a fresh buffer and a reused one differ");
        }
    }

    /// The output gradient laid out for the weight-gradient tile holds each value at its place
    /// and zeros elsewhere on every instruction set, where 8 x 8 blocks are turned around in
    /// registers and where channels or columns are left over.
    #[test]
    fn transposed_output_gradients_hold_each_value_at_its_place() {
        for isa in crate::isa::compared_in("the transposed output gradient") {
            let _forced = crate::isa::force(isa);
            for (channels_out, width) in [(16, 16), (13, 19), (8, 8), (24, 7), (5, 40), (32, 128)] {
                let s = ConvShape {
                    batch: 1,
                    channels_in: 2,
                    channels_out,
                    height: 3,
                    width,
                    kernel: [3, 3],
                    padding: 1,
                };
                // Every value distinct, so a value in another's place cannot go unseen.
                let dense: Vec<f32> = (0..s.output_len()).map(|i| i as f32 + 0.5).collect();
                let dyt = transposed_output(&dense, &s);
                let lanes = channels_out.next_multiple_of(LANES);
                let mut expected = vec![0.0f32; s.positions() * lanes];
                for (i, &value) in dense.iter().enumerate() {
                    let (c, position) = (i / s.positions(), i % s.positions());
                    expected[position * lanes + c] = value;
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&dyt), bits(&expected), "{isa:?}, {channels_out} channels, width {width}");
            }
        }
    }

    /// A shape from its seven numbers, in `ConvShape`'s field order.
    fn test_shape(
        batch: usize,
        channels_in: usize,
        channels_out: usize,
        height: usize,
        width: usize,
        kernel: [usize; 2],
        padding: usize,
    ) -> ConvShape {
        ConvShape {
            batch,
            channels_in,
            channels_out,
            height,
            width,
            kernel,
            padding,
        }
    }

    fn shapes() -> Vec<ConvShape> {
        let shape = test_shape;
        vec![
            shape(2, 3, 4, 5, 7, [3, 3], 1),
            shape(3, 2, 5, 4, 4, [1, 1], 0),
            shape(1, 2, 3, 6, 5, [3, 3], 0),
            shape(2, 1, 2, 3, 4, [5, 5], 2),
            // Wide enough for several bands, the last one partial; 576-long sums.
            shape(2, 64, 2, 10, 64, [3, 3], 1),
            // Rows wider than a band: bands of one row; 9 output channels (two weight-gradient
            // channel blocks).
            shape(1, 256, 9, 3, 130, [3, 3], 1),
            // 16 output channels: two whole forward blocks of 8 on AVX-512.
            shape(2, 3, 16, 6, 9, [3, 3], 1),
            // A 1 x 1 kernel over 15 positions: copied, where 16 are read in place.
            shape(2, 3, 2, 5, 3, [1, 1], 0),
            // Read in place by the weight gradient's tasks of taps over every image.
            shape(1, 64, 8, 4, 4, [1, 1], 0),
            // Rows in runs on every path, bands cut inside rows (512 positions, rows of 48); 9
            // output channels (blocks of 5 and 4).
            shape(2, 4, 9, 20, 48, [3, 3], 1),
            // Rows in runs of 8 (AVX2, portable), not of 16 (AVX-512 takes bands aside); two
            // tap chunks (40 x 9 taps), so later chunks add into the output in place.
            shape(2, 40, 7, 8, 8, [3, 3], 1),
            // Rows in runs without padding: the source rows are wider than the output's.
            shape(1, 5, 3, 6, 18, [3, 3], 0),
            // A 1 x 1 kernel read in place, its rows in runs (the decoder's reductions, the head).
            shape(2, 3, 4, 4, 16, [1, 1], 0),
        ]
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "value {i}: {x} vs {y}");
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        for s in shapes() {
            let x = values(s.batch * s.input_len(), 1);
            let w = values(s.channels_out * s.patch_len(), 2);
            let bias = values(s.channels_out, 3);
            close(&forward(&x, &w, &bias, &s), &naive_forward(&x, &w, &bias, &s));
        }
    }

    /// Bit for bit, each output is its bias followed by one fused multiply-add per tap in
    /// `(ci, ky, kx)` order, read from the zero-padded image: whatever band, tile or tap chunk
    /// computed it, and on every instruction set this CPU has.
    #[test]
    fn forward_gives_the_tap_order_chain_bit_for_bit() {
        for s in shapes() {
            let x = values(s.batch * s.input_len(), 5);
            let w = values(s.channels_out * s.patch_len(), 6);
            let bias = values(s.channels_out, 7);
            let (pw, ow, taps) = (s.padded_width(), s.out_width(), s.patch_len());
            let offsets = s.tap_offsets();
            let mut expected = Vec::with_capacity(s.batch * s.output_len());
            for b in 0..s.batch {
                let padded = padded_image(image(&x, b, s.input_len()), &s);
                for co in 0..s.channels_out {
                    for position in 0..s.positions() {
                        let at = position / ow * pw + position % ow;
                        let chain = (0..taps).fold(bias[co], |sum, k| w[co * taps + k].mul_add(padded[at + offsets[k]], sum));
                        expected.push(chain);
                    }
                }
            }
            for isa in crate::isa::compared_in("the forward pass's chains") {
                let _forced = crate::isa::force(isa);
                let got = forward(&x, &w, &bias, &s);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&expected), "{s:?}, {isa:?}");
            }
        }
    }

    /// Two convolutions in a row give, bit for bit, the second convolution of the first one's
    /// output passed through `between`, on every instruction set: for 3 x 3 pairs over several
    /// bands (band boundaries inside rows), a 1 x 1 kernel first (read in place) and a 5 x 5
    /// second one (padding 2), a 3 x 3 kernel without padding (bands starting in junk columns)
    /// before a 1 x 1 one (a copy without padding), and pairs whose rows the tiles take in runs.
    #[test]
    fn two_convolutions_in_a_row_give_each_ones_bits() {
        let between = |c: usize, v: f32| elementwise::leaky((v - 0.1 * c as f32) / 1.3, 0.01);
        for (a, b) in [
            (test_shape(2, 3, 16, 12, 70, [3, 3], 1), test_shape(2, 16, 5, 12, 70, [3, 3], 1)),
            (test_shape(3, 2, 9, 4, 4, [1, 1], 0), test_shape(3, 9, 4, 4, 4, [5, 5], 2)),
            (test_shape(1, 64, 4, 6, 7, [3, 3], 1), test_shape(1, 4, 64, 6, 7, [3, 3], 1)),
            (test_shape(1, 64, 4, 9, 40, [3, 3], 0), test_shape(1, 4, 5, 7, 38, [1, 1], 0)),
            // Rows in runs on every path (the first writes into the second's padded copy), in
            // two tap chunks; rows in runs of 8 but not of 16 (AVX-512 takes bands aside).
            (test_shape(2, 40, 16, 6, 16, [3, 3], 1), test_shape(2, 16, 5, 6, 16, [3, 3], 1)),
            (test_shape(1, 3, 12, 8, 8, [3, 3], 1), test_shape(1, 12, 6, 8, 8, [3, 3], 1)),
            // Rows in runs with bands cut inside rows (both finishes see split rows), and a 1 x 1
            // kernel read in place, its rows in runs.
            (test_shape(2, 4, 9, 20, 48, [3, 3], 1), test_shape(2, 9, 5, 20, 48, [3, 3], 1)),
            (test_shape(1, 3, 8, 4, 16, [1, 1], 0), test_shape(1, 8, 4, 4, 16, [3, 3], 1)),
        ] {
            let x = values(a.batch * a.input_len(), 11);
            let (wa, ba) = (values(a.channels_out * a.patch_len(), 12), values(a.channels_out, 13));
            let (wb, bb) = (values(b.channels_out * b.patch_len(), 14), values(b.channels_out, 15));
            let finish = |c: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v = *v * 0.5 + c as f32);
            let between = |c: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v = between(c, *v));
            for isa in crate::isa::compared_in("two convolutions in a row") {
                let _forced = crate::isa::force(isa);
                let middle = forward_then(&x, &wa, &ba, &a, &between);
                let expected = forward_then(&middle, &wb, &bb, &b, &finish);
                let got = forward_twice_then(&x, [(&wa, &ba, &a), (&wb, &bb, &b)], &between, &finish);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&expected), "{a:?} then {b:?}, {isa:?}");
            }
        }
    }

    /// Both gradients are the adjoints of the forward map: <conv(x, w), dy> = <x, input_grad(dy)>
    /// = <w, weight_grad(x, dy)> for any x, w, dy (bias zero), which pins them down exactly.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward_pass() {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        for s in shapes() {
            let x = values(s.batch * s.input_len(), 4);
            let w = values(s.channels_out * s.patch_len(), 5);
            let dy = values(s.batch * s.output_len(), 6);
            let y = forward(&x, &w, &vec![0.0; s.channels_out], &s);
            let reference = dot(&y, &dy);
            let via_input = dot(&x, &input_grad(&w, &dy, &s));
            let via_weight = dot(&w, &weight_grad(&x, &dy, &s));
            assert!(
                (reference - via_input).abs() < 1e-3 * (1.0 + reference.abs()),
                "{s:?}: {reference} vs {via_input}"
            );
            assert!(
                (reference - via_weight).abs() < 1e-3 * (1.0 + reference.abs()),
                "{s:?}: {reference} vs {via_weight}"
            );
            let db = bias_grad(&dy, &s);
            let per_channel: Vec<f32> = (0..s.channels_out)
                .map(|co| {
                    (0..s.batch)
                        .flat_map(|b| dy[(b * s.channels_out + co) * s.positions()..][..s.positions()].iter())
                        .sum()
                })
                .collect();
            close(&db, &per_channel);
        }
    }

    /// The weight gradient is, for every tap and output channel, each image's `mul_add` chain over
    /// its output positions in order, the images' sums added in image order: bit for bit, on
    /// every instruction set and 1 and 3 threads, for shapes that split the work by image (the
    /// shallow levels; whole images or groups of an image's taps) and by taps (a deep, small
    /// level, whose sums outweigh its images), and an image whose weight-gradient bands hold a few
    /// rows each. The same bits as the chain over the padded layout with zero gradients in its
    /// junk columns and past its last row (what the tiles computed before they skipped them): a
    /// finite `x * 0` changes a chain only from -0 to +0, and a chain from +0 holds -0 only after
    /// an underflowing product; the images' totals (from +0) absorb even that.
    #[test]
    fn weight_gradient_is_the_image_order_chain_bit_for_bit() {
        let shape =
            |batch, channels_in, channels_out, height, width| test_shape(batch, channels_in, channels_out, height, width, [3, 3], 1);
        // Split by image (135 x 16 sums against 3 360 padded values and 192 positions of 16
        // gradients: on 1 thread a task an image, on 3 groups of 48, 48 and 39 taps of an image),
        // then by taps (288 x 40 sums against 1 152 + 24 x 40).
        for (s, expected_by_image) in [
            (shape(4, 15, 16, 12, 14), true),
            (shape(3, 32, 40, 4, 4), false),
            // Bands of 3 rows (16 Ki values of 32 lanes over rows of 130): 3 + 2.
            (shape(1, 2, 32, 5, 130), true),
        ] {
            let lanes = s.channels_out.next_multiple_of(LANES);
            let by_image = s.patch_len() * lanes < s.padded_len() + s.positions() * lanes;
            assert_eq!(by_image, expected_by_image, "{s:?}: the split this shape is here for");
            let x = values(s.batch * s.input_len(), 21);
            let dy = values(s.batch * s.output_len(), 22);
            let offsets = s.tap_offsets();
            let mut total = vec![0.0f32; s.channels_out * s.patch_len()];
            for b in 0..s.batch {
                let padded = padded_image(image(&x, b, s.input_len()), &s);
                let dyt = transposed_output(image(&dy, b, s.output_len()), &s);
                let (pw, ow) = (s.padded_width(), s.out_width());
                for (c, row) in total.chunks_mut(s.patch_len()).enumerate() {
                    for (t, &offset) in row.iter_mut().zip(&offsets) {
                        let chain = (0..s.positions()).fold(0.0f32, |sum, p| {
                            padded[offset + p / ow * pw + p % ow].mul_add(dyt[p * lanes + c], sum)
                        });
                        let gradient_at = |p: usize| match p % pw < ow && p < s.out_height() * pw {
                            true => dyt[(p / pw * ow + p % pw) * lanes + c],
                            false => 0.0,
                        };
                        let with_junk = (0..s.padded_positions()).fold(0.0f32, |sum, p| padded[offset + p].mul_add(gradient_at(p), sum));
                        assert_eq!(chain.to_bits(), with_junk.to_bits(), "{s:?}: the junk columns changed a chain");
                        *t += chain;
                    }
                }
            }
            for (isa, threads) in isa::compared_in("the weight gradient's chains")
                .into_iter()
                .flat_map(|isa| [(isa, 1), (isa, 3)])
            {
                let _forced = isa::force(isa);
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| weight_grad(&x, &dy, &s));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&total),
                    "{s:?}, split by image: {by_image}, {isa:?}, {threads} threads"
                );
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let s = ConvShape {
            batch: 5,
            channels_in: 3,
            channels_out: 4,
            height: 9,
            width: 8,
            kernel: [3, 3],
            padding: 1,
        };
        let x = values(s.batch * s.input_len(), 7);
        let w = values(s.channels_out * s.patch_len(), 8);
        let dy = values(s.batch * s.output_len(), 9);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| (forward(&x, &w, &[0.5; 4], &s), input_grad(&w, &dy, &s), weight_grad(&x, &dy, &s)))
        };
        assert_eq!(run(1), run(3));
    }
}
