//! 2 x 2 max pooling with stride 2 (the U-Net's only pooling), forward and gradient, bit for bit
//! flex's values: the first largest value of each window wins, a NaN wins over numbers (the last
//! NaN of a window, as in PyTorch), and the gradient goes to the winner as `0 + dy`.
//!
//! Why: flex's generic pooling computes bounds and indices per window and keeps an `i64` index
//! tensor for the gradient; here a window is four reads, and the gradient recomputes the winner
//! from the saved input instead of storing indices.

use rayon::prelude::*;

use super::elementwise;

/// Which of a window's four values `(0,0), (0,1), (1,0), (1,1)` flex's pooling picks.
fn winner(values: [f32; 4]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] || v.is_nan() {
            best = i;
        }
    }
    best
}

/// `best` or, where flex's rule prefers it, the next value `v` of the window: what `winner`
/// picks, written as selects so that a row of windows vectorizes.
#[inline(always)]
fn prefer(best: f32, v: f32) -> f32 {
    if v > best || v.is_nan() {
        v
    } else {
        best
    }
}

/// One row of outputs from the two input rows under it.
#[inline(always)]
fn pool_row(top: &[f32], bottom: &[f32], out: &mut [f32]) {
    for ((o, t), b) in out.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
        *o = prefer(prefer(prefer(t[0], t[1]), b[0]), b[1]);
    }
}

/// The window of output `(oy, ox)` in one plane of width `w`.
fn window(plane: &[f32], w: usize, oy: usize, ox: usize) -> [f32; 4] {
    let (top, bottom) = (2 * oy * w + 2 * ox, (2 * oy + 1) * w + 2 * ox);
    [plane[top], plane[top + 1], plane[bottom], plane[bottom + 1]]
}

/// `[planes, h, w]` -> `[planes, h / 2, w / 2]` (odd sizes drop the last row or column).
pub fn forward(x: &[f32], planes: usize, [h, w]: [usize; 2]) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w, "max pool input");
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![0.0f32; planes * oh * ow];
    if oh * ow == 0 {
        return out;
    }
    out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(out, plane)| {
        elementwise::vectorized(|| {
            for (row, pair) in out.chunks_mut(ow).zip(plane.chunks(2 * w)) {
                pool_row(&pair[..2 * ow], &pair[w..w + 2 * ow], row);
            }
        })
    });
    out
}

/// The gradient with respect to `x` (`[planes, h, w]`) from the output's gradient.
pub fn backward(x: &[f32], output_grad: &[f32], planes: usize, [h, w]: [usize; 2]) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w, "max pool input");
    assert_eq!(output_grad.len(), planes * oh * ow, "max pool output gradient");
    let mut grad = vec![0.0f32; planes * h * w];
    if oh * ow == 0 {
        return grad;
    }
    grad.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w).zip(output_grad.par_chunks(oh * ow)))
        .for_each(|(grad, (plane, dy))| {
            for (oy, row) in dy.chunks(ow).enumerate() {
                for (ox, &g) in row.iter().enumerate() {
                    let i = winner(window(plane, w, oy, ox));
                    grad[(2 * oy + i / 2) * w + 2 * ox + i % 2] = 0.0 + g;
                }
            }
        });
    grad
}
