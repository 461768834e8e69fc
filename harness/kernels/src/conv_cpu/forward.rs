//! The forward pass of a convolution, on the padded copy `layout` makes: weights packed for the
//! forward tile (`PackedConv`), run image by image in bands, each band's output rows written in
//! place (rows in runs) or through a band buffer, and passed through a finish while in cache.
//! The input gradient is a forward pass over the flipped, channel-swapped weights.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::super::isa;
use super::super::microkernel::{self, Run, HALF_TILE};
use super::super::output;
use super::super::scratch::Scratch;
use super::layout::{check_lengths, pad_frame, padded_source, padded_source_of, ConvInput, ConvShape};

/// What happens to a row of output channel `c` (or a part of one) once the convolution has
/// computed it: `(c, values)`, changing the values in place while they are in the core's cache.
pub trait RowFinish: Fn(usize, &mut [f32]) + Sync {}
impl<F: Fn(usize, &mut [f32]) + Sync> RowFinish for F {}

/// The plain convolution's finish: the row as computed.
fn as_computed(_channel: usize, _row: &mut [f32]) {}

/// The output channels of each forward block, `(first, count)`: as few blocks as `block` allows,
/// their sizes as even as they go (at most one apart). With AVX2's blocks of 6, 16 channels were
/// 6 + 6 + 4 and 32 were five blocks of 6 and one of 2, whose tiles hold 8 and 4 accumulators:
/// too few to cover the multiply-adds' latency. Now 6 + 5 + 5, and 6 + 6 + 5 + 5 + 5 + 5.
pub(super) fn channel_blocks(channels_out: usize, block: usize) -> Vec<(usize, usize)> {
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
    input: ConvInput,
    [(weight_a, bias_a, shape_a), (weight_b, bias_b, shape_b)]: [(&[f32], &[f32], &ConvShape); 2],
    between: &impl RowFinish,
    finish: &impl RowFinish,
) -> Vec<f32> {
    input.check(shape_a);
    check_lengths(shape_a, None, Some(weight_a), None);
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
            let src = padded_source_of(input, b, shape_a, padded_a);
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
        // The widest runs the rows are whole runs of (on AVX-512 rows of 8 go two to a register).
        let widest = microkernel::run_positions(isa);
        let run = [widest, HALF_TILE / 2]
            .into_iter()
            .find(|&run| shape.rows_in_runs(run))
            .unwrap_or(widest);
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
                for tile_runs in even_tiles(runs, self.run, self.tile) {
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

/// A band's `runs` (of `run` positions) as tiles of at most `tile` positions, whole half-tiles
/// each, as few tiles as that allows and their sizes as even as they go. Taken front to back in
/// tiles of the most, an 8 x 8 image's 64 positions were a tile of 48 and one of 16 on AVX-512,
/// whose 8 accumulators (a third of the tile's 24) could not keep the multiply-adds busy: the
/// level ran at 0.72 of the FMA peak where the larger ones ran at 0.85. Now two tiles of 32.
/// Which tile computes a position changes no bit of it.
pub(super) fn even_tiles(runs: &[Run], run: usize, tile: usize) -> impl Iterator<Item = &[Run]> {
    let runs_per_half = HALF_TILE / run;
    debug_assert!(runs.len().is_multiple_of(runs_per_half), "a band of whole half-tiles");
    let halves = runs.len() / runs_per_half;
    let tiles = halves.div_ceil(tile / HALF_TILE);
    let (base, larger) = (halves / tiles.max(1), halves % tiles.max(1));
    let mut rest = runs;
    (0..tiles).map(move |index| {
        let (this, after) = rest.split_at((base + usize::from(index < larger)) * runs_per_half);
        rest = after;
        this
    })
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
