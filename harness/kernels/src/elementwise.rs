//! Elementwise passes over rows of activations (normalization, activation and their gradients),
//! each loop compiled twice: for AVX2 and for the baseline x86-64 the crate is built for.
//!
//! Why: the crate targets every x86-64, so the compiler vectorizes these loops four lanes wide
//! (SSE2); where the CPU has AVX2 the same loop runs eight lanes wide. Both compute each element
//! with the closure's IEEE operations (Rust never fuses a multiply and an add on its own), so the
//! two versions give the same bits and a result does not depend on the CPU.

/// Whether the AVX2 instantiations run (`isa`: the CPU has AVX2 and FMA, and no override says
/// otherwise; the loops here need only AVX2, the one switch keeps both kinds of kernel together).
#[cfg(x86_kernels)]
#[inline]
fn avx2() -> bool {
    super::isa::current() == super::isa::Isa::Avx2
}

/// Runs `body` compiled for AVX2 where the CPU has it (the closure is inlined into an AVX2
/// function, so its loops vectorize eight lanes wide), else as built.
#[inline(always)]
pub fn vectorized<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(x86_kernels)]
    if avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { run_avx2(body) };
    }
    body()
}

#[cfg(x86_kernels)]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// `dst[i] = f(src[i])`.
#[inline(always)]
pub fn map(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    assert_eq!(src.len(), dst.len(), "elementwise map: lengths differ");
    vectorized(|| map_plain(src, dst, f));
}

/// `dst[i] = f(a[i], b[i])`.
#[inline(always)]
pub fn zip_map(a: &[f32], b: &[f32], dst: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    assert!(a.len() == dst.len() && b.len() == dst.len(), "elementwise zip_map: lengths differ");
    vectorized(|| zip_map_plain(a, b, dst, f));
}

#[inline(always)]
fn map_plain(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[inline(always)]
fn zip_map_plain(a: &[f32], b: &[f32], dst: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

/// burn's LeakyReLU on flex, element by element: `x` where `x >= 0`, else `slope * x`.
#[inline(always)]
pub fn leaky(x: f32, slope: f32) -> f32 {
    if x >= 0.0 {
        x
    } else {
        slope * x
    }
}

/// burn's LeakyReLU gradient as flex computes it, at input `x` for output gradient `g`: `g`
/// where `x >= 0` or `x` is NaN, else `slope * g`, then `+ 0.0` (burn adds the two branches'
/// gradients, which turns -0 into +0).
#[inline(always)]
pub fn leaky_grad(x: f32, g: f32, slope: f32) -> f32 {
    (if x < 0.0 { g * slope } else { g }) + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched loop and the baseline loop give the same bits, including on odd lengths,
    /// signed zeros, NaN and subnormals.
    #[test]
    fn both_instantiations_give_the_same_bits() {
        let mut src: Vec<f32> = (0..1003).map(|i| ((i * 7919) % 2001) as f32 / 37.0 - 27.0).collect();
        src.extend([
            0.0,
            -0.0,
            f32::NAN,
            f32::MIN_POSITIVE / 4.0,
            -f32::MIN_POSITIVE / 4.0,
            f32::INFINITY,
        ]);
        let other: Vec<f32> = src.iter().rev().copied().collect();
        let f = |x: f32| leaky((x - 0.3) / 1.7 * 0.9 + 0.1, 0.01);
        let g = |x: f32, y: f32| leaky_grad(x, y, 0.01);
        let (mut fast, mut plain) = (vec![0.0; src.len()], vec![0.0; src.len()]);
        map(&src, &mut fast, f);
        map_plain(&src, &mut plain, f);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&plain));
        zip_map(&src, &other, &mut fast, g);
        zip_map_plain(&src, &other, &mut plain, g);
        assert_eq!(bits(&fast), bits(&plain));
        assert_eq!(leaky_grad(-0.0, -0.0, 0.01).to_bits(), 0.0f32.to_bits());
    }
}
