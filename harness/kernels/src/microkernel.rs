//! The two inner loops every convolution pass runs, each written twice: with AVX2 + FMA
//! intrinsics, and as plain Rust with `f32::mul_add` for every other CPU.
//!
//! Why our own loops rather than a GEMM crate: the convolutions read their input straight from a
//! zero-padded copy of the image (no im2col matrix, no operand packing), which a GEMM interface
//! cannot express; at 16 channels those copies cost as much as the arithmetic. And because both
//! versions perform the same fused multiply-adds in the same order, every CPU computes the same
//! bits: results depend neither on the instruction set nor on cache sizes, only on the code.

/// Output positions one forward tile computes (two AVX2 registers).
pub const TILE: usize = 16;
/// Output channels one tile computes; packed weights hold `BLOCK` values per tap.
pub const BLOCK: usize = 6;
/// Output channels one weight-gradient register holds.
pub const LANES: usize = 8;

/// Whether the AVX2 + FMA versions run (`isa`: the CPU has them and no override says otherwise).
#[cfg(x86_kernels)]
#[inline]
fn simd() -> bool {
    super::isa::current() == super::isa::Isa::Avx2
}

/// Forward tile: for `c < channels` (at most `BLOCK`) and `i < TILE`,
/// `out[c * out_stride + i] = start + Σ_k weights[k * BLOCK + c] * src[offsets[k] + i]`,
/// the sum taken as one fused multiply-add per tap, in tap order. `start` is `init[c]`, or with
/// `init` `None` the value already in `out`: a sum split over calls gives the same bits.
///
/// # Safety
/// `src` must be readable at `offsets[k] + i` for every `k` and `i < TILE`, `out` readable and
/// writable at `c * out_stride + i` for `c < channels`, `i < TILE`; `weights` must hold
/// `offsets.len() * BLOCK` values and `init` at least `channels`.
pub unsafe fn forward_tile(
    channels: usize,
    src: *const f32,
    offsets: &[usize],
    weights: &[f32],
    init: Option<&[f32]>,
    out: *mut f32,
    out_stride: usize,
) {
    assert!(weights.len() >= offsets.len() * BLOCK && init.is_none_or(|i| i.len() >= channels) && (1..=BLOCK).contains(&channels));
    macro_rules! dispatch {
        ($f:ident) => {
            match channels {
                1 => $f::<1>(src, offsets, weights, init, out, out_stride),
                2 => $f::<2>(src, offsets, weights, init, out, out_stride),
                3 => $f::<3>(src, offsets, weights, init, out, out_stride),
                4 => $f::<4>(src, offsets, weights, init, out, out_stride),
                5 => $f::<5>(src, offsets, weights, init, out, out_stride),
                _ => $f::<6>(src, offsets, weights, init, out, out_stride),
            }
        };
    }
    #[cfg(x86_kernels)]
    if simd() {
        // SAFETY: the CPU has AVX2 and FMA (checked); the pointer contract is the caller's.
        unsafe { dispatch!(forward_tile_avx2) };
        return;
    }
    // SAFETY: the pointer contract is the caller's.
    unsafe { dispatch!(forward_tile_scalar) };
}

unsafe fn forward_tile_scalar<const C: usize>(
    src: *const f32,
    offsets: &[usize],
    weights: &[f32],
    init: Option<&[f32]>,
    out: *mut f32,
    out_stride: usize,
) {
    let mut acc = [[0.0f32; TILE]; C];
    for (c, row) in acc.iter_mut().enumerate() {
        match init {
            Some(init) => row.fill(init[c]),
            // SAFETY: readable at `c * out_stride + 0..TILE` (the caller's contract).
            None => row.copy_from_slice(unsafe { std::slice::from_raw_parts(out.add(c * out_stride), TILE) }),
        }
    }
    for (&offset, w) in offsets.iter().zip(weights.chunks_exact(BLOCK)) {
        // SAFETY: readable at `offset + 0..TILE` (the caller's contract).
        let x = unsafe { std::slice::from_raw_parts(src.add(offset), TILE) };
        for (row, &wc) in acc.iter_mut().zip(w) {
            for (a, &xi) in row.iter_mut().zip(x) {
                *a = wc.mul_add(xi, *a);
            }
        }
    }
    for (c, row) in acc.iter().enumerate() {
        // SAFETY: writable at `c * out_stride + 0..TILE` (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(c * out_stride), TILE) };
    }
}

#[cfg(x86_kernels)]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_tile_avx2<const C: usize>(
    src: *const f32,
    offsets: &[usize],
    weights: &[f32],
    init: Option<&[f32]>,
    out: *mut f32,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for (c, pair) in acc.iter_mut().enumerate() {
        *pair = match init {
            Some(init) => [_mm256_set1_ps(init[c]); 2],
            // SAFETY: readable at `c * out_stride + 0..TILE` (the caller's contract).
            None => unsafe {
                [
                    _mm256_loadu_ps(out.add(c * out_stride)),
                    _mm256_loadu_ps(out.add(c * out_stride + 8)),
                ]
            },
        };
    }
    for (&offset, w) in offsets.iter().zip(weights.chunks_exact(BLOCK)) {
        // SAFETY: readable at `offset + 0..TILE` (the caller's contract).
        let (x0, x1) = unsafe { (_mm256_loadu_ps(src.add(offset)), _mm256_loadu_ps(src.add(offset + 8))) };
        for (pair, wc) in acc.iter_mut().zip(w) {
            let wc = _mm256_broadcast_ss(wc);
            pair[0] = _mm256_fmadd_ps(wc, x0, pair[0]);
            pair[1] = _mm256_fmadd_ps(wc, x1, pair[1]);
        }
    }
    for (c, pair) in acc.iter().enumerate() {
        // SAFETY: writable at `c * out_stride + 0..TILE` (the caller's contract).
        unsafe {
            _mm256_storeu_ps(out.add(c * out_stride), pair[0]);
            _mm256_storeu_ps(out.add(c * out_stride + 8), pair[1]);
        }
    }
}

/// Weight-gradient tile, with output channels along the registers: for `j < offsets.len()` (at
/// most `BLOCK`) and `c < 8 * REGS`, continues the chain
/// `grad[j * grad_stride + c] = fma(src[offsets[j] + p], dyt[p * dyt_stride + c], grad[..])` over
/// positions `p < len` in order. The chain is stored in `grad` between calls, so splitting the
/// positions across calls does not change a bit.
///
/// # Safety
/// `src` must be readable at `offsets[j] + p`, `dyt` at `p * dyt_stride + c`, and `grad` readable
/// and writable at `j * grad_stride + c`, for all `j`, `p < len`, `c < 8 * regs`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weight_tile(
    regs: usize,
    src: *const f32,
    offsets: &[usize],
    dyt: *const f32,
    dyt_stride: usize,
    len: usize,
    grad: *mut f32,
    grad_stride: usize,
) {
    assert!((1..=2).contains(&regs) && offsets.len() <= BLOCK);
    macro_rules! dispatch {
        ($f:ident) => {
            match (regs, offsets.len()) {
                (2, 6) => $f::<2, 6>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (2, 5) => $f::<2, 5>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (2, 4) => $f::<2, 4>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (2, 3) => $f::<2, 3>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (2, 2) => $f::<2, 2>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (2, 1) => $f::<2, 1>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (_, 6) => $f::<1, 6>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (_, 5) => $f::<1, 5>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (_, 4) => $f::<1, 4>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (_, 3) => $f::<1, 3>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (_, 2) => $f::<1, 2>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                (_, 1) => $f::<1, 1>(src, offsets, dyt, dyt_stride, len, grad, grad_stride),
                _ => {}
            }
        };
    }
    #[cfg(x86_kernels)]
    if simd() {
        // SAFETY: the CPU has AVX2 and FMA (checked); the pointer contract is the caller's.
        unsafe { dispatch!(weight_tile_avx2) };
        return;
    }
    // SAFETY: the pointer contract is the caller's.
    unsafe { dispatch!(weight_tile_scalar) };
}

unsafe fn weight_tile_scalar<const R: usize, const T: usize>(
    src: *const f32,
    offsets: &[usize],
    dyt: *const f32,
    dyt_stride: usize,
    len: usize,
    grad: *mut f32,
    grad_stride: usize,
) {
    let mut acc = [[[0.0f32; 8]; R]; T];
    for (j, row) in acc.iter_mut().enumerate() {
        // SAFETY: readable at `j * grad_stride + 0..8R` (the caller's contract).
        let stored = unsafe { std::slice::from_raw_parts(grad.add(j * grad_stride), 8 * R) };
        for (lanes, values) in row.iter_mut().zip(stored.chunks_exact(8)) {
            lanes.copy_from_slice(values);
        }
    }
    for p in 0..len {
        // SAFETY: readable at `p * dyt_stride + 0..8R` (the caller's contract).
        let g = unsafe { std::slice::from_raw_parts(dyt.add(p * dyt_stride), 8 * R) };
        for (row, &offset) in acc.iter_mut().zip(offsets) {
            // SAFETY: readable at `offset + p` (the caller's contract).
            let x = unsafe { *src.add(offset + p) };
            for (lanes, values) in row.iter_mut().zip(g.chunks_exact(8)) {
                for (a, &gi) in lanes.iter_mut().zip(values) {
                    *a = x.mul_add(gi, *a);
                }
            }
        }
    }
    for (j, row) in acc.iter().enumerate() {
        for (r, lanes) in row.iter().enumerate() {
            // SAFETY: writable at `j * grad_stride + 0..8R` (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(lanes.as_ptr(), grad.add(j * grad_stride + 8 * r), 8) };
        }
    }
}

#[cfg(x86_kernels)]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_tile_avx2<const R: usize, const T: usize>(
    src: *const f32,
    offsets: &[usize],
    dyt: *const f32,
    dyt_stride: usize,
    len: usize,
    grad: *mut f32,
    grad_stride: usize,
) {
    use std::arch::x86_64::*;
    let mut taps = [std::ptr::null::<f32>(); T];
    for (tap, &offset) in taps.iter_mut().zip(offsets) {
        // SAFETY: an offset the caller's contract makes readable.
        *tap = unsafe { src.add(offset) };
    }
    // SAFETY: readable at `j * grad_stride + 0..8R` (the caller's contract).
    let mut acc: [[__m256; R]; T] =
        std::array::from_fn(|j| std::array::from_fn(|r| unsafe { _mm256_loadu_ps(grad.add(j * grad_stride + 8 * r)) }));
    for p in 0..len {
        // SAFETY: readable at `p * dyt_stride + 0..8R` (the caller's contract).
        let g: [__m256; R] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(dyt.add(p * dyt_stride + 8 * r)) });
        for (row, tap) in acc.iter_mut().zip(&taps) {
            // SAFETY: readable at `offset + p` (the caller's contract).
            let x = unsafe { _mm256_broadcast_ss(&*tap.add(p)) };
            for (a, &gr) in row.iter_mut().zip(&g) {
                *a = _mm256_fmadd_ps(x, gr, *a);
            }
        }
    }
    for (j, row) in acc.iter().enumerate() {
        for (r, a) in row.iter().enumerate() {
            // SAFETY: writable at `j * grad_stride + 0..8R` (the caller's contract).
            unsafe { _mm256_storeu_ps(grad.add(j * grad_stride + 8 * r), *a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 7) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// The SIMD and plain versions agree bit for bit (on a CPU without AVX2 both calls run the
    /// plain version, which still checks the tile against its definition below).
    #[test]
    fn both_versions_give_the_same_bits_and_the_definition() {
        let src = values(400, 1);
        let offsets = [0usize, 7, 33, 120, 121, 250, 300];
        let weights = values(offsets.len() * BLOCK, 2);
        let init = values(BLOCK, 3);
        for channels in 1..=BLOCK {
            let mut simd_out = vec![0.0f32; BLOCK * 20];
            let mut plain_out = vec![0.0f32; BLOCK * 20];
            // SAFETY: src holds 400 values, the largest read is 300 + 15; out holds 6 rows of 20.
            unsafe {
                // Split over two calls, the second continuing from what the first stored.
                forward_tile(
                    channels,
                    src.as_ptr(),
                    &offsets[..3],
                    &weights,
                    Some(&init),
                    simd_out.as_mut_ptr(),
                    20,
                );
                forward_tile(
                    channels,
                    src.as_ptr(),
                    &offsets[3..],
                    &weights[3 * BLOCK..],
                    None,
                    simd_out.as_mut_ptr(),
                    20,
                );
                forward_tile_scalar::<6>(src.as_ptr(), &offsets, &weights, Some(&init), plain_out.as_mut_ptr(), 20);
            }
            for c in 0..channels {
                for i in 0..TILE {
                    let got = simd_out[c * 20 + i];
                    assert_eq!(got.to_bits(), plain_out[c * 20 + i].to_bits(), "channel {c} position {i}");
                    let exact: f64 = init[c] as f64
                        + offsets
                            .iter()
                            .enumerate()
                            .map(|(k, &o)| weights[k * BLOCK + c] as f64 * src[o + i] as f64)
                            .sum::<f64>();
                    assert!((got as f64 - exact).abs() < 1e-5, "{got} vs {exact}");
                }
                assert_eq!(simd_out[c * 20 + TILE], 0.0, "wrote past the tile");
            }
        }
        // Weight tile: 5 taps x 16 channels over 40 positions, chained over two calls.
        let dyt = values(40 * 20, 4);
        let taps = &offsets[..5];
        for regs in [1, 2] {
            let mut simd_grad = vec![0.25f32; 5 * 24];
            let mut plain_grad = simd_grad.clone();
            // SAFETY: src reads end at 121 + 39 < 400, dyt rows are 20 apart (40 rows), grad rows
            // 24 apart (5 rows).
            unsafe {
                weight_tile(regs, src.as_ptr(), taps, dyt.as_ptr(), 20, 25, simd_grad.as_mut_ptr(), 24);
                weight_tile(
                    regs,
                    src[25..].as_ptr(),
                    taps,
                    dyt[25 * 20..].as_ptr(),
                    20,
                    15,
                    simd_grad.as_mut_ptr(),
                    24,
                );
                weight_tile_scalar::<2, 5>(src.as_ptr(), taps, dyt.as_ptr(), 20, 40, plain_grad.as_mut_ptr(), 24);
            }
            for j in 0..5 {
                for c in 0..8 * regs {
                    let got = simd_grad[j * 24 + c];
                    assert_eq!(got.to_bits(), plain_grad[j * 24 + c].to_bits(), "regs {regs} tap {j} channel {c}");
                    let exact = 0.25 + (0..40).map(|p| src[taps[j] + p] as f64 * dyt[p * 20 + c] as f64).sum::<f64>();
                    assert!((got as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{got} vs {exact}");
                }
                assert_eq!(simd_grad[j * 24 + 8 * regs], 0.25, "wrote past the tile");
            }
        }
    }
}
