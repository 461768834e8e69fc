//! 2 x 2 max pooling with stride 2 (the U-Net's only pooling), forward and gradient, bit for bit
//! flex's values: the first largest value of each window wins, a NaN wins over numbers (the last
//! NaN of a window, as in PyTorch), and the gradient goes to the winner as `0 + dy`.
//!
//! Why: flex's generic pooling computes bounds and indices per window and keeps an `i64` index
//! tensor for the gradient; here a window is four reads, and the gradient recomputes the winner
//! from the saved input instead of storing indices.

use super::elementwise;
#[cfg(x86_kernels)]
use super::isa::{self, Isa};
use super::output;

/// The value flex's pooling picks from a window read in the order `(0,0), (0,1), (1,0), (1,1)`,
/// and which of the four it is: written as selects, so that a row of windows vectorizes.
#[inline(always)]
fn pick(values: [f32; 4]) -> (f32, u32) {
    let (mut best, mut index) = (values[0], 0);
    for (i, &v) in values.iter().enumerate().skip(1) {
        let take = v > best || v.is_nan();
        best = if take { v } else { best };
        index = if take { i as u32 } else { index };
    }
    (best, index)
}

/// One row of outputs from the two input rows under it.
#[inline(always)]
fn pool_row(top: &[f32], bottom: &[f32], out: &mut [f32]) {
    for ((o, t), b) in out.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
        *o = pick([t[0], t[1], b[0], b[1]]).0;
    }
}

/// The gradient of one row of outputs, written into the two input rows under it: `0 + dy` at
/// each window's winner, zero elsewhere. Windows in blocks of eight on AVX2 (the compiler leaves
/// this interleaved loop scalar, about 2.5 % of a training step), the rest here.
#[inline(always)]
fn unpool_row(top: &[f32], bottom: &[f32], dy: &[f32], grad_top: &mut [f32], grad_bottom: &mut [f32]) {
    let windows = dy.len();
    assert!(top.len() >= 2 * windows && bottom.len() >= 2 * windows, "max pool rows");
    assert!(
        grad_top.len() >= 2 * windows && grad_bottom.len() >= 2 * windows,
        "max pool gradient rows"
    );
    #[cfg_attr(not(x86_kernels), allow(unused_mut))]
    let mut done = 0;
    #[cfg(x86_kernels)]
    if isa::current() >= Isa::Avx2 {
        done = windows / 8 * 8;
        // SAFETY: `current` names AVX2 only where the CPU has it; the rows hold `2 * windows`
        // values (checked above).
        unsafe { unpool_blocks_avx2(top, bottom, dy, grad_top, grad_bottom, done / 8) };
    }
    unpool_plain(
        &top[2 * done..],
        &bottom[2 * done..],
        &dy[done..],
        &mut grad_top[2 * done..],
        &mut grad_bottom[2 * done..],
    );
}

/// `unpool_row`'s definition, window by window.
#[inline(always)]
fn unpool_plain(top: &[f32], bottom: &[f32], dy: &[f32], grad_top: &mut [f32], grad_bottom: &mut [f32]) {
    let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2)).zip(dy);
    for (((t, b), &g), (gt, gb)) in windows.zip(grad_top.chunks_exact_mut(2).zip(grad_bottom.chunks_exact_mut(2))) {
        let (_, winner) = pick([t[0], t[1], b[0], b[1]]);
        let pass = 0.0 + g;
        let at = |k: u32| if winner == k { pass } else { 0.0 };
        (gt[0], gt[1], gb[0], gb[1]) = (at(0), at(1), at(2), at(3));
    }
}

/// The first `blocks` x 8 windows of `unpool_plain`, eight windows per step: the even and odd
/// columns of sixteen are pulled apart into two registers (windows in the lane order 0, 1, 4, 5 |
/// 2, 3, 6, 7, the output gradient permuted to match), `pick`'s comparisons run lane-wise, and
/// unpacking the four results puts every column back in place. The same comparisons and the
/// same `0 + dy`, so the same bits.
///
/// # Safety
/// The CPU must have AVX2; the rows must hold `16 * blocks` values and `dy` `8 * blocks`.
#[cfg(x86_kernels)]
#[target_feature(enable = "avx2")]
unsafe fn unpool_blocks_avx2(top: &[f32], bottom: &[f32], dy: &[f32], grad_top: &mut [f32], grad_bottom: &mut [f32], blocks: usize) {
    use std::arch::x86_64::*;
    debug_assert!(top.len().min(bottom.len()).min(grad_top.len()).min(grad_bottom.len()) >= 16 * blocks && dy.len() >= 8 * blocks);
    // `v > best || v is NaN`, as `pick` takes a value.
    let takes = |v: __m256, best: __m256| _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, best), _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    for k in 0..blocks {
        // SAFETY: every access is inside the first `16 * blocks` (rows) or `8 * blocks` (`dy`)
        // values, which the caller guarantees.
        unsafe {
            let at = |row: &[f32], i: usize| _mm256_loadu_ps(row.as_ptr().add(16 * k + i));
            let (t_lo, t_hi, b_lo, b_hi) = (at(top, 0), at(top, 8), at(bottom, 0), at(bottom, 8));
            let v0 = _mm256_shuffle_ps::<0x88>(t_lo, t_hi);
            let v1 = _mm256_shuffle_ps::<0xDD>(t_lo, t_hi);
            let v2 = _mm256_shuffle_ps::<0x88>(b_lo, b_hi);
            let v3 = _mm256_shuffle_ps::<0xDD>(b_lo, b_hi);
            let g = _mm256_loadu_ps(dy.as_ptr().add(8 * k));
            let g = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(g)));
            let take1 = takes(v1, v0);
            let best = _mm256_blendv_ps(v0, v1, take1);
            let take2 = takes(v2, best);
            let best = _mm256_blendv_ps(best, v2, take2);
            let take3 = takes(v3, best);
            let pass = _mm256_add_ps(_mm256_setzero_ps(), g);
            let later = _mm256_or_ps(take2, take3);
            let g3 = _mm256_and_ps(take3, pass);
            let g2 = _mm256_and_ps(_mm256_andnot_ps(take3, take2), pass);
            let g1 = _mm256_and_ps(_mm256_andnot_ps(later, take1), pass);
            let g0 = _mm256_andnot_ps(_mm256_or_ps(later, take1), pass);
            let put = |row: &mut [f32], i: usize, v: __m256| _mm256_storeu_ps(row.as_mut_ptr().add(16 * k + i), v);
            put(grad_top, 0, _mm256_unpacklo_ps(g0, g1));
            put(grad_top, 8, _mm256_unpackhi_ps(g0, g1));
            put(grad_bottom, 0, _mm256_unpacklo_ps(g2, g3));
            put(grad_bottom, 8, _mm256_unpackhi_ps(g2, g3));
        }
    }
}

/// `[planes, h, w]` -> `[planes, h / 2, w / 2]` (odd sizes drop the last row or column).
pub fn forward(x: &[f32], planes: usize, [h, w]: [usize; 2]) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w, "max pool input");
    let (oh, ow) = (h / 2, w / 2);
    output::filled(planes * oh * ow, oh * ow, |p, out| {
        let plane = &x[p * h * w..][..h * w];
        elementwise::vectorized(|| {
            for (row, pair) in out.chunks_mut(ow).zip(plane.chunks(2 * w)) {
                pool_row(&pair[..2 * ow], &pair[w..w + 2 * ow], row);
            }
        })
    })
}

/// The gradient with respect to `x` (`[planes, h, w]`) from the output's gradient.
pub fn backward(x: &[f32], output_grad: &[f32], planes: usize, [h, w]: [usize; 2]) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w, "max pool input");
    assert_eq!(output_grad.len(), planes * oh * ow, "max pool output gradient");
    if oh * ow == 0 {
        return vec![0.0f32; planes * h * w];
    }
    output::filled(planes * h * w, h * w, |p, grad| {
        let (plane, dy) = (&x[p * h * w..][..h * w], &output_grad[p * oh * ow..][..oh * ow]);
        elementwise::vectorized(|| {
            for ((grad_pair, pair), dy) in grad.chunks_mut(2 * w).zip(plane.chunks(2 * w)).zip(dy.chunks(ow)) {
                // An odd height leaves a last, partial chunk: no output row reads it.
                if grad_pair.len() < 2 * w {
                    break;
                }
                let (grad_top, grad_bottom) = grad_pair.split_at_mut(w);
                let (top, bottom) = (&pair[..2 * ow], &pair[w..w + 2 * ow]);
                unpool_row(top, bottom, dy, &mut grad_top[..2 * ow], &mut grad_bottom[..2 * ow]);
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction-set path against the window-by-window definition, bit for bit: widths
    /// around the eight-window blocks, with ties, NaNs, infinities and signed zeros in every
    /// position of a window, and gradients of either sign and zero.
    #[test]
    fn unpooling_is_bitwise_its_definition_on_every_path() {
        let specials = [0.0, -0.0, 1.0, 1.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.5];
        let mut next = crate::xorshift32(0x9e37_79b9_u32);
        for windows in [0, 1, 7, 8, 9, 15, 16, 17, 33] {
            let values = |next: &mut dyn FnMut() -> u32, n: usize| -> Vec<f32> {
                (0..n).map(|_| specials[next() as usize % specials.len()]).collect()
            };
            let (top, bottom) = (values(&mut next, 2 * windows), values(&mut next, 2 * windows));
            let dy: Vec<f32> = values(&mut next, windows);
            let mut expected = (vec![f32::NAN; 2 * windows], vec![f32::NAN; 2 * windows]);
            unpool_plain(&top, &bottom, &dy, &mut expected.0, &mut expected.1);
            for isa in crate::isa::compared_in("max pool's gradient") {
                let _forced = crate::isa::force(isa);
                let mut got = (vec![f32::NAN; 2 * windows], vec![f32::NAN; 2 * windows]);
                unpool_row(&top, &bottom, &dy, &mut got.0, &mut got.1);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.0), bits(&expected.0), "top row, {windows} windows, {isa:?}");
                assert_eq!(bits(&got.1), bits(&expected.1), "bottom row, {windows} windows, {isa:?}");
            }
        }
    }
}
