//! Batch norm's per-channel sums in `f64`, each in one fixed order, with channels side by side in
//! SIMD lanes.
//!
//! Why a module of its own: a training step sums every normalized activation three times (the
//! mean, the squared deviations, the two gradient sums), and each channel's sum has to be one
//! chain of additions in image, then position order, so that a result does not depend on the
//! thread count or the CPU. A chain cannot be split across positions; what can run side by side
//! is the chains of several channels. Written as plain Rust, the compiler leaves that loop scalar
//! (a step spent about a tenth of its CPU time here), so the SIMD paths below turn blocks of
//! positions x channels around in registers and add four (AVX2) or eight (AVX-512) channels' terms
//! with one instruction. Each term is written twice: as plain Rust (`ChannelTerm::terms`, the
//! definition the tests hold the rest to) and once for both SIMD widths (`ChannelTerm::lanes`,
//! over the few vector operations of `simd::Lanes`), performing each channel's IEEE operations in
//! the same order, so every path gives the same bits.

use rayon::prelude::*;

#[cfg(x86_kernels)]
use super::isa::{self, Isa};

/// `[batch, channels, positions]` of an NCHW activation (positions = H x W).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub batch: usize,
    pub channels: usize,
    pub positions: usize,
}

impl NormShape {
    pub(crate) fn samples(&self) -> f64 {
        (self.batch * self.positions) as f64
    }

    /// The values of channel `c`, one contiguous run per image.
    #[cfg(test)]
    pub(crate) fn runs<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (stride, len) = (self.channels * self.positions, self.positions);
        (0..self.batch).map(move |b| &data[b * stride + c * len..][..len])
    }
}

/// What one of the sums adds for each value: `N` terms from the value `x` of channel `c`, the
/// value `y` at the same place in a second array (the output gradient), and constants of the
/// channel.
pub trait ChannelTerm<const N: usize>: Sync {
    /// The terms, as the portable path computes them (the definition).
    fn terms(&self, c: usize, x: f32, y: f32) -> [f64; N];

    /// `terms` for `W` channels side by side in `L`'s registers: the channels' constants, read
    /// once per group, and (`simd::LaneTerms`) the operations of `terms` in its order, lane by
    /// lane.
    #[cfg(x86_kernels)]
    type Lanes<const W: usize, L: simd::Lanes<W>>: simd::LaneTerms<W, L, N>;

    /// The constants of the channels `c` (lane `l` for channel `c[l]`).
    ///
    /// # Safety
    /// The CPU must have `L`'s instruction set.
    #[cfg(x86_kernels)]
    unsafe fn lanes<const W: usize, L: simd::Lanes<W>>(&self, c: &[usize; W]) -> Self::Lanes<W, L>;
}

/// The sum of each channel's values: `Σ x`.
pub struct Values;

impl ChannelTerm<1> for Values {
    #[inline(always)]
    fn terms(&self, _: usize, x: f32, _: f32) -> [f64; 1] {
        [x as f64]
    }

    #[cfg(x86_kernels)]
    #[inline(always)]
    unsafe fn lanes<const W: usize, L: simd::Lanes<W>>(&self, _: &[usize; W]) -> ValueLanes {
        ValueLanes
    }

    #[cfg(x86_kernels)]
    type Lanes<const W: usize, L: simd::Lanes<W>> = ValueLanes;
}

/// `Values` in SIMD lanes (no constants).
#[cfg(x86_kernels)]
#[derive(Clone, Copy)]
pub struct ValueLanes;

#[cfg(x86_kernels)]
impl<const W: usize, L: simd::Lanes<W>> simd::LaneTerms<W, L, 1> for ValueLanes {
    #[inline(always)]
    unsafe fn terms(&self, x: L::F32, _: L::F32) -> [L::F64; 1] {
        // SAFETY: the caller guarantees `L`'s instruction set.
        unsafe { [L::widen(x)] }
    }
}

/// The sum of each channel's squared deviations from its mean: `Σ (x - mean)²`.
pub struct SquaredDeviations<'a> {
    pub means: &'a [f64],
}

impl ChannelTerm<1> for SquaredDeviations<'_> {
    #[inline(always)]
    fn terms(&self, c: usize, x: f32, _: f32) -> [f64; 1] {
        let deviation = x as f64 - self.means[c];
        [deviation * deviation]
    }

    #[cfg(x86_kernels)]
    #[inline(always)]
    unsafe fn lanes<const W: usize, L: simd::Lanes<W>>(&self, c: &[usize; W]) -> DeviationLanes<L::F64> {
        // SAFETY: the caller guarantees `L`'s instruction set.
        DeviationLanes(unsafe { L::f64s(self.means, c) })
    }

    #[cfg(x86_kernels)]
    type Lanes<const W: usize, L: simd::Lanes<W>> = DeviationLanes<L::F64>;
}

/// `SquaredDeviations` in SIMD lanes: the channels' means.
#[cfg(x86_kernels)]
#[derive(Clone, Copy)]
pub struct DeviationLanes<F64>(F64);

#[cfg(x86_kernels)]
impl<const W: usize, L: simd::Lanes<W>> simd::LaneTerms<W, L, 1> for DeviationLanes<L::F64> {
    #[inline(always)]
    unsafe fn terms(&self, x: L::F32, _: L::F32) -> [L::F64; 1] {
        // SAFETY: the caller guarantees `L`'s instruction set.
        unsafe {
            let deviation = L::sub64(L::widen(x), self.0);
            [L::mul64(deviation, deviation)]
        }
    }
}

/// The two sums batch norm's backward pass needs: `Σ dy` and `Σ dy (x - mean)`, where `dy` is the
/// gradient reaching the normalized value `x * scale + shift` from the output gradient `y`
/// through what followed the normalization (nothing, or a LeakyReLU of this negative slope).
pub struct NormGradients<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub mean: &'a [f32],
    pub leaky_slope: Option<f32>,
}

impl NormGradients<'_> {
    /// `(x, y) -> dy` for channel `c` (scalar), its constants read once.
    #[inline(always)]
    pub fn normalized_grad(&self, c: usize) -> impl Fn(f32, f32) -> f32 + Copy {
        let (scale, shift, leaky_slope) = (self.scale[c], self.shift[c], self.leaky_slope);
        move |x, y| match leaky_slope {
            None => y,
            Some(slope) => super::elementwise::leaky_grad(x * scale + shift, y, slope),
        }
    }
}

impl ChannelTerm<2> for NormGradients<'_> {
    #[inline(always)]
    fn terms(&self, c: usize, x: f32, y: f32) -> [f64; 2] {
        let dy = self.normalized_grad(c)(x, y) as f64;
        [dy, dy * (x as f64 - self.mean[c] as f64)]
    }

    #[cfg(x86_kernels)]
    #[inline(always)]
    unsafe fn lanes<const W: usize, L: simd::Lanes<W>>(&self, c: &[usize; W]) -> GradientLanes<L::F32, L::F64> {
        // SAFETY: the caller guarantees `L`'s instruction set.
        unsafe {
            GradientLanes {
                scale: L::f32s(self.scale, c),
                shift: L::f32s(self.shift, c),
                mean: L::widen(L::f32s(self.mean, c)),
                leaky: self.leaky_slope.map(|slope| (L::splat(slope), L::splat(0.0))),
            }
        }
    }

    #[cfg(x86_kernels)]
    type Lanes<const W: usize, L: simd::Lanes<W>> = GradientLanes<L::F32, L::F64>;
}

/// `NormGradients` in SIMD lanes: the channels' scales, shifts and means, and the LeakyReLU's
/// slope and a zero, if one follows.
#[cfg(x86_kernels)]
#[derive(Clone, Copy)]
pub struct GradientLanes<F32, F64> {
    scale: F32,
    shift: F32,
    mean: F64,
    leaky: Option<(F32, F32)>,
}

#[cfg(x86_kernels)]
impl<const W: usize, L: simd::Lanes<W>> simd::LaneTerms<W, L, 2> for GradientLanes<L::F32, L::F64> {
    #[inline(always)]
    unsafe fn terms(&self, x: L::F32, y: L::F32) -> [L::F64; 2] {
        // SAFETY: the caller guarantees `L`'s instruction set.
        unsafe {
            let gradient = match self.leaky {
                None => y,
                Some((slope, zero)) => {
                    // `leaky_grad`: `y * slope` where the normalized value is below zero (false
                    // for NaN, as `<` is), else `y`; then `+ 0.0`. Multiply, then add: no FMA.
                    let normalized = L::add(L::mul(x, self.scale), self.shift);
                    L::add(L::below_zero(normalized, L::mul(y, slope), y), zero)
                }
            };
            let dy = L::widen(gradient);
            [dy, L::mul64(dy, L::sub64(L::widen(x), self.mean))]
        }
    }
}

/// For every channel `c`: `N` sums in `f64`, each starting from `init` and adding
/// `term.terms(c, x, y)` for the channel's values in image, then position order (`x` from `a`,
/// `y` from `b` at the same place). One thread takes a group of channels and chains their sums
/// side by side: independent additions keep the core's adders busy (a single chain waits on each
/// addition's latency), while every channel's sum keeps the order, and so the bits, of a plain
/// loop over its values. Groups hold up to 16 channels, fewer when that leaves threads idle;
/// neither the grouping nor the path (AVX-512 from 8 channels a thread, AVX2 from 4, else
/// portable) changes a bit.
pub fn channel_sums<const N: usize>(a: &[f32], b: &[f32], shape: &NormShape, init: f64, term: &impl ChannelTerm<N>) -> Vec<[f64; N]> {
    assert!(
        a.len() == shape.batch * shape.channels * shape.positions && b.len() == a.len(),
        "batch norm: input sizes"
    );
    let per_thread = shape.channels / rayon::current_num_threads();
    #[cfg(x86_kernels)]
    match (isa::current(), per_thread) {
        (Isa::Avx512, 16..) => return grouped(a, b, shape, init, term, 16, simd::avx512::<2, N, _>),
        (Isa::Avx512, 8..) => return grouped(a, b, shape, init, term, 8, simd::avx512::<1, N, _>),
        (Isa::Avx2, 8..) => return grouped(a, b, shape, init, term, 8, simd::avx2::<2, N, _>),
        (Isa::Avx512 | Isa::Avx2, 4..) => return grouped(a, b, shape, init, term, 4, simd::avx2::<1, N, _>),
        _ => {}
    }
    match per_thread {
        0 | 1 => grouped(a, b, shape, init, term, 1, portable_group_sums::<1, N>),
        2 | 3 => grouped(a, b, shape, init, term, 2, portable_group_sums::<2, N>),
        4..=7 => grouped(a, b, shape, init, term, 4, portable_group_sums::<4, N>),
        _ => grouped(a, b, shape, init, term, 8, portable_group_sums::<8, N>),
    }
}

/// The sums of one group: `(a, b, shape, init, term, first channel, channels)` to the group's
/// sums, channel by channel.
type GroupSums<T, const N: usize> = fn(&[f32], &[f32], &NormShape, f64, &T, usize, usize) -> Vec<[f64; N]>;

/// Splits the channels into groups of `size` (the last may be smaller), sums the groups in
/// parallel and concatenates their sums in channel order.
fn grouped<const N: usize, T: ChannelTerm<N>>(
    a: &[f32],
    b: &[f32],
    shape: &NormShape,
    init: f64,
    term: &T,
    size: usize,
    group_sums: GroupSums<T, N>,
) -> Vec<[f64; N]> {
    let firsts: Vec<usize> = (0..shape.channels).step_by(size).collect();
    firsts
        .into_par_iter()
        .flat_map_iter(|first| group_sums(a, b, shape, init, term, first, size.min(shape.channels - first)))
        .collect()
}

/// The portable path: `CHAINS` scalar chains side by side. A group short of `CHAINS` channels
/// repeats its last one; the copies are dropped.
fn portable_group_sums<const CHAINS: usize, const N: usize>(
    a: &[f32],
    b: &[f32],
    shape: &NormShape,
    init: f64,
    term: &impl ChannelTerm<N>,
    first: usize,
    count: usize,
) -> Vec<[f64; N]> {
    assert!(
        (1..=CHAINS).contains(&count) && first + count <= shape.channels,
        "batch norm: channel group"
    );
    let channels: [usize; CHAINS] = std::array::from_fn(|g| first + g.min(count - 1));
    let mut sums = [[init; N]; CHAINS];
    for image in 0..shape.batch {
        let run = |data: &'_ [f32], c: usize| -> *const f32 {
            data[(image * shape.channels + c) * shape.positions..][..shape.positions].as_ptr()
        };
        let xs = channels.map(|c| run(a, c));
        let ys = channels.map(|c| run(b, c));
        for i in 0..shape.positions {
            for g in 0..CHAINS {
                // SAFETY: `run` checked that each channel's run holds `positions` values.
                let (x, y) = unsafe { (*xs[g].add(i), *ys[g].add(i)) };
                for (sum, t) in sums[g].iter_mut().zip(term.terms(channels[g], x, y)) {
                    *sum += t;
                }
            }
        }
    }
    sums.into_iter().take(count).collect()
}

/// The SIMD paths: one loop over a group, written once over `Lanes`, run with AVX2 (four
/// channels a register) or AVX-512 (eight).
#[cfg(x86_kernels)]
pub mod simd {
    use std::arch::x86_64::*;

    use super::super::isa::{self, Isa};
    use super::super::transpose::{transpose_4x4, transpose_8x8};
    use super::{ChannelTerm, NormShape};

    /// A term's operations on `W` channels side by side, with their constants in registers.
    pub trait LaneTerms<const W: usize, L: Lanes<W>, const N: usize>: Copy {
        /// One position's terms, lane by lane.
        ///
        /// # Safety
        /// The CPU must have `L`'s instruction set.
        unsafe fn terms(&self, x: L::F32, y: L::F32) -> [L::F64; N];
    }

    /// `W` channels side by side: the vector operations a term and the group loop use.
    ///
    /// # Safety
    /// Every method runs the implementing type's instructions: the CPU must have them (and
    /// `columns` and `column` read through their pointers, which must be readable there).
    #[allow(clippy::missing_safety_doc)]
    pub trait Lanes<const W: usize> {
        /// `W` values in `f32`, and in `f64`.
        type F32: Copy;
        type F64: Copy;
        /// Lane `l` holds `values[c[l]]`.
        unsafe fn f32s(values: &[f32], c: &[usize; W]) -> Self::F32;
        unsafe fn f64s(values: &[f64], c: &[usize; W]) -> Self::F64;
        unsafe fn splat(value: f32) -> Self::F32;
        unsafe fn splat64(value: f64) -> Self::F64;
        unsafe fn add(a: Self::F32, b: Self::F32) -> Self::F32;
        unsafe fn mul(a: Self::F32, b: Self::F32) -> Self::F32;
        /// Lane by lane: `if_below` where `value < 0.0` (false for NaN), else `otherwise`.
        unsafe fn below_zero(value: Self::F32, if_below: Self::F32, otherwise: Self::F32) -> Self::F32;
        /// Each lane converted to `f64` (exactly).
        unsafe fn widen(x: Self::F32) -> Self::F64;
        unsafe fn add64(a: Self::F64, b: Self::F64) -> Self::F64;
        unsafe fn sub64(a: Self::F64, b: Self::F64) -> Self::F64;
        unsafe fn mul64(a: Self::F64, b: Self::F64) -> Self::F64;
        unsafe fn lanes64(v: Self::F64) -> [f64; W];
        /// Positions `i..i + W` of each row, turned around: column `p` holds position `i + p` of
        /// row `l` in lane `l`. Each row must be readable there.
        unsafe fn columns(rows: &[*const f32; W], i: usize) -> [Self::F32; W];
        /// Position `i` of each row, row `l` in lane `l`.
        #[inline(always)]
        unsafe fn column(rows: &[*const f32; W], i: usize) -> Self::F32 {
            // SAFETY: the caller's contract.
            unsafe { Self::f32s(&rows.map(|row| *row.add(i)), &std::array::from_fn(|l| l)) }
        }
    }

    /// AVX2: four channels, `f32` in SSE registers, `f64` in AVX ones.
    pub struct Avx2;

    impl Lanes<4> for Avx2 {
        type F32 = __m128;
        type F64 = __m256d;
        #[inline(always)]
        unsafe fn f32s(values: &[f32], c: &[usize; 4]) -> __m128 {
            unsafe { _mm_loadu_ps(c.map(|c| values[c]).as_ptr()) }
        }
        #[inline(always)]
        unsafe fn f64s(values: &[f64], c: &[usize; 4]) -> __m256d {
            unsafe { _mm256_loadu_pd(c.map(|c| values[c]).as_ptr()) }
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> __m128 {
            unsafe { _mm_set1_ps(value) }
        }
        #[inline(always)]
        unsafe fn splat64(value: f64) -> __m256d {
            unsafe { _mm256_set1_pd(value) }
        }
        #[inline(always)]
        unsafe fn add(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m128, b: __m128) -> __m128 {
            unsafe { _mm_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn below_zero(value: __m128, if_below: __m128, otherwise: __m128) -> __m128 {
            unsafe { _mm_blendv_ps(otherwise, if_below, _mm_cmp_ps::<_CMP_LT_OQ>(value, _mm_setzero_ps())) }
        }
        #[inline(always)]
        unsafe fn widen(x: __m128) -> __m256d {
            unsafe { _mm256_cvtps_pd(x) }
        }
        #[inline(always)]
        unsafe fn add64(a: __m256d, b: __m256d) -> __m256d {
            unsafe { _mm256_add_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn sub64(a: __m256d, b: __m256d) -> __m256d {
            unsafe { _mm256_sub_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn mul64(a: __m256d, b: __m256d) -> __m256d {
            unsafe { _mm256_mul_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn lanes64(v: __m256d) -> [f64; 4] {
            let mut out = [0.0; 4];
            unsafe { _mm256_storeu_pd(out.as_mut_ptr(), v) };
            out
        }
        #[inline(always)]
        unsafe fn columns(rows: &[*const f32; 4], i: usize) -> [__m128; 4] {
            transpose_4x4(rows.map(|row| unsafe { _mm_loadu_ps(row.add(i)) }))
        }
    }

    /// AVX-512: eight channels, `f32` in AVX registers, `f64` in AVX-512 ones.
    pub struct Avx512;

    impl Lanes<8> for Avx512 {
        type F32 = __m256;
        type F64 = __m512d;
        #[inline(always)]
        unsafe fn f32s(values: &[f32], c: &[usize; 8]) -> __m256 {
            unsafe { _mm256_loadu_ps(c.map(|c| values[c]).as_ptr()) }
        }
        #[inline(always)]
        unsafe fn f64s(values: &[f64], c: &[usize; 8]) -> __m512d {
            unsafe { _mm512_loadu_pd(c.map(|c| values[c]).as_ptr()) }
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> __m256 {
            unsafe { _mm256_set1_ps(value) }
        }
        #[inline(always)]
        unsafe fn splat64(value: f64) -> __m512d {
            unsafe { _mm512_set1_pd(value) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn below_zero(value: __m256, if_below: __m256, otherwise: __m256) -> __m256 {
            unsafe { _mm256_blendv_ps(otherwise, if_below, _mm256_cmp_ps::<_CMP_LT_OQ>(value, _mm256_setzero_ps())) }
        }
        #[inline(always)]
        unsafe fn widen(x: __m256) -> __m512d {
            unsafe { _mm512_cvtps_pd(x) }
        }
        #[inline(always)]
        unsafe fn add64(a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_add_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn sub64(a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_sub_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn mul64(a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_mul_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn lanes64(v: __m512d) -> [f64; 8] {
            let mut out = [0.0; 8];
            unsafe { _mm512_storeu_pd(out.as_mut_ptr(), v) };
            out
        }
        #[inline(always)]
        unsafe fn columns(rows: &[*const f32; 8], i: usize) -> [__m256; 8] {
            unsafe { transpose_8x8(rows.map(|row| _mm256_loadu_ps(row.add(i)))) }
        }
    }

    /// One SIMD path's entry point, `$name::<SUBS, N, _>`, for `$width * SUBS` channels (`SUBS`
    /// registers of `$width` channels per sum): checks the group and the CPU, then runs
    /// `group_sums` compiled with the path's instruction set (`$features`). The paths differ only
    /// in these four names, so one definition serves both.
    macro_rules! simd_path {
        ($(#[$doc:meta])* $name:ident, $lanes:ty, $width:literal, $isa:expr, $features:literal) => {
            $(#[$doc])*
            pub(super) fn $name<const SUBS: usize, const N: usize, T: ChannelTerm<N>>(
                a: &[f32],
                b: &[f32],
                shape: &NormShape,
                init: f64,
                term: &T,
                first: usize,
                count: usize,
            ) -> Vec<[f64; N]> {
                check(a, b, shape, first, count, $width * SUBS, $isa);
                #[target_feature(enable = $features)]
                unsafe fn run<const SUBS: usize, const N: usize, T: ChannelTerm<N>>(
                    a: &[f32],
                    b: &[f32],
                    shape: &NormShape,
                    init: f64,
                    term: &T,
                    first: usize,
                    count: usize,
                ) -> Vec<[f64; N]> {
                    unsafe { group_sums::<$width, $lanes, SUBS, N>(a, b, shape, init, term, first, count) }
                }
                // SAFETY: `check` found the instruction set on this CPU (`detected` includes
                // AVX2 and FMA in both) and bounds every read.
                unsafe { run::<SUBS, N, T>(a, b, shape, init, term, first, count) }
            }
        };
    }

    simd_path!(
        /// The AVX2 path: four channels a register.
        avx2, Avx2, 4, Isa::Avx2, "avx2,fma"
    );
    simd_path!(
        /// The AVX-512 path: eight channels a register.
        avx512, Avx512, 8, Isa::Avx512, "avx512f,avx512vl,avx2,fma"
    );

    /// Panics unless the group and sizes are in bounds and the CPU has `isa`.
    fn check(a: &[f32], b: &[f32], shape: &NormShape, first: usize, count: usize, size: usize, isa: Isa) {
        assert!(
            (1..=size).contains(&count) && first + count <= shape.channels,
            "batch norm: channel group"
        );
        assert!(
            a.len() == shape.batch * shape.channels * shape.positions && b.len() == a.len(),
            "batch norm: input sizes"
        );
        assert!(isa::detected() >= isa, "batch norm: the {} sums on a CPU without it", isa.name());
    }

    /// The sums of channels `first..first + count` with `SUBS` registers of `W` channels per
    /// sum; a group short of `W * SUBS` repeats its last channel (the copies are dropped). Blocks
    /// of `W` positions are turned around in registers, the rest gathered a position at a time.
    ///
    /// # Safety
    /// The CPU must have `L`'s instruction set, and the group must be in bounds (`check`).
    #[inline(always)]
    unsafe fn group_sums<const W: usize, L: Lanes<W>, const SUBS: usize, const N: usize>(
        a: &[f32],
        b: &[f32],
        shape: &NormShape,
        init: f64,
        term: &impl ChannelTerm<N>,
        first: usize,
        count: usize,
    ) -> Vec<[f64; N]> {
        let channels: [[usize; W]; SUBS] = std::array::from_fn(|s| std::array::from_fn(|l| first + (W * s + l).min(count - 1)));
        // SAFETY (all `L` calls and `terms`): the caller guarantees `L`'s instruction set.
        let terms = channels.each_ref().map(|group| unsafe { term.lanes::<W, L>(group) });
        let mut sums = [[unsafe { L::splat64(init) }; SUBS]; N];
        let positions = shape.positions;
        for image in 0..shape.batch {
            let start = |c: usize| (image * shape.channels + c) * positions;
            let xs = channels.map(|lanes| lanes.map(|c| a[start(c)..][..positions].as_ptr()));
            let ys = channels.map(|lanes| lanes.map(|c| b[start(c)..][..positions].as_ptr()));
            let whole = positions / W * W;
            for i in (0..whole).step_by(W) {
                for (s, terms) in terms.iter().enumerate() {
                    // SAFETY: `i + W <= positions`, the length of every run.
                    let (x, y) = unsafe { (L::columns(&xs[s], i), L::columns(&ys[s], i)) };
                    for p in 0..W {
                        for (sum, t) in sums.iter_mut().zip(unsafe { terms.terms(x[p], y[p]) }) {
                            sum[s] = unsafe { L::add64(sum[s], t) };
                        }
                    }
                }
            }
            for i in whole..positions {
                for (s, terms) in terms.iter().enumerate() {
                    // SAFETY: `i < positions`, the length of every run.
                    let (x, y) = unsafe { (L::column(&xs[s], i), L::column(&ys[s], i)) };
                    for (sum, t) in sums.iter_mut().zip(unsafe { terms.terms(x, y) }) {
                        sum[s] = unsafe { L::add64(sum[s], t) };
                    }
                }
            }
        }
        let lanes = sums.map(|registers| registers.map(|register| unsafe { L::lanes64(register) }));
        (0..count).map(|g| std::array::from_fn(|n| lanes[n][g / W][g % W])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every grouping of every path gives, bit for bit, the plain loop over each channel's terms
    /// (for `Values`, `iter().sum()` from -0.0): groups of 1 to 16 channels, full and short
    /// (a short group repeats its last channel), runs of 0 to 17 positions (whole blocks of four
    /// or eight, a tail, only a tail), a channel of negative zeros, and NaN, infinities and
    /// subnormals. The groupings are called directly, so the thread count cannot hide one; a SIMD
    /// path prints SKIPPED where the CPU lacks it. `channel_sums` itself is checked at the end.
    #[test]
    fn every_path_and_grouping_gives_plain_sums() {
        let channels = 19;
        for positions in 0..18 {
            let shape = NormShape {
                batch: 3,
                channels,
                positions,
            };
            let len = shape.batch * channels * positions;
            let mut x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1e-3 + (i % 3) as f32 * 1e5)
                .collect();
            for image in 0..shape.batch {
                x[(image * channels + channels / 2) * positions..][..positions].fill(-0.0);
            }
            let y: Vec<f32> = x.iter().rev().map(|v| v * 0.5 - 1.0).collect();
            let (mut x_odd, mut y_odd) = (x.clone(), y.clone());
            let specials = [f32::NAN, f32::INFINITY, -f32::MIN_POSITIVE / 4.0, f32::MIN_POSITIVE / 8.0, -0.0];
            for (i, special) in specials.into_iter().enumerate().filter(|_| len > 0) {
                x_odd[(i * 13) % len] = special;
                y_odd[(i * 29 + 7) % len] = special;
            }
            let means: Vec<f64> = (0..channels).map(|c| c as f64 * 0.75 - 2.0).collect();
            let scale: Vec<f32> = (0..channels).map(|c| 0.5 + c as f32 * 0.25).collect();
            let shift: Vec<f32> = (0..channels).map(|c| -0.125 * c as f32).collect();
            let mean: Vec<f32> = (0..channels).map(|c| c as f32 * 3.0).collect();
            let squares = SquaredDeviations { means: &means };
            let gradients = |leaky_slope| NormGradients {
                scale: &scale,
                shift: &shift,
                mean: &mean,
                leaky_slope,
            };
            for (x, y) in [(&x, &y), (&x_odd, &y_odd)] {
                let case = format!("{positions} positions");
                check_groupings(&shape, x, y, -0.0, &Values, &case);
                check_groupings(&shape, x, y, -0.0, &squares, &case);
                check_groupings(&shape, x, y, 0.0, &gradients(None), &case);
                check_groupings(&shape, x, y, 0.0, &gradients(Some(0.01)), &case);
            }
            // `iter().sum()` over a channel's values is the definition `Values` stands for.
            for (c, [sum]) in channel_sums(&x, &x, &shape, -0.0, &Values).iter().enumerate() {
                let plain: f64 = shape.runs(&x, c).flatten().map(|&v| v as f64).sum();
                assert_eq!(sum.to_bits(), plain.to_bits(), "{positions} positions, channel {c}");
            }
        }
    }

    /// Every group size of both paths, at every first channel, against the plain loop.
    fn check_groupings<const N: usize>(shape: &NormShape, x: &[f32], y: &[f32], init: f64, term: &impl ChannelTerm<N>, case: &str) {
        let groupings: [(&str, usize, GroupSums<_, N>); 4] = [
            ("portable x1", 1, portable_group_sums::<1, N>),
            ("portable x2", 2, portable_group_sums::<2, N>),
            ("portable x4", 4, portable_group_sums::<4, N>),
            ("portable x8", 8, portable_group_sums::<8, N>),
        ];
        #[cfg_attr(not(x86_kernels), allow(unused_mut))]
        let mut all: Vec<(&str, usize, GroupSums<_, N>)> = groupings.to_vec();
        #[cfg(x86_kernels)]
        {
            use crate::isa::{detected, Isa};
            if detected() >= Isa::Avx2 {
                all.push(("avx2 x4", 4, simd::avx2::<1, N, _>));
                all.push(("avx2 x8", 8, simd::avx2::<2, N, _>));
            } else {
                println!("SKIPPED avx2 channel sums: this CPU has no AVX2");
            }
            if detected() >= Isa::Avx512 {
                all.push(("avx512 x8", 8, simd::avx512::<1, N, _>));
                all.push(("avx512 x16", 16, simd::avx512::<2, N, _>));
            } else {
                println!("SKIPPED avx512 channel sums: this CPU has no AVX-512");
            }
        }
        let plain = plain_sums(shape, x, y, init, term);
        for (name, size, group_sums) in all {
            for first in 0..shape.channels {
                for count in 1..=size.min(shape.channels - first) {
                    let got = group_sums(x, y, shape, init, term, first, count);
                    assert_eq!(got.len(), count, "{name}, {case}");
                    for (g, sums) in got.iter().enumerate() {
                        assert_eq!(
                            bits(*sums),
                            bits(plain[first + g]),
                            "{name}, {case}, channels {first}+{count}, channel {}",
                            first + g
                        );
                    }
                }
            }
        }
        let through_dispatch = channel_sums(x, y, shape, init, term);
        assert!(
            through_dispatch.iter().map(|s| bits(*s)).eq(plain.iter().map(|s| bits(*s))),
            "channel_sums, {case}"
        );
    }

    /// The definition: each channel's terms added in image, then position order.
    fn plain_sums<const N: usize>(shape: &NormShape, x: &[f32], y: &[f32], init: f64, term: &impl ChannelTerm<N>) -> Vec<[f64; N]> {
        (0..shape.channels)
            .map(|c| {
                let mut sums = [init; N];
                for (&v, &g) in shape.runs(x, c).flatten().zip(shape.runs(y, c).flatten()) {
                    for (sum, t) in sums.iter_mut().zip(term.terms(c, v, g)) {
                        *sum += t;
                    }
                }
                sums
            })
            .collect()
    }

    /// Bits, with every NaN as one value (the paths agree on NaN, not on its payload).
    fn bits<const N: usize>(sums: [f64; N]) -> [u64; N] {
        sums.map(|v| if v.is_nan() { u64::MAX } else { v.to_bits() })
    }
}
