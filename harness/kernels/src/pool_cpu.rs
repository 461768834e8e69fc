//! 2 x 2 max pooling with stride 2 (the U-Net's only pooling), forward and gradient, bit for bit
//! flex's values: the first largest value of each window wins, a NaN wins over numbers (the last
//! NaN of a window, as in PyTorch), and the gradient goes to the winner as `0 + dy`.
//!
//! Why: flex's generic pooling computes bounds and indices per window and keeps an `i64` index
//! tensor for the gradient; here a window is four reads, and the gradient recomputes the winner
//! from the saved input instead of storing indices.

use super::output;

use super::elementwise;

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
/// each window's winner, zero elsewhere.
#[inline(always)]
fn unpool_row(top: &[f32], bottom: &[f32], dy: &[f32], grad_top: &mut [f32], grad_bottom: &mut [f32]) {
    let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2)).zip(dy);
    for (((t, b), &g), (gt, gb)) in windows.zip(grad_top.chunks_exact_mut(2).zip(grad_bottom.chunks_exact_mut(2))) {
        let (_, winner) = pick([t[0], t[1], b[0], b[1]]);
        let pass = 0.0 + g;
        let at = |k: u32| if winner == k { pass } else { 0.0 };
        (gt[0], gt[1], gb[0], gb[1]) = (at(0), at(1), at(2), at(3));
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
