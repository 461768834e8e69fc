//! Bilinear resizing of NCHW `f32` planes and its gradient, computing exactly what flex computes.
//!
//! Why: flex maps every output pixel's coordinates through `f64` and `floor` inside its innermost
//! loop, which made the U-Net's four upsamplings (forward and backward) about a tenth of a
//! training step. Here each axis's source rows, columns and weights are computed once per call;
//! every output value and every gradient sum takes the same operations in the same order as
//! flex's, so results are identical bit for bit (tested).

#[cfg(x86_kernels)]
use super::isa::{self, Isa};
use super::output;

/// For one axis, per output coordinate: the two source indices and the weight of the second.
pub(crate) struct AxisMap {
    input: usize,
    low: Vec<usize>,
    high: Vec<usize>,
    weight: Vec<f32>,
}

impl AxisMap {
    /// Flex's mapping (align_corners: corner pixels coincide; otherwise half-pixel centres).
    pub(crate) fn new(input: usize, output: usize, align_corners: bool) -> Self {
        let ratio = if align_corners {
            (input as f64 - 1.0) / (output.max(1) - 1).max(1) as f64
        } else {
            input as f64 / output as f64
        };
        let (mut low, mut high, mut weight) = (Vec::new(), Vec::new(), Vec::new());
        for o in 0..output {
            let source = if align_corners {
                o as f64 * ratio
            } else {
                (o as f64 + 0.5) * ratio - 0.5
            };
            let l = source.floor().max(0.0) as usize;
            low.push(l);
            high.push((l + 1).min(input - 1));
            weight.push((source - l as f64).max(0.0) as f32);
        }
        Self { input, low, high, weight }
    }

    /// The same mapping as a row-major `[output, input]` matrix: row `o` holds `1 - w` at the
    /// low source and `w` at the high one (summed where the two coincide at the border).
    pub(crate) fn matrix(&self) -> Vec<f32> {
        let mut matrix = vec![0.0f32; self.low.len() * self.input];
        for (o, row) in matrix.chunks_mut(self.input).enumerate() {
            row[self.low[o]] += 1.0 - self.weight[o];
            row[self.high[o]] += self.weight[o];
        }
        matrix
    }
}

/// `[planes, in_h, in_w]` -> `[planes, out_h, out_w]`, `planes` = batch x channels.
pub fn forward(input: &[f32], planes: usize, in_size: [usize; 2], out_size: [usize; 2], align_corners: bool) -> Vec<f32> {
    let ([ih, iw], [oh, ow]) = (in_size, out_size);
    let (rows, cols) = (AxisMap::new(ih, oh, align_corners), AxisMap::new(iw, ow, align_corners));
    let one = 1.0f32;
    let (high_weight, low_weight): (&[f32], Vec<f32>) = (&cols.weight, cols.weight.iter().map(|&xw| one - xw).collect());
    output::written_by_chunks(planes * oh * ow, oh * ow, Vec::new, |spread, p, out| {
        let plane = &input[p * ih * iw..][..ih * iw];
        // Every source row read at the output columns' low, then high sources, once: output
        // rows then combine two of these with vector arithmetic instead of gathering.
        spread.resize(ih * 2 * ow, 0.0);
        for (row, spread_row) in plane.chunks(iw).zip(spread.chunks_mut(2 * ow)) {
            let (at_low, at_high) = spread_row.split_at_mut(ow);
            for (((value_low, value_high), &l), &h) in at_low.iter_mut().zip(at_high).zip(&cols.low).zip(&cols.high) {
                (*value_low, *value_high) = (row[l], row[h]);
            }
        }
        let (low_weight, high_weight) = (&low_weight[..ow], &high_weight[..ow]);
        for y in 0..oh {
            let (top, bottom) = (
                &spread[rows.low[y] * 2 * ow..][..2 * ow],
                &spread[rows.high[y] * 2 * ow..][..2 * ow],
            );
            let ((top_low, top_high), (bottom_low, bottom_high)) = (top.split_at(ow), bottom.split_at(ow));
            let (yw, one_minus_yw) = (rows.weight[y], one - rows.weight[y]);
            // `top[l] * (1 - xw) * (1 - yw) + top[h] * xw * (1 - yw) + bottom[l] * (1 - xw) * yw
            // + bottom[h] * xw * yw`, flex's operations in flex's order.
            out.from_fn(
                ow,
                #[inline(always)]
                |x| {
                    top_low[x] * low_weight[x] * one_minus_yw
                        + top_high[x] * high_weight[x] * one_minus_yw
                        + bottom_low[x] * low_weight[x] * yw
                        + bottom_high[x] * high_weight[x] * yw
                },
            );
        }
    })
}

/// The gradient with respect to the input, from the output's: each output pixel's gradient is
/// spread over its four sources, in raster order per plane, as flex does.
///
/// Flex adds `g * wx * wy` into one input value at a time, and neighbouring output pixels add
/// into the same values, so each addition waits for the one before it to go through memory.
/// With AVX-512 or AVX2 an output row is instead spread over each of its two source rows a
/// register of source values at a time (`ColumnSpread`), each value still receiving its terms in
/// flex's order (output rows in order, within a row the output columns in order), so the bits are
/// flex's. Other CPUs run flex's loop.
pub fn backward(output_grad: &[f32], planes: usize, in_size: [usize; 2], out_size: [usize; 2], align_corners: bool) -> Vec<f32> {
    let ([ih, iw], [oh, ow]) = (in_size, out_size);
    let (rows, cols) = (AxisMap::new(ih, oh, align_corners), AxisMap::new(iw, ow, align_corners));
    // Read once: the blocks are cut for the register width of the path that runs them.
    #[cfg(x86_kernels)]
    let spread = match isa::current() {
        Isa::Avx512 => ColumnSpread::new(&cols, Isa::Avx512),
        Isa::Avx2 => ColumnSpread::new(&cols, Isa::Avx2),
        Isa::Portable => None,
    };
    output::filled(planes * ih * iw, ih * iw, |p, plane| {
        let out = &output_grad[p * oh * ow..][..oh * ow];
        for (y, grad_row) in out.chunks(ow).enumerate() {
            let (top, bottom, yw, one) = (rows.low[y], rows.high[y], rows.weight[y], 1.0f32);
            #[cfg(x86_kernels)]
            if let Some(spread) = spread.as_ref().filter(|_| top != bottom) {
                // Two different source rows, so no value receives terms from both; each value's
                // terms from this row still go in column order. (Where both are the last row,
                // flex's order interleaves the two terms pixel by pixel, and so does the loop
                // below.)
                let (upper, lower) = plane.split_at_mut(bottom * iw);
                let rows = [&mut upper[top * iw..][..iw], &mut lower[..iw]];
                // SAFETY: `spread` is cut for a path the CPU has (`current`).
                unsafe { spread.rows(grad_row, rows, [one - yw, yw]) };
                continue;
            }
            let (top, bottom) = (top * iw, bottom * iw);
            for (x, &g) in grad_row.iter().enumerate() {
                let (l, h, xw) = (cols.low[x], cols.high[x], cols.weight[x]);
                plane[top + l] += g * (one - xw) * (one - yw);
                plane[top + h] += g * xw * (one - yw);
                plane[bottom + l] += g * (one - xw) * yw;
                plane[bottom + h] += g * xw * yw;
            }
        }
    })
}

/// For each input column, the output columns whose gradient it receives, in the order flex adds
/// them (output columns in order; the low term before the high one where both land on the same
/// column), with the weight of each, laid out for a register of neighbouring columns at a time.
///
/// A column receives from a short run of output columns (about four when upsampling by two), so
/// a register's worth of neighbouring columns (16 on AVX-512, 8 on AVX2) reads from about twice
/// as many neighbouring output values: the columns are cut into blocks of at most a register
/// whose sources lie in a window of two registers, which one permutation per term reads (two and
/// a blend on AVX2). A gather, tried first, was slower than flex's loop.
#[cfg(x86_kernels)]
struct ColumnSpread {
    /// The path the blocks are cut for.
    isa: Isa,
    columns: usize,
    /// Blocks of neighbouring columns: first column, how many, first output column of the
    /// window, and the most terms a column of the block receives.
    blocks: Vec<[usize; 4]>,
    /// How many terms each column receives.
    counts: Vec<i32>,
    /// `[slot][column]` (as many slots as the most terms any column receives): each term's
    /// output column, less its block's window start (0 past a column's count).
    window_index: Vec<i32>,
    /// `[slot][column]`: each term's column weight, `1 - xw` or `xw` (0 past the count).
    weights: Vec<f32>,
}

#[cfg(x86_kernels)]
impl ColumnSpread {
    /// The blocks for `isa`'s registers (AVX-512 or AVX2); None, and flex's loop spreads the
    /// row, where one column's sources span a whole window (large upsampling factors: a column
    /// receives from about twice the factor's output columns) or there would be more than twice
    /// as many blocks as whole registers (most lanes idle, so likely no faster than flex's loop).
    fn new(cols: &AxisMap, isa: Isa) -> Option<Self> {
        // Register lanes, and output values in a window (two registers).
        let lanes = if isa == Isa::Avx512 { 16 } else { 8 };
        let window_len = 2 * lanes;
        let (columns, one) = (cols.input, 1.0f32);
        let mut terms: Vec<Vec<(usize, f32)>> = vec![Vec::new(); columns];
        for (x, ((&l, &h), &xw)) in cols.low.iter().zip(&cols.high).zip(&cols.weight).enumerate() {
            terms[l].push((x, one - xw));
            terms[h].push((x, xw));
        }
        let slots = terms.iter().map(Vec::len).max().unwrap_or(0);
        // A column's sources, first and last (a column without terms spans nothing).
        let span = |ix: usize| terms[ix].first().map(|t| t.0).zip(terms[ix].last().map(|t| t.0));
        let mut blocks = Vec::new();
        let mut first = 0;
        while first < columns {
            let mut window: Option<[usize; 2]> = None;
            let mut len = 0;
            while first + len < columns && len < lanes {
                let widened = match (window, span(first + len)) {
                    (Some([lo, hi]), Some((a, b))) => [lo.min(a), hi.max(b)],
                    (None, Some((a, b))) => [a, b],
                    (window, None) => window.unwrap_or([0, 0]),
                };
                if widened[1] - widened[0] >= window_len {
                    break;
                }
                window = Some(widened);
                len += 1;
            }
            if len == 0 {
                return None;
            }
            let most = (first..first + len).map(|ix| terms[ix].len()).max().unwrap_or(0);
            blocks.push([first, len, window.map_or(0, |w| w[0]), most]);
            first += len;
        }
        if blocks.len() > 2 * columns.div_ceil(lanes) {
            return None;
        }
        let (mut window_index, mut weights) = (vec![0; slots * columns], vec![0.0; slots * columns]);
        for &[first, len, start, _] in &blocks {
            for ix in first..first + len {
                for (k, &(x, w)) in terms[ix].iter().enumerate() {
                    (window_index[k * columns + ix], weights[k * columns + ix]) = ((x - start) as i32, w);
                }
            }
        }
        let counts = terms.iter().map(|t| t.len() as i32).collect();
        Some(Self {
            isa,
            columns,
            blocks,
            counts,
            window_index,
            weights,
        })
    }

    /// `cells[ix] += grad_row[x] * w * wy` for each term `(x, w)` of each column `ix`, in order,
    /// for two source rows (`cells`) with their row weights (`wy`) at once, on the path the
    /// blocks were cut for.
    ///
    /// # Safety
    /// The CPU must have that path's instructions.
    unsafe fn rows(&self, grad_row: &[f32], cells: [&mut [f32]; 2], wy: [f32; 2]) {
        assert!(
            cells.iter().all(|row| row.len() == self.columns),
            "bilinear gradient: source rows of {} columns",
            self.columns
        );
        // SAFETY: the caller's.
        unsafe {
            match self.isa {
                Isa::Avx512 => self.rows_avx512(grad_row, cells, wy),
                _ => self.rows_avx2(grad_row, cells, wy),
            }
        }
    }

    /// `rows` with 8-lane registers (`rows` checked the lengths): a window is two registers, and
    /// a term's value is each register permuted, blended by which half its index names.
    #[target_feature(enable = "avx2")]
    unsafe fn rows_avx2(&self, grad_row: &[f32], mut cells: [&mut [f32]; 2], wy: [f32; 2]) {
        use std::arch::x86_64::*;
        let wy = wy.map(|w| _mm256_set1_ps(w));
        let lane_ids = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // Lanes `0..n` of a register, as a mask of all-ones lanes.
        let first_lanes = |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lane_ids);
        for &[first, len, start, most] in &self.blocks {
            let lanes = first_lanes(len);
            let in_row = |offset: usize| first_lanes(grad_row.len().saturating_sub(start + offset));
            // SAFETY (all loads and stores): each is masked to the lanes inside its slice (masked
            // lanes are neither read nor written): `len` columns from `first` (a block ends by
            // `columns`), and the window's values inside `grad_row`.
            unsafe {
                let window = grad_row.as_ptr().add(start.min(grad_row.len()));
                let (low_half, high_half) = (
                    _mm256_maskload_ps(window, in_row(0)),
                    _mm256_maskload_ps(window.wrapping_add(8), in_row(8)),
                );
                let counts = _mm256_maskload_epi32(self.counts.as_ptr().add(first), lanes);
                let mut sums = [0, 1].map(|r| _mm256_maskload_ps(cells[r].as_ptr().add(first), lanes));
                for k in 0..most {
                    let live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(counts, _mm256_set1_epi32(k as i32)));
                    let at = k * self.columns + first;
                    let index = _mm256_maskload_epi32(self.window_index.as_ptr().add(at), lanes);
                    let in_high_half = _mm256_castsi256_ps(_mm256_cmpgt_epi32(index, _mm256_set1_epi32(7)));
                    let g = _mm256_blendv_ps(
                        _mm256_permutevar8x32_ps(low_half, index),
                        _mm256_permutevar8x32_ps(high_half, index),
                        in_high_half,
                    );
                    let gw = _mm256_mul_ps(g, _mm256_maskload_ps(self.weights.as_ptr().add(at), lanes));
                    for (sum, wy) in sums.iter_mut().zip(wy) {
                        *sum = _mm256_blendv_ps(*sum, _mm256_add_ps(*sum, _mm256_mul_ps(gw, wy)), live);
                    }
                }
                for (row, sum) in cells.iter_mut().zip(sums) {
                    _mm256_maskstore_ps(row.as_mut_ptr().add(first), lanes, sum);
                }
            }
        }
    }

    /// `rows` a block of columns at a time, in 16-lane registers (`rows` checked the lengths). A
    /// lane whose column has fewer terms than the slot adds nothing.
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn rows_avx512(&self, grad_row: &[f32], mut cells: [&mut [f32]; 2], wy: [f32; 2]) {
        use std::arch::x86_64::*;
        let wy = wy.map(|w| _mm512_set1_ps(w));
        // Lanes `0..n` of a register.
        let first_lanes = |n: usize| -> __mmask16 {
            if n >= 16 {
                0xffff
            } else {
                (1u16 << n) - 1
            }
        };
        for &[first, len, start, most] in &self.blocks {
            let lanes = first_lanes(len);
            let in_row = |offset: usize| first_lanes(grad_row.len().saturating_sub(start + offset));
            // SAFETY (all loads and stores): each is masked to the lanes inside its slice: `len`
            // columns from `first` (a block ends by `columns`), and the window's values inside
            // `grad_row`; a permutation only moves values between registers.
            unsafe {
                let window = grad_row.as_ptr().add(start.min(grad_row.len()));
                let (low_half, high_half) = (
                    _mm512_maskz_loadu_ps(in_row(0), window),
                    _mm512_maskz_loadu_ps(in_row(16), window.wrapping_add(16)),
                );
                let counts = _mm512_maskz_loadu_epi32(lanes, self.counts.as_ptr().add(first));
                let mut sums = [0, 1].map(|r| _mm512_maskz_loadu_ps(lanes, cells[r].as_ptr().add(first)));
                for k in 0..most {
                    let live = _mm512_cmpgt_epi32_mask(counts, _mm512_set1_epi32(k as i32));
                    let at = k * self.columns + first;
                    let index = _mm512_maskz_loadu_epi32(lanes, self.window_index.as_ptr().add(at));
                    let g = _mm512_permutex2var_ps(low_half, index, high_half);
                    let gw = _mm512_mul_ps(g, _mm512_maskz_loadu_ps(lanes, self.weights.as_ptr().add(at)));
                    for (sum, wy) in sums.iter_mut().zip(wy) {
                        *sum = _mm512_mask_add_ps(*sum, live, *sum, _mm512_mul_ps(gw, wy));
                    }
                }
                for (row, sum) in cells.iter_mut().zip(sums) {
                    _mm512_mask_storeu_ps(row.as_mut_ptr().add(first), lanes, sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flex's gradient loop as it is, pixel by pixel.
    fn backward_by_pixels(output_grad: &[f32], planes: usize, [ih, iw]: [usize; 2], [oh, ow]: [usize; 2], align_corners: bool) -> Vec<f32> {
        let (rows, cols) = (AxisMap::new(ih, oh, align_corners), AxisMap::new(iw, ow, align_corners));
        let mut grad = vec![0.0f32; planes * ih * iw];
        for (plane, out) in grad.chunks_mut(ih * iw).zip(output_grad.chunks(oh * ow)) {
            for (y, grad_row) in out.chunks(ow).enumerate() {
                let (top, bottom, yw, one) = (rows.low[y] * iw, rows.high[y] * iw, rows.weight[y], 1.0f32);
                for (x, &g) in grad_row.iter().enumerate() {
                    let (l, h, xw) = (cols.low[x], cols.high[x], cols.weight[x]);
                    plane[top + l] += g * (one - xw) * (one - yw);
                    plane[top + h] += g * xw * (one - yw);
                    plane[bottom + l] += g * (one - xw) * yw;
                    plane[bottom + h] += g * xw * yw;
                }
            }
        }
        grad
    }

    /// The register spread runs for the U-Net's upsamplings (by two, corners aligned) on both
    /// SIMD paths, in blocks of most of a register; upsampling by 16 falls back to flex's loop.
    #[cfg(x86_kernels)]
    #[test]
    fn the_unets_upsamplings_take_the_register_spread() {
        for (isa, lanes) in [(Isa::Avx512, 16), (Isa::Avx2, 8)] {
            for input in [8, 16, 32, 64] {
                let spread = ColumnSpread::new(&AxisMap::new(input, 2 * input, true), isa).expect("a spread");
                assert!(spread.blocks.iter().map(|b| b[1]).sum::<usize>() == input);
                assert!(
                    spread.blocks.iter().all(|b| b[1] >= lanes - 2 || b[0] + b[1] == input),
                    "{isa:?}, {input}"
                );
            }
            assert!(ColumnSpread::new(&AxisMap::new(4, 64, true), isa).is_none(), "{isa:?}");
        }
    }

    /// On every instruction-set path, the gradient is flex's pixel-by-pixel loop bit for bit:
    /// upsampling by two (the U-Net's), odd sizes around the register widths, shrinking (where
    /// a column can receive nothing, or both terms of one pixel), single pixels, both corner
    /// conventions, with signed zeros, infinities and NaNs among the gradients (where a value
    /// becomes NaN it must on every path; a NaN's sign is not compared).
    #[test]
    fn the_gradient_is_flexs_loop_bit_for_bit_on_every_path() {
        let specials = [0.0, -0.0, 1.5, -2.25, 1e-30, f32::INFINITY, f32::NAN];
        let mut next = crate::xorshift32(0x2545_f491_u32);
        let sizes = [
            ([8, 8], [16, 16]),
            ([64, 64], [128, 128]),
            ([5, 7], [10, 14]),
            ([9, 17], [18, 34]),
            ([3, 33], [7, 65]),
            ([12, 40], [5, 19]),
            ([1, 1], [4, 4]),
            ([4, 24], [1, 1]),
            ([6, 31], [6, 31]),
            // Upsampling by 16 and by about 20: a column's sources span more than a window, and
            // flex's loop runs instead.
            ([4, 4], [64, 64]),
            ([2, 3], [40, 50]),
        ];
        for (in_size, out_size) in sizes {
            let planes = 3;
            let dy: Vec<f32> = (0..planes * out_size[0] * out_size[1])
                .map(|i| match next() % 16 {
                    0 => specials[i % specials.len()],
                    _ => (next() % 20001) as f32 / 1000.0 - 10.0,
                })
                .collect();
            for align_corners in [true, false] {
                let expected = backward_by_pixels(&dy, planes, in_size, out_size, align_corners);
                for isa in crate::isa::compared_in("bilinear resizing's gradient") {
                    let _forced = crate::isa::force(isa);
                    let got = backward(&dy, planes, in_size, out_size, align_corners);
                    // A NaN's sign and payload are not part of Rust's float semantics (the compiler
                    // may swap an addition's operands, and x86 keeps the first NaN), so NaNs
                    // compare as one value; every other value bit for bit.
                    let bits = |v: &[f32]| {
                        v.iter()
                            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        bits(&got),
                        bits(&expected),
                        "{in_size:?} -> {out_size:?}, align_corners {align_corners}, {isa:?}"
                    );
                }
            }
        }
    }
}
