//! Square blocks of `f32` turned around in x86 registers: row `l` in, column `l` out.
//!
//! Why a module of its own: two kernels need the same shuffles. The weight gradient lays the
//! output gradient out position-major (`conv_cpu`), and batch norm's sums put channels side by
//! side in lanes (`channel_sums`); both read activations channel-major, a run of positions per
//! channel, so both turn blocks of channels x positions around.

#[cfg(x86_kernels)]
use std::arch::x86_64::*;

/// Four rows of four values to columns: `out[p][l] = rows[l][p]` (SSE, which every x86-64 has).
#[cfg(x86_kernels)]
#[inline]
pub fn transpose_4x4(rows: [__m128; 4]) -> [__m128; 4] {
    // SAFETY: SSE is part of x86-64.
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

/// Eight rows of eight values to columns: `out[p][l] = rows[l][p]` (24 shuffles).
///
/// # Safety
/// The CPU must have AVX (a caller compiled with AVX2 or AVX-512 calls it safely).
#[cfg(x86_kernels)]
#[target_feature(enable = "avx")]
#[inline]
pub fn transpose_8x8(r: [__m256; 8]) -> [__m256; 8] {
    let (t0, t1) = (_mm256_unpacklo_ps(r[0], r[1]), _mm256_unpackhi_ps(r[0], r[1]));
    let (t2, t3) = (_mm256_unpacklo_ps(r[2], r[3]), _mm256_unpackhi_ps(r[2], r[3]));
    let (t4, t5) = (_mm256_unpacklo_ps(r[4], r[5]), _mm256_unpackhi_ps(r[4], r[5]));
    let (t6, t7) = (_mm256_unpacklo_ps(r[6], r[7]), _mm256_unpackhi_ps(r[6], r[7]));
    let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
    let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
    let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
    let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

#[cfg(all(test, x86_kernels))]
mod tests {
    use super::*;

    /// Both transposes put row `l`'s value `p` at column `p`'s lane `l`.
    #[test]
    fn columns_hold_the_rows_values() {
        let value = |l: usize, p: usize| (10 * l + p) as f32;
        let mut out = [[0.0f32; 4]; 4];
        let rows: [__m128; 4] = std::array::from_fn(|l| {
            let row: [f32; 4] = std::array::from_fn(|p| value(l, p));
            // SAFETY: four values, read unaligned.
            unsafe { _mm_loadu_ps(row.as_ptr()) }
        });
        for (column, register) in out.iter_mut().zip(transpose_4x4(rows)) {
            // SAFETY: four values, written unaligned.
            unsafe { _mm_storeu_ps(column.as_mut_ptr(), register) };
        }
        assert!((0..4).all(|p| (0..4).all(|l| out[p][l] == value(l, p))), "{out:?}");
        if !std::is_x86_feature_detected!("avx") {
            println!("SKIPPED the 8 x 8 transpose: this CPU has no AVX");
            return;
        }
        let mut out = [[0.0f32; 8]; 8];
        // SAFETY: the CPU has AVX (checked above); eight values per load and store.
        unsafe {
            let rows: [__m256; 8] = std::array::from_fn(|l| {
                let row: [f32; 8] = std::array::from_fn(|p| value(l, p));
                _mm256_loadu_ps(row.as_ptr())
            });
            for (column, register) in out.iter_mut().zip(transpose_8x8(rows)) {
                _mm256_storeu_ps(column.as_mut_ptr(), register);
            }
        }
        assert!((0..8).all(|p| (0..8).all(|l| out[p][l] == value(l, p))), "{out:?}");
    }
}
