//! The shape of a convolution and the zero-padded layout every pass reads: each image copied
//! once into planes whose rows share their padding (`padding` zeros, then the row), where every
//! kernel tap is a constant offset from the output position.

use std::mem::MaybeUninit;

use super::super::microkernel::{HALF_TILE, TILE};

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
    pub(super) fn positions(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Taps per output channel: `channels_in * kh * kw` (the sums' length).
    pub(super) fn patch_len(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    pub(super) fn input_len(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    pub(super) fn output_len(&self) -> usize {
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
    pub(super) fn lengths(&self) -> Option<[usize; 3]> {
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
    pub(super) fn padded_width(&self) -> usize {
        self.width + self.padding
    }

    pub(super) fn padded_plane(&self) -> usize {
        (self.height + 2 * self.padding) * self.padded_width()
    }

    /// Output positions per channel in the padded layout (`out_height` rows of `padded_width`),
    /// rounded up to whole half-tiles (the last tile of a channel may be a half one).
    pub(super) fn padded_positions(&self) -> usize {
        (self.out_height() * self.padded_width()).next_multiple_of(HALF_TILE)
    }

    /// Positions of the padded layout per forward band (the last band of an image may be
    /// shorter): `band_positions`, but at least a row's worth and at most the image. Bands are
    /// cut at whole half-tiles, not at row ends, so no position is computed twice (bands of whole
    /// rows rounded up to half-tiles computed 3 % of level 1's positions twice: 387 as 400).
    pub(super) fn forward_band(&self) -> usize {
        let row = self.padded_width().next_multiple_of(HALF_TILE);
        self.band_positions().max(row).min(self.padded_positions())
    }

    /// Whether the forward tiles take this shape's output row by row, in runs of `run` positions
    /// (`microkernel::run_positions`, or 8 where rows are not whole runs of AVX-512's 16), and
    /// write each run straight to its place: where every
    /// output row is whole runs and an image whole half-tiles. Then no junk column is computed,
    /// and no band is computed aside and copied out (at 8 x 8, 64 positions were 80 computed).
    pub(super) fn rows_in_runs(&self, run: usize) -> bool {
        self.out_width().is_multiple_of(run) && self.positions().is_multiple_of(HALF_TILE)
    }

    /// Output positions (row-major, no junk) per forward band when the tiles take rows in runs:
    /// `band_positions`, but at least a row's worth and at most the image.
    pub(super) fn row_band(&self) -> usize {
        let row = self.out_width().next_multiple_of(HALF_TILE);
        self.band_positions().max(row).min(self.positions())
    }

    /// Whether an image is its own padded copy as far as the tiles read it: a 1 x 1 kernel without
    /// padding (rows `width` apart, one plane after the other) over whole half-tiles of positions,
    /// so no read goes past the image's end. The U-Net's 1 x 1 convolutions (the decoder's
    /// channel reductions and the head) then read their input where it lies instead of copying
    /// it (at 128 x 128 the head's copy, 1 MiB an image, cost more than its 1 MFLOP).
    pub(super) fn reads_input_in_place(&self) -> bool {
        self.kernel == [1, 1] && self.padding == 0 && (self.height * self.width).is_multiple_of(HALF_TILE)
    }

    /// Where row `row` of input channel `channel` starts in an image's padded copy: below the
    /// plane's `padding` zero rows, after the row's `padding` leading zeros.
    pub(super) fn padded_row(&self, channel: usize, row: usize) -> usize {
        channel * self.padded_plane() + (row + self.padding) * self.padded_width() + self.padding
    }

    /// Length of one image's padded copy: the planes, then zeros for the last tile's reads.
    pub(super) fn padded_len(&self) -> usize {
        self.channels_in * self.padded_plane() + TILE + self.kernel[1]
    }

    /// For each tap `(ci, ky, kx)`, in that order: where its input lies relative to the output
    /// position in the padded layout.
    pub(super) fn tap_offsets(&self) -> Vec<usize> {
        let (kh, kw, pw) = (self.kernel[0], self.kernel[1], self.padded_width());
        (0..self.channels_in)
            .flat_map(|ci| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| ci * self.padded_plane() + ky * pw + kx)))
            .collect()
    }

    /// Output positions the forward pass aims to compute together, so that the padded input they
    /// read stays in the core's cache: about `BAND_BYTES` of input, a multiple of `TILE`, from
    /// the shape alone (`forward_band` and `row_band` make it at least a row's worth).
    pub(super) fn band_positions(&self) -> usize {
        let per_position = 4 * self.channels_in;
        let positions = (BAND_BYTES / per_position).saturating_sub(2 * self.padded_width());
        (positions / TILE * TILE).clamp(TILE, MAX_BAND)
    }
}

/// Padded input one forward band reads (about a quarter of a typical L2), and the most positions
/// `band_positions` gives (so a band's outputs, a block of channels a tile row, stay in L1).
const BAND_BYTES: usize = 256 * 1024;
pub(super) const MAX_BAND: usize = 512;

/// Rebuilds `padded` as one image's zero-padded copy: each channel with `shape.padding` rows of
/// zeros above and below and `shape.padding` zeros before each row (which also pad the row
/// before it on the right), rows `padded_width` apart, then zeros up to `shape.padded_len()`. One
/// sequential pass writes every value once, borders included, so a reused buffer needs no
/// zero-filling.
pub(super) fn pad_into(image: &[f32], shape: &ConvShape, padded: &mut Vec<f32>) {
    pad_parts_into(&[image], shape, padded);
}

/// `pad_into` for an image given as `parts`, each whole channel planes, the channels of all of
/// them in order (an image of two activations concatenated along the channels).
fn pad_parts_into(parts: &[&[f32]], shape: &ConvShape, padded: &mut Vec<f32>) {
    let (w, len) = (shape.width, shape.padded_len());
    let image_len: usize = parts.iter().map(|part| part.len()).sum();
    assert_eq!(image_len, shape.input_len(), "conv padding: expected one image");
    assert!(
        parts.iter().all(|part| part.len().is_multiple_of(shape.height * w)),
        "conv padding: a part of an image that is not whole channels"
    );
    padded.clear();
    padded.reserve(len);
    // Written into the spare capacity, each stretch of zeros and each row with one slice
    // operation (growing the vector value by value cost a capacity check a row, at 8 x 8 as
    // much as the copy).
    let slots = &mut padded.spare_capacity_mut()[..len];
    pad_frame(shape, slots);
    let planes = parts.iter().flat_map(|part| part.chunks(shape.height * w));
    for (channel, values) in planes.enumerate() {
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
pub(super) fn copy_row(dst: &mut [MaybeUninit<f32>], values: &[f32]) {
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

/// One image's padded copy in a buffer of its own.
pub(super) fn padded_image(image: &[f32], shape: &ConvShape) -> Vec<f32> {
    let mut padded = Vec::new();
    pad_into(image, shape, &mut padded);
    padded
}

/// What the tiles read for image `b` of `input`: the image itself where it is its own padded
/// copy (`reads_input_in_place`), else its padded copy, made in `padded`.
pub(super) fn padded_source<'a>(input: &'a [f32], b: usize, shape: &ConvShape, padded: &'a mut Vec<f32>) -> &'a [f32] {
    padded_source_of(ConvInput::One(input), b, shape, padded)
}

/// What a convolution reads: one activation, or two concatenated along the channel axis (a
/// decoder block's skip connection, then its upsampled input), each read where it lies: each
/// image's padded copy is made from both (always made for two parts, even where one input would
/// be read in place), and the concatenation is never written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConvInput<'a> {
    One(&'a [f32]),
    Cat([&'a [f32]; 2]),
}

impl ConvInput<'_> {
    /// Panics unless the input holds `shape`'s images (each part whole channel planes of them).
    pub(super) fn check(&self, shape: &ConvShape) {
        match *self {
            ConvInput::One(input) => check_lengths(shape, Some(input), None, None),
            ConvInput::Cat([first, second]) => {
                check_lengths(shape, None, None, None);
                // Whole channels of every image (no image at all: both parts empty).
                let channel = (shape.batch * shape.height * shape.width).max(1);
                assert!(
                    first.len().is_multiple_of(channel)
                        && second.len().is_multiple_of(channel)
                        && first.len() + second.len() == shape.batch * shape.input_len(),
                    "conv input: {} and {} values are not {} channels of {shape:?}",
                    first.len(),
                    second.len(),
                    shape.channels_in
                );
            }
        }
    }
}

/// `padded_source` for any `ConvInput`: a concatenation is always copied (its parts lie apart).
pub(super) fn padded_source_of<'a>(input: ConvInput<'a>, b: usize, shape: &ConvShape, padded: &'a mut Vec<f32>) -> &'a [f32] {
    match input {
        ConvInput::One(input) => {
            let image = image(input, b, shape.input_len());
            if shape.reads_input_in_place() {
                return image;
            }
            pad_into(image, shape, padded);
        }
        ConvInput::Cat(parts) => {
            let parts = parts.map(|part| image(part, b, part.len() / shape.batch));
            pad_parts_into(&parts, shape, padded);
        }
    }
    padded
}

/// The input and output-gradient slices of image `b`.
pub(super) fn image(data: &[f32], b: usize, len: usize) -> &[f32] {
    &data[b * len..][..len]
}

/// Writes the zeros of an image's padded copy into `slots` (the padding rows, each row's leading
/// zeros, the tail), leaving the image's rows, at `ConvShape::padded_row`, to the caller.
pub(super) fn pad_frame(shape: &ConvShape, slots: &mut [MaybeUninit<f32>]) {
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

/// Panics unless the given slices hold what `shape` says (an empty slice is not checked): the
/// micro-kernels read through raw pointers, so a short buffer must stop here rather than be read
/// past.
pub(super) fn check_lengths(shape: &ConvShape, input: Option<&[f32]>, weight: Option<&[f32]>, output_grad: Option<&[f32]>) {
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
