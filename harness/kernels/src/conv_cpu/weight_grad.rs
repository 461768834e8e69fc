//! The weight and bias gradients of a convolution: per image, the padded input and the output
//! gradient turned position-major, chained by the weight tile over the output's rows, the
//! images' sums added in image order.

use std::borrow::Cow;

use rayon::prelude::*;

#[cfg(x86_kernels)]
use super::super::isa::{self, Isa};
use super::super::microkernel::{self, BLOCK, LANES, WEIGHT_GROUPS, WEIGHT_TAPS};
use super::super::output;
use super::super::scratch::Scratch;
use super::layout::{check_lengths, image, padded_image, padded_source, ConvShape};

/// One image's output gradient laid out for the weight-gradient tile: position-major
/// (`[positions][channels_out rounded up to LANES]`), zeros in the extra channels. Built a row of
/// positions at a time: each row's block (`out_width x lanes` values) is zeroed and filled while
/// it sits in L1. The first channels' values, as many as `bias_lanes` has entries (all or none),
/// are also added into their running sums while they are in L1, as `image_bias_lanes` adds them.
fn transposed_output_into(dense: &[f32], shape: &ConvShape, dyt: &mut Vec<f32>, bias_lanes: &mut [[f32; LANES]]) {
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
        for (channel, lane_sums) in dense.chunks(positions).zip(bias_lanes.iter_mut()) {
            add_to_lanes(lane_sums, oy * ow, &channel[oy * ow..][..ow]);
        }
    }
}

/// Adds `values`, which start at position `first`, to the running sums `lanes`: position `p`'s
/// value to `lanes[p % LANES]`. Called with an image's positions in order, each lane's sum is the
/// chain `bias_grad` takes.
#[inline]
fn add_to_lanes(lanes: &mut [f32; LANES], first: usize, values: &[f32]) {
    if first.is_multiple_of(LANES) {
        let mut chunks = values.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (lane, value) in lanes.iter_mut().zip(chunk) {
                *lane += value;
            }
        }
        for (lane, value) in lanes.iter_mut().zip(chunks.remainder()) {
            *lane += value;
        }
    } else {
        for (p, value) in (first..).zip(values) {
            lanes[p % LANES] += value;
        }
    }
}

/// One image's bias-gradient running sums, channel by channel: its output gradient's values added
/// position by position, position `p` into lane `p % LANES` (the definition the fused sums of
/// `transposed_output_into` keep).
fn image_bias_lanes(dense: &[f32], shape: &ConvShape) -> Vec<[f32; LANES]> {
    dense
        .chunks(shape.positions())
        .map(|channel| {
            let mut lanes = [0.0; LANES];
            add_to_lanes(&mut lanes, 0, channel);
            lanes
        })
        .collect()
}

/// The bias gradient from each image's running sums (`[image][channel]`): per channel, each
/// image's lanes added first to last, the images' sums in image order.
fn bias_from_lanes(image_lanes: &[Vec<[f32; LANES]>], channels: usize) -> Vec<f32> {
    (0..channels)
        .map(|c| {
            let mut g = 0.0f32;
            for lanes in image_lanes {
                g += lanes[c].iter().sum::<f32>();
            }
            g
        })
        .collect()
}

/// `transposed_output_into` a buffer of its own (the tests' view of it).
#[cfg(test)]
pub(super) fn transposed_output(dense: &[f32], shape: &ConvShape) -> Vec<f32> {
    let mut dyt = Vec::new();
    transposed_output_into(dense, shape, &mut dyt, &mut []);
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
            let columns_of_block = super::super::transpose::transpose_8x8(rows);
            for (j, column) in columns_of_block.into_iter().enumerate() {
                unsafe { _mm256_storeu_ps(block[(x0 + j) * lanes + c0..][..8].as_mut_ptr(), column) };
            }
        }
    }
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
    weight_and_bias_grad(input, output_grad, shape, false).0
}

/// `weight_grad`, and with `with_bias` `bias_grad` too, its sums taken while the weight gradient
/// turns each image's output gradient around (the bias gradient's own pass read the whole output
/// gradient again: about 1 % of a training step). The same bits as `bias_grad`: each channel's
/// lanes are the same chains, added in the same order.
pub(crate) fn weight_and_bias_grad(input: &[f32], output_grad: &[f32], shape: &ConvShape, with_bias: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    check_lengths(shape, Some(input), None, Some(output_grad));
    let plan = WeightGradPlan::new(shape);
    let (taps, lanes) = (plan.taps, plan.lanes);
    // Tap groups, in whole tap blocks: enough tasks for every thread four times over.
    let blocks = taps.div_ceil(BLOCK);
    let tasks_wanted = 4 * rayon::current_num_threads();
    let by_image = taps * lanes < shape.padded_len() + shape.positions() * lanes;
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
    // Each image's bias-gradient running sums (`[channel]`), when asked for (else none).
    let bias_lanes_len = if with_bias { shape.channels_out } else { 0 };
    let mut image_lanes: Vec<Vec<[f32; LANES]>> = vec![vec![[0.0; LANES]; bias_lanes_len]; shape.batch];
    let prepared = (!whole_images).then(|| {
        let (prepared, lanes) = prepared_images(input, output_grad, shape, bias_lanes_len);
        image_lanes = lanes;
        prepared
    });
    let mut transposed = vec![0.0f32; taps * lanes];
    if by_image {
        // `[image][taps][lanes]`, each task's taps contiguous within its image.
        let mut image_sums = vec![0.0f32; shape.batch * taps * lanes];
        match &prepared {
            None => image_sums
                .par_chunks_mut(taps * lanes)
                .zip(image_lanes.par_iter_mut())
                .enumerate()
                .with_max_len(1)
                .for_each(|(b, (sums, bias_lanes))| {
                    let (mut padded, mut dyt) = (Scratch::take(), Scratch::take());
                    let src = padded_source(input, b, shape, &mut padded);
                    transposed_output_into(image(output_grad, b, shape.output_len()), shape, &mut dyt, bias_lanes);
                    plan.image_tap_sums(src, &dyt, &plan.offsets, sums);
                }),
            Some(PreparedImages { padded, transposed: dyt }) => {
                let tasks: Vec<(usize, &[usize], &mut [f32])> = image_sums
                    .chunks_mut(taps * lanes)
                    .enumerate()
                    .flat_map(|(b, image_sum)| {
                        let image_groups = image_sum.chunks_mut(group_taps * lanes).zip(plan.offsets.chunks(group_taps));
                        image_groups.map(move |(sums, tap_offsets)| (b, tap_offsets, sums))
                    })
                    .collect();
                tasks
                    .into_par_iter()
                    .with_max_len(1)
                    .for_each(|(b, tap_offsets, sums)| plan.image_tap_sums(&padded[b], &dyt[b], tap_offsets, sums));
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
        let PreparedImages { padded, transposed: dyt } = prepared.as_ref().expect("tasks of taps read prepared images");
        transposed
            .par_chunks_mut(group_taps * lanes)
            .zip(plan.offsets.par_chunks(group_taps))
            .with_max_len(1)
            .for_each(|(total, tap_offsets)| {
                for b in 0..shape.batch {
                    plan.image_tap_sums_added(&padded[b], &dyt[b], tap_offsets, total);
                }
            });
    }
    (
        plan.channels_first(&transposed),
        with_bias.then(|| bias_from_lanes(&image_lanes, shape.channels_out)),
    )
}

/// What every image's weight-gradient tiles share: the shape's counts, the taps' offsets in the
/// padded layout, and where the tiles' reads of an image's padded input end.
struct WeightGradPlan<'a> {
    shape: &'a ConvShape,
    taps: usize,
    /// Output channels rounded up to `LANES` (the transposed gradient's row length).
    lanes: usize,
    offsets: Vec<usize>,
    /// The last output row's last position plus the furthest tap.
    src_end: usize,
}

impl<'a> WeightGradPlan<'a> {
    fn new(shape: &'a ConvShape) -> Self {
        let offsets = shape.tap_offsets();
        let src_end = (shape.out_height() - 1) * shape.padded_width() + shape.out_width() + offsets.last().copied().unwrap_or(0);
        assert!(src_end <= shape.padded_len());
        assert!(!shape.reads_input_in_place() || src_end <= shape.input_len());
        Self {
            shape,
            taps: shape.patch_len(),
            lanes: shape.channels_out.next_multiple_of(LANES),
            offsets,
            src_end,
        }
    }

    /// `rows` whole output rows from where the tile's pointers start, as the tiles visit them.
    fn output_rows(&self, rows: usize) -> microkernel::Positions {
        microkernel::Positions {
            rows,
            row_len: self.shape.out_width(),
            src_row: self.shape.padded_width(),
        }
    }

    /// Panics unless `src` holds what the tiles read, `dy` is an image's transposed gradient and
    /// `sums` holds `taps` x `lanes`.
    fn check(&self, src: &[f32], dy: &[f32], taps: usize, sums: &[f32]) {
        assert!(src.len() >= self.src_end && dy.len() == self.shape.positions() * self.lanes && sums.len() == taps * self.lanes);
    }

    /// One image's sums for the taps at `tap_offsets`, into `sums` (`[taps][lanes]`, zeros), from
    /// its padded input `src` and transposed output gradient `dy`.
    fn image_tap_sums(&self, src: &[f32], dy: &[f32], tap_offsets: &[usize], sums: &mut [f32]) {
        self.check(src, dy, tap_offsets.len(), sums);
        let (lanes, oh, ow, pw) = (
            self.lanes,
            self.shape.out_height(),
            self.shape.out_width(),
            self.shape.padded_width(),
        );
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
                    // `(band_start + rows) * ow <= positions` and column `first + LANES groups <=
                    // lanes`; `sums` holds these taps x `lanes`.
                    unsafe {
                        microkernel::weight_tile(
                            channel_groups,
                            src.as_ptr().add(band_start * pw),
                            chunk_offsets,
                            dy.as_ptr().add(band_start * ow * lanes + first),
                            lanes,
                            self.output_rows(rows),
                            sums.as_mut_ptr().add(chunk * per_call * lanes + first),
                            lanes,
                        );
                    }
                }
            }
        }
    }

    /// One image's sums for the taps at `tap_offsets`, each added into `total` (`[taps][lanes]`)
    /// as soon as its chain is whole: a call's taps and channels chain over all the image's
    /// positions in registers, then go into `total`. A whole image's sums had been zeroed, filled
    /// and added in passes of their own, at 256 channels 2.4 MB an image streamed three times for
    /// 12 MFLOP of tiles. (The deep levels only: an image's positions are few.)
    fn image_tap_sums_added(&self, src: &[f32], dy: &[f32], tap_offsets: &[usize], total: &mut [f32]) {
        self.check(src, dy, tap_offsets.len(), total);
        let lanes = self.lanes;
        let mut call_sums = [0.0f32; WEIGHT_TAPS * WEIGHT_GROUPS * LANES];
        for first in (0..lanes).step_by(WEIGHT_GROUPS * LANES) {
            let channel_groups = ((lanes - first) / LANES).min(WEIGHT_GROUPS);
            let width = channel_groups * LANES;
            let per_call = microkernel::weight_taps(channel_groups);
            for (chunk, chunk_offsets) in tap_offsets.chunks(per_call).enumerate() {
                let sums = &mut call_sums[..chunk_offsets.len() * width];
                sums.fill(0.0);
                // SAFETY: reads of `src` end by `src_end` (checked), of `dy` at row `positions` and
                // column `first + width <= lanes`; `sums` holds these taps x `width`.
                unsafe {
                    microkernel::weight_tile(
                        channel_groups,
                        src.as_ptr(),
                        chunk_offsets,
                        dy.as_ptr().add(first),
                        lanes,
                        self.output_rows(self.shape.out_height()),
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
    }

    /// The sums `[taps][lanes]` turned to the weight gradient's `[c_out][taps]`, `LANES` output
    /// channels a task (one thread did this alone: 600 000 scattered writes at 256 channels).
    /// Where the CPU has AVX2, blocks of 8 taps x 8 channels are turned around in registers and
    /// stored a row of 8 taps at a time (value by value, each store went to another channel's
    /// row: a cache line written 4 bytes at a time).
    fn channels_first(&self, transposed: &[f32]) -> Vec<f32> {
        let (taps, lanes) = (self.taps, self.lanes);
        let mut grad = vec![0.0f32; self.shape.channels_out * taps];
        grad.par_chunks_mut(LANES * taps).enumerate().for_each(|(block, rows)| {
            let (first, channels) = (block * LANES, rows.len() / taps);
            #[cfg_attr(not(x86_kernels), allow(unused_mut))]
            let mut blocked_taps = 0;
            #[cfg(x86_kernels)]
            if channels == 8 && isa::current() >= Isa::Avx2 {
                blocked_taps = taps / 8 * 8;
                // SAFETY: `current` names AVX2 only where the CPU has it. Tap `k` is "channel" `k`
                // of the generic transpose, the block's channels its columns.
                unsafe { transpose_blocks_avx2(transposed, lanes, first, [blocked_taps, 8], rows, taps) };
            }
            for (k, row) in transposed.chunks(lanes).enumerate().skip(blocked_taps) {
                for (c, &value) in row[first..].iter().take(channels).enumerate() {
                    rows[c * taps + k] = value;
                }
            }
        });
        grad
    }
}

/// Every image's padded input (borrowed where the tiles read the input in place) and transposed
/// output gradient, made once for tasks that share an image.
struct PreparedImages<'a> {
    padded: Vec<Cow<'a, [f32]>>,
    transposed: Vec<Vec<f32>>,
}

/// The images prepared in parallel, and each image's bias-gradient running sums for its first
/// `bias_channels` channels (all or none), taken while its gradient is turned around.
fn prepared_images<'a>(
    input: &'a [f32],
    output_grad: &[f32],
    shape: &ConvShape,
    bias_channels: usize,
) -> (PreparedImages<'a>, Vec<Vec<[f32; LANES]>>) {
    let padded = match shape.reads_input_in_place() {
        true => (0..shape.batch)
            .map(|b| Cow::Borrowed(image(input, b, shape.input_len())))
            .collect(),
        false => (0..shape.batch)
            .into_par_iter()
            .with_max_len(output::leaf_len(shape.batch))
            .map(|b| Cow::Owned(padded_image(image(input, b, shape.input_len()), shape)))
            .collect(),
    };
    let (transposed, lanes) = (0..shape.batch)
        .into_par_iter()
        .with_max_len(output::leaf_len(shape.batch))
        .map(|b| {
            let (mut dyt, mut lanes) = (Vec::new(), vec![[0.0; LANES]; bias_channels]);
            transposed_output_into(image(output_grad, b, shape.output_len()), shape, &mut dyt, &mut lanes);
            (dyt, lanes)
        })
        .unzip();
    (PreparedImages { padded, transposed }, lanes)
}

/// `dL/dbias` (`[c_out]`): `dL/dy` summed over images and positions, each channel in `LANES`
/// running sums (positions `LANES` apart) added first to last per image, images in order.
pub(crate) fn bias_grad(output_grad: &[f32], shape: &ConvShape) -> Vec<f32> {
    check_lengths(shape, None, None, Some(output_grad));
    // Images in parallel, each one's channels' running sums, then added in image order.
    let image_lanes: Vec<Vec<[f32; LANES]>> = output_grad
        .par_chunks(shape.output_len())
        .with_max_len(1)
        .map(|image| image_bias_lanes(image, shape))
        .collect();
    bias_from_lanes(&image_lanes, shape.channels_out)
}
