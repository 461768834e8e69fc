//! The U-Net's convolutions on the CPU as matrix products over an im2col buffer, forward and both
//! gradients, on plain `f32` slices in NCHW order.
//!
//! Why not burn's generic path: flex runs the input gradient as a transposed convolution and the
//! weight gradient as a convolution whose kernel is the whole output image, at a fraction of the
//! machine's GEMM rate. Here all three are GEMMs of the shapes a textbook gives (`W · col`,
//! `Wᵀ · dY` then col2im, `dY · colᵀ`), run by the `gemm` crate flex itself links.
//!
//! Only what the U-Net needs is covered: stride 1, dilation 1, one group, the same padding on all
//! four sides. Work is split across images, never inside one sum, and per-image weight gradients
//! are added in image order, so a result does not depend on how many threads ran it.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

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

    /// Output positions per image (the GEMM's `n`).
    fn positions(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Rows of the im2col matrix (the GEMM's inner dimension for the forward pass).
    fn patch_len(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    fn input_len(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    fn output_len(&self) -> usize {
        self.channels_out * self.positions()
    }

    /// A 1x1 kernel without padding reads the image itself as its im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.padding == 0
    }

    /// Whether this shape is one the kernels compute: a square kernel no larger than the padded
    /// input, padded by less than its size (so the input gradient is a convolution too).
    pub fn is_valid(&self) -> bool {
        self.kernel[0] >= 1
            && self.kernel[0] == self.kernel[1]
            && self.padding < self.kernel[0]
            && self.height + 2 * self.padding >= self.kernel[0]
            && self.width + 2 * self.padding >= self.kernel[1]
    }

    /// For kernel column `kx`: the output columns whose input column lies inside the image.
    fn valid_columns(&self, kx: usize) -> std::ops::Range<usize> {
        let ow = self.out_width();
        let start = self.padding.saturating_sub(kx).min(ow);
        let end = (self.width + self.padding).saturating_sub(kx).min(ow);
        start..end.max(start)
    }

    /// For kernel row `ky` and output row `oy`: the input row, if it lies inside the image.
    fn input_row(&self, ky: usize, oy: usize) -> Option<usize> {
        (oy + ky).checked_sub(self.padding).filter(|&iy| iy < self.height)
    }
}

/// A band of output rows, `rows.start..rows.end`: the unit im2col works in, sized so its patch
/// matrix stays in the core's cache (building a whole 128 x 128 image's matrix first and letting
/// the GEMM stream it from memory ran the top layers at a third of the GEMM rate).
#[derive(Debug, Clone)]
struct Band {
    rows: std::ops::Range<usize>,
}

impl Band {
    /// Output positions in the band (columns of its patch matrix).
    fn len(&self, shape: &ConvShape) -> usize {
        self.rows.len() * shape.out_width()
    }

    /// Index of the band's first output position within the image.
    fn first_position(&self, shape: &ConvShape) -> usize {
        self.rows.start * shape.out_width()
    }
}

/// Patch-matrix bytes a band aims for (about half a typical L2), and the fewest positions a band
/// holds so the GEMM keeps a useful width. A band also holds at most `MAX_REDUCTION` positions
/// when rows allow, since the weight gradient sums over a band's positions. All of it depends on
/// the shape alone, never on the machine or the threads.
const BAND_BYTES: usize = 512 * 1024;
const MIN_BAND_POSITIONS: usize = 256;

/// The row bands covering an image's output for `shape`.
fn bands(shape: &ConvShape) -> Vec<Band> {
    let (oh, ow) = (shape.out_height(), shape.out_width());
    let by_cache = (BAND_BYTES / (4 * shape.patch_len() * ow).max(1)).min(MAX_REDUCTION / ow);
    let rows = by_cache.max(MIN_BAND_POSITIONS.div_ceil(ow)).clamp(1, oh);
    (0..oh)
        .step_by(rows)
        .map(|start| Band {
            rows: start..(start + rows).min(oh),
        })
        .collect()
}

/// Fills `col` (`patch_len` rows of `band.len()` values) with one image's patches for `band`.
fn im2col(image: &[f32], shape: &ConvShape, band: &Band, col: &mut [f32]) {
    let (kh, kw) = (shape.kernel[0], shape.kernel[1]);
    let (ow, n) = (shape.out_width(), band.len(shape));
    let plane = shape.height * shape.width;
    for ci in 0..shape.channels_in {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut col[((ci * kh + ky) * kw + kx) * n..][..n];
                let columns = shape.valid_columns(kx);
                for (out, oy) in row.chunks_mut(ow).zip(band.rows.clone()) {
                    match shape.input_row(ky, oy) {
                        Some(iy) if !columns.is_empty() => {
                            let first = ci * plane + iy * shape.width + columns.start + kx - shape.padding;
                            out[..columns.start].fill(0.0);
                            out[columns.clone()].copy_from_slice(&image[first..][..columns.len()]);
                            out[columns.end..].fill(0.0);
                        }
                        // A kernel column that sees only padding on an image this narrow.
                        Some(_) => out.fill(0.0),
                        None => out.fill(0.0),
                    }
                }
            }
        }
    }
}

/// A row-major matrix view for the `gemm` call: pointer, rows, columns, row and column strides.
#[derive(Clone, Copy)]
struct Matrix {
    ptr: *const f32,
    row_stride: isize,
    col_stride: isize,
}

impl Matrix {
    fn rows(data: &[f32], columns: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            row_stride: columns as isize,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// The longest sum one `gemm` call is given. `gemm` splits longer sums into blocks sized from the
/// L1 cache it detects (never below 512), which would make results depend on the machine; sums
/// split here, at boundaries set by their length alone, do not.
const MAX_REDUCTION: usize = 512;

/// `dst (m x n, rows `dst_row_stride` apart) = [dst +] lhs (m x k) · rhs (k x n)`,
/// single-threaded: callers split work across images, which keeps every sum's order fixed.
#[allow(clippy::too_many_arguments)]
fn matmul(dst: &mut [f32], dst_row_stride: usize, m: usize, n: usize, k: usize, lhs: Matrix, rhs: Matrix, accumulate: bool) {
    assert!(m == 0 || dst.len() >= (m - 1) * dst_row_stride + n, "gemm destination too small");
    let parts = k.div_ceil(MAX_REDUCTION).max(1);
    let part_len = k.div_ceil(parts);
    for part in 0..parts {
        let start = part * part_len;
        let len = part_len.min(k - start);
        // SAFETY: `dst` holds the m x n values at the strides given (checked above); the callers
        // build `lhs` and `rhs` over slices that hold m x k and k x n values at their strides, this
        // part reads columns `start..start + len` of `lhs` and the same rows of `rhs`, and nothing
        // else aliases `dst`.
        unsafe {
            gemm(
                m,
                n,
                len,
                dst.as_mut_ptr(),
                1,
                dst_row_stride as isize,
                accumulate || part > 0,
                lhs.ptr.offset(start as isize * lhs.col_stride),
                lhs.col_stride,
                lhs.row_stride,
                rhs.ptr.offset(start as isize * rhs.row_stride),
                rhs.col_stride,
                rhs.row_stride,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
}

/// The patch matrix of one band of `image`: the image itself for a pointwise kernel (its rows
/// are channels, `row_stride` apart), else built in `scratch`.
fn patches(image: &[f32], shape: &ConvShape, band: &Band, scratch: &mut Vec<f32>) -> Matrix {
    if shape.is_pointwise() {
        return Matrix {
            ptr: image[band.first_position(shape)..].as_ptr(),
            row_stride: shape.positions() as isize,
            col_stride: 1,
        };
    }
    scratch.resize(shape.patch_len() * band.len(shape), 0.0);
    im2col(image, shape, band, scratch);
    Matrix::rows(scratch, band.len(shape))
}

/// The input and output-gradient slices of image `b`.
fn image(data: &[f32], b: usize, len: usize) -> &[f32] {
    &data[b * len..][..len]
}

/// `y = conv(x, weight) + bias`: `x` is `[batch, c_in, h, w]`, `weight` `[c_out, c_in, kh, kw]`,
/// `bias` `[c_out]`; returns `[batch, c_out, out_h, out_w]`.
pub fn forward(input: &[f32], weight: &[f32], bias: &[f32], shape: &ConvShape) -> Vec<f32> {
    let (n, k) = (shape.positions(), shape.patch_len());
    check_lengths(shape, input, weight, None);
    assert_eq!(bias.len(), shape.channels_out, "conv bias: expected {} values", shape.channels_out);
    let bands = bands(shape);
    let mut output = vec![0.0f32; shape.batch * shape.output_len()];
    output
        .par_chunks_mut(shape.output_len())
        .enumerate()
        .for_each_init(Vec::new, |scratch, (b, out)| {
            for (row, value) in out.chunks_mut(n).zip(bias) {
                row.fill(*value);
            }
            let x = image(input, b, shape.input_len());
            for band in &bands {
                let col = patches(x, shape, band, scratch);
                let dst = &mut out[band.first_position(shape)..];
                matmul(dst, n, shape.channels_out, band.len(shape), k, Matrix::rows(weight, k), col, true);
            }
        });
    output
}

/// `dL/dx` from `dL/dy` (`[batch, c_out, out_h, out_w]`): the "full" convolution of `dL/dy` with
/// the kernel flipped in space and its channel axes swapped, padded by `k - 1 - padding`. Written
/// as a forward convolution it gets the forward pass's GEMM shape (`c_in x 9 c_out` by the
/// positions); `Wᵀ · dY` then col2im would reduce over only `c_out` values per GEMM, which runs the
/// 16-channel layers far below the GEMM rate.
pub fn input_grad(weight: &[f32], output_grad: &[f32], shape: &ConvShape) -> Vec<f32> {
    let (kh, kw) = (shape.kernel[0], shape.kernel[1]);
    check_lengths(shape, &[], weight, Some(output_grad));
    let (ci_n, co_n) = (shape.channels_in, shape.channels_out);
    let mut flipped = vec![0.0f32; weight.len()];
    for co in 0..co_n {
        for ci in 0..ci_n {
            for ky in 0..kh {
                for kx in 0..kw {
                    flipped[((ci * co_n + co) * kh + kh - 1 - ky) * kw + kw - 1 - kx] = weight[((co * ci_n + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
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

/// `dL/dW` (`[c_out, c_in, kh, kw]`): `dY · colᵀ` per band, per image, summed over images in
/// order.
pub fn weight_grad(input: &[f32], output_grad: &[f32], shape: &ConvShape) -> Vec<f32> {
    let (n, k) = (shape.positions(), shape.patch_len());
    check_lengths(shape, input, &[], Some(output_grad));
    let bands = bands(shape);
    let per_image = shape.channels_out * k;
    let mut partial = vec![0.0f32; shape.batch * per_image];
    partial
        .par_chunks_mut(per_image)
        .enumerate()
        .for_each_init(Vec::new, |scratch, (b, image_part)| {
            let (x, dy) = (image(input, b, shape.input_len()), image(output_grad, b, shape.output_len()));
            for (i, band) in bands.iter().enumerate() {
                let columns = band.len(shape);
                let col_t = patches(x, shape, band, scratch).t();
                let lhs = Matrix {
                    ptr: dy[band.first_position(shape)..].as_ptr(),
                    row_stride: n as isize,
                    col_stride: 1,
                };
                matmul(image_part, k, shape.channels_out, k, columns, lhs, col_t, i > 0);
            }
        });
    sum_in_order(partial, per_image)
}

/// Panics unless the given slices hold what `shape` says (an empty slice is not checked): the GEMM
/// reads through raw pointers, so a short buffer must stop here rather than be read past.
fn check_lengths(shape: &ConvShape, input: &[f32], weight: &[f32], output_grad: Option<&[f32]>) {
    let check = |what: &str, data: &[f32], expected: usize| {
        assert!(
            data.is_empty() || data.len() == expected,
            "conv {what}: {} values for shape {shape:?}, expected {expected}",
            data.len()
        );
    };
    check("input", input, shape.batch * shape.input_len());
    check("weight", weight, shape.channels_out * shape.patch_len());
    if let Some(dy) = output_grad {
        assert_eq!(
            dy.len(),
            shape.batch * shape.output_len(),
            "conv output gradient for shape {shape:?}"
        );
    }
}

/// `dL/dbias` (`[c_out]`): `dL/dy` summed over images and positions, in a fixed order.
pub fn bias_grad(output_grad: &[f32], shape: &ConvShape) -> Vec<f32> {
    let n = shape.positions();
    let mut grad = vec![0.0f32; shape.channels_out];
    for image in output_grad.chunks(shape.output_len()) {
        for (g, row) in grad.iter_mut().zip(image.chunks(n)) {
            *g += row.iter().sum::<f32>();
        }
    }
    grad
}

/// Adds consecutive `len`-long blocks of `blocks` together, first to last.
fn sum_in_order(mut blocks: Vec<f32>, len: usize) -> Vec<f32> {
    let (first, rest) = blocks.split_at_mut(len);
    for block in rest.chunks(len) {
        for (a, b) in first.iter_mut().zip(block) {
            *a += b;
        }
    }
    blocks.truncate(len);
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bands_cover_every_output_row_once() {
        for s in shapes() {
            let rows: Vec<usize> = bands(&s).iter().flat_map(|b| b.rows.clone()).collect();
            assert_eq!(rows, (0..s.out_height()).collect::<Vec<_>>(), "{s:?}");
        }
        assert_eq!(bands(&shapes()[4]).len(), 3);
    }

    fn shapes() -> Vec<ConvShape> {
        let shape = |batch, channels_in, channels_out, height, width, kernel, padding| ConvShape {
            batch,
            channels_in,
            channels_out,
            height,
            width,
            kernel,
            padding,
        };
        vec![
            shape(2, 3, 4, 5, 7, [3, 3], 1),
            shape(3, 2, 5, 4, 4, [1, 1], 0),
            shape(1, 2, 3, 6, 5, [3, 3], 0),
            shape(2, 1, 2, 3, 4, [5, 5], 2),
            // Wide enough for several row bands, the last one partial; 576-long sums, split in two.
            shape(2, 64, 2, 10, 64, [3, 3], 1),
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
