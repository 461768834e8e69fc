//! Batch norm's per-channel sums in `f64`, each in one fixed order, with channels side by side in
//! SIMD lanes.
//!
//! Why a module of its own: a training step sums every normalized activation three times (the
//! mean, the squared deviations, the two gradient sums), and each channel's sum has to be one
//! chain of additions in image, then position order, so that a result does not depend on the
//! thread count or the CPU. A chain cannot be split across positions; what can run side by side
//! is the chains of several channels. Written as plain Rust, the compiler leaves that loop scalar
//! (a step spent about a tenth of its CPU time here), so the AVX2 path below turns blocks of four
//! positions of four channels around in registers and adds four channels' terms with one
//! instruction. Both paths perform each channel's IEEE operations in the same order, so they give
//! the same bits; the portable one is the definition the tests hold the other to.

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

    /// The same for the four channels `c` at one position, on AVX2 + FMA: the same operations,
    /// lane by lane.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[cfg(x86_kernels)]
    unsafe fn terms_avx2(
        &self,
        c: [usize; 4],
        x: std::arch::x86_64::__m128,
        y: std::arch::x86_64::__m128,
    ) -> [std::arch::x86_64::__m256d; N];
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
    unsafe fn terms_avx2(
        &self,
        _: [usize; 4],
        x: std::arch::x86_64::__m128,
        _: std::arch::x86_64::__m128,
    ) -> [std::arch::x86_64::__m256d; 1] {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees AVX2.
        unsafe { [_mm256_cvtps_pd(x)] }
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
    unsafe fn terms_avx2(
        &self,
        c: [usize; 4],
        x: std::arch::x86_64::__m128,
        _: std::arch::x86_64::__m128,
    ) -> [std::arch::x86_64::__m256d; 1] {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            let means = _mm256_setr_pd(self.means[c[0]], self.means[c[1]], self.means[c[2]], self.means[c[3]]);
            let deviation = _mm256_sub_pd(_mm256_cvtps_pd(x), means);
            [_mm256_mul_pd(deviation, deviation)]
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
    unsafe fn terms_avx2(
        &self,
        c: [usize; 4],
        x: std::arch::x86_64::__m128,
        y: std::arch::x86_64::__m128,
    ) -> [std::arch::x86_64::__m256d; 2] {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            let lanes = |values: &[f32]| _mm_setr_ps(values[c[0]], values[c[1]], values[c[2]], values[c[3]]);
            let gradient = match self.leaky_slope {
                None => y,
                Some(slope) => {
                    // `leaky_grad`: `y * slope` where the normalized value is below zero (false
                    // for NaN, as `<` is), else `y`; then `+ 0.0`. Multiply, then add: no FMA.
                    let normalized = _mm_add_ps(_mm_mul_ps(x, lanes(self.scale)), lanes(self.shift));
                    let negative = _mm_cmp_ps::<_CMP_LT_OQ>(normalized, _mm_setzero_ps());
                    let chosen = _mm_blendv_ps(y, _mm_mul_ps(y, _mm_set1_ps(slope)), negative);
                    _mm_add_ps(chosen, _mm_setzero_ps())
                }
            };
            let dy = _mm256_cvtps_pd(gradient);
            let mean = _mm256_cvtps_pd(lanes(self.mean));
            [dy, _mm256_mul_pd(dy, _mm256_sub_pd(_mm256_cvtps_pd(x), mean))]
        }
    }
}

/// For every channel `c`: `N` sums in `f64`, each starting from `init` and adding
/// `term.terms(c, x, y)` for the channel's values in image, then position order (`x` from `a`,
/// `y` from `b` at the same place). One thread takes a group of channels and chains their sums
/// side by side: independent additions keep the core's adders busy (a single chain waits on each
/// addition's latency), while every channel's sum keeps the order, and so the bits, of a plain
/// loop over its values. Groups hold up to 8 channels, fewer when that leaves threads idle;
/// neither the grouping nor the path (AVX2 from 4 channels a thread, else portable) changes a
/// bit.
pub fn channel_sums<const N: usize>(a: &[f32], b: &[f32], shape: &NormShape, init: f64, term: &impl ChannelTerm<N>) -> Vec<[f64; N]> {
    assert!(
        a.len() == shape.batch * shape.channels * shape.positions && b.len() == a.len(),
        "batch norm: input sizes"
    );
    let per_thread = shape.channels / rayon::current_num_threads();
    #[cfg(x86_kernels)]
    if isa::current() >= Isa::Avx2 && per_thread >= 4 {
        return if per_thread >= 8 {
            grouped(a, b, shape, init, term, 8, avx2::group_sums::<2, N>)
        } else {
            grouped(a, b, shape, init, term, 4, avx2::group_sums::<1, N>)
        };
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

#[cfg(x86_kernels)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::isa::{self, Isa};
    use super::{ChannelTerm, NormShape};

    /// The AVX2 path for `4 * SUBS` channels: `SUBS` registers of four channels per sum.
    pub(super) fn group_sums<const SUBS: usize, const N: usize>(
        a: &[f32],
        b: &[f32],
        shape: &NormShape,
        init: f64,
        term: &impl ChannelTerm<N>,
        first: usize,
        count: usize,
    ) -> Vec<[f64; N]> {
        assert!(
            (1..=4 * SUBS).contains(&count) && first + count <= shape.channels,
            "batch norm: channel group"
        );
        assert!(
            a.len() == shape.batch * shape.channels * shape.positions && b.len() == a.len(),
            "batch norm: input sizes"
        );
        assert!(isa::detected() >= Isa::Avx2, "batch norm: the AVX2 sums on a CPU without AVX2");
        // SAFETY: the CPU has AVX2 and FMA (`detected` checks both; checked above), and the
        // asserts above bound every read.
        unsafe { group_sums_avx2::<SUBS, N>(a, b, shape, init, term, first, count) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn group_sums_avx2<const SUBS: usize, const N: usize>(
        a: &[f32],
        b: &[f32],
        shape: &NormShape,
        init: f64,
        term: &impl ChannelTerm<N>,
        first: usize,
        count: usize,
    ) -> Vec<[f64; N]> {
        // Channels lane by lane; a group short of `4 * SUBS` repeats its last channel.
        let channels: [[usize; 4]; SUBS] = std::array::from_fn(|s| std::array::from_fn(|l| first + (4 * s + l).min(count - 1)));
        let mut sums = [[_mm256_set1_pd(init); SUBS]; N];
        let positions = shape.positions;
        for image in 0..shape.batch {
            let start = |c: usize| (image * shape.channels + c) * positions;
            let xs = channels.map(|lanes| lanes.map(|c| a[start(c)..][..positions].as_ptr()));
            let ys = channels.map(|lanes| lanes.map(|c| b[start(c)..][..positions].as_ptr()));
            let whole = positions / 4 * 4;
            for i in (0..whole).step_by(4) {
                // Four positions of each channel, turned into four positions' worth of channels.
                let columns: [[[__m128; 4]; 2]; SUBS] = std::array::from_fn(|s| {
                    // SAFETY: `i + 4 <= positions`, the length of every run.
                    let load = |rows: &[*const f32; 4]| transpose(rows.map(|row| unsafe { _mm_loadu_ps(row.add(i)) }));
                    [load(&xs[s]), load(&ys[s])]
                });
                for p in 0..4 {
                    for (s, [x, y]) in columns.iter().enumerate() {
                        // SAFETY: this function runs with AVX2.
                        let terms = unsafe { term.terms_avx2(channels[s], x[p], y[p]) };
                        for (sum, t) in sums.iter_mut().zip(terms) {
                            sum[s] = _mm256_add_pd(sum[s], t);
                        }
                    }
                }
            }
            for i in whole..positions {
                for s in 0..SUBS {
                    // SAFETY: `i < positions`, the length of every run.
                    let gather =
                        |rows: &[*const f32; 4]| unsafe { _mm_setr_ps(*rows[0].add(i), *rows[1].add(i), *rows[2].add(i), *rows[3].add(i)) };
                    // SAFETY: this function runs with AVX2.
                    let terms = unsafe { term.terms_avx2(channels[s], gather(&xs[s]), gather(&ys[s])) };
                    for (sum, t) in sums.iter_mut().zip(terms) {
                        sum[s] = _mm256_add_pd(sum[s], t);
                    }
                }
            }
        }
        let mut lanes = [[[0.0f64; 4]; SUBS]; N];
        for (lane, sum) in lanes.iter_mut().zip(&sums) {
            for (out, register) in lane.iter_mut().zip(sum) {
                // SAFETY: `out` holds four f64.
                unsafe { _mm256_storeu_pd(out.as_mut_ptr(), *register) };
            }
        }
        (0..count).map(|g| std::array::from_fn(|n| lanes[n][g / 4][g % 4])).collect()
    }

    /// Rows of four values to columns: `out[p][l] = rows[l][p]`.
    #[inline(always)]
    fn transpose(rows: [__m128; 4]) -> [__m128; 4] {
        // SAFETY: SSE, which every x86-64 has.
        unsafe {
            let low01 = _mm_unpacklo_ps(rows[0], rows[1]);
            let high01 = _mm_unpackhi_ps(rows[0], rows[1]);
            let low23 = _mm_unpacklo_ps(rows[2], rows[3]);
            let high23 = _mm_unpackhi_ps(rows[2], rows[3]);
            [
                _mm_movelh_ps(low01, low23),
                _mm_movehl_ps(low23, low01),
                _mm_movelh_ps(high01, high23),
                _mm_movehl_ps(high23, high01),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every grouping of both paths gives, bit for bit, the plain loop over each channel's terms
    /// (for `Values`, `iter().sum()` from -0.0): groups of 1 to 8 channels, full and short
    /// (a short group repeats its last channel), runs of 0 to 9 positions (whole blocks of four,
    /// a tail, only a tail), a channel of negative zeros, and NaN, infinities and subnormals.
    /// The groupings are called directly, so the thread count cannot hide one; the AVX2 path
    /// prints SKIPPED where the CPU lacks it. `channel_sums` itself is checked at the end.
    #[test]
    fn every_path_and_grouping_gives_plain_sums() {
        let channels = 11;
        for positions in 0..10 {
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
        if crate::isa::detected() >= crate::isa::Isa::Avx2 {
            all.push(("avx2 x4", 4, avx2::group_sums::<1, N>));
            all.push(("avx2 x8", 8, avx2::group_sums::<2, N>));
        } else {
            println!("SKIPPED avx2 channel sums: this CPU has no AVX2");
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
