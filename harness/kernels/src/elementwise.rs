//! Elementwise passes over rows of activations (normalization, activation and their gradients),
//! each loop compiled three times: for AVX-512, for AVX2 and for the baseline x86-64 the crate
//! is built for.
//!
//! Why: the crate targets every x86-64, so the compiler vectorizes these loops four lanes wide
//! (SSE2); where the CPU has AVX2 or AVX-512 the same loop runs eight or sixteen lanes wide. All
//! compute each element with the closure's IEEE operations (Rust never fuses a multiply and an
//! add on its own), so the versions give the same bits and a result does not depend on the CPU.

use std::mem::MaybeUninit;

#[cfg(x86_kernels)]
use super::isa::{self, Isa};

/// Runs `body` compiled for the widest instruction set the kernels may use (`isa::current`;
/// the closure is inlined into a function compiled for it, so its loops vectorize to that
/// width), else as built.
#[inline(always)]
pub fn vectorized<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(x86_kernels)]
    match isa::current() {
        // SAFETY: `current` names an instruction set only where the CPU has it.
        Isa::Avx512 => return unsafe { run_avx512(body) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { run_avx2(body) },
        Isa::Portable => {}
    }
    body()
}

#[cfg(x86_kernels)]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(x86_kernels)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn run_avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// `dst[i] = f(src[i])`, into values not yet written (`output::Writer` hands them out).
#[inline(always)]
pub fn map_into(src: &[f32], dst: &mut [MaybeUninit<f32>], f: impl Fn(f32) -> f32) {
    assert_eq!(src.len(), dst.len(), "elementwise map: lengths differ");
    vectorized(
        #[inline(always)]
        move || map_plain(src, dst, f),
    );
}

/// `values[i] = f(values[i])`.
#[inline(always)]
pub fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32) {
    vectorized(
        #[inline(always)]
        move || {
            for v in values.iter_mut() {
                *v = f(*v);
            }
        },
    );
}

/// `dst[i] = f(a[i], b[i])`, into values not yet written.
#[inline(always)]
pub fn zip_map_into<T: Copy>(a: &[f32], b: &[T], dst: &mut [MaybeUninit<f32>], f: impl Fn(f32, T) -> f32) {
    assert!(a.len() == dst.len() && b.len() == dst.len(), "elementwise zip_map: lengths differ");
    vectorized(
        #[inline(always)]
        move || zip_map_plain(a, b, dst, f),
    );
}

/// `dst[i] = f(i)`, into values not yet written: for loops that read several slices at `i`
/// (sliced to `dst`'s length beforehand, so the compiler drops the bounds checks and vectorizes).
#[inline(always)]
pub fn from_fn_into(dst: &mut [MaybeUninit<f32>], f: impl Fn(usize) -> f32) {
    vectorized(
        #[inline(always)]
        move || {
            for (i, d) in dst.iter_mut().enumerate() {
                d.write(f(i));
            }
        },
    );
}

#[inline(always)]
fn map_plain(src: &[f32], dst: &mut [MaybeUninit<f32>], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(f(s));
    }
}

#[inline(always)]
fn zip_map_plain<T: Copy>(a: &[f32], b: &[T], dst: &mut [MaybeUninit<f32>], f: impl Fn(f32, T) -> f32) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        d.write(f(x, y));
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

    /// On every instruction set this CPU has, the dispatched loops give the baseline loops' bits,
    /// including on odd lengths, signed zeros, NaN and subnormals.
    #[test]
    fn every_instantiation_gives_the_same_bits() {
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
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let plain_map: Vec<f32> = src.iter().map(|&x| f(x)).collect();
        let plain_zip: Vec<f32> = src.iter().zip(&other).map(|(&x, &y)| g(x, y)).collect();
        for isa in super::super::isa::compared_in("the elementwise passes") {
            let _forced = super::super::isa::force(isa);
            let fast = crate::output::written(src.len(), src.len(), |_, out| out.map(&src, f));
            assert_eq!(bits(&fast), bits(&plain_map), "{isa:?}");
            let fast = crate::output::written(src.len(), src.len(), |_, out| out.zip_map(&src, &other, g));
            assert_eq!(bits(&fast), bits(&plain_zip), "{isa:?}");
        }
        assert_eq!(leaky_grad(-0.0, -0.0, 0.01).to_bits(), 0.0f32.to_bits());
    }
}
