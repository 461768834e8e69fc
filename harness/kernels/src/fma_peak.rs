//! The multiply-add peak of this machine on the kernels' instruction set, timed on the current
//! rayon pool's threads: the reference `atso bench --layers` reads the kernels' rates against.
//!
//! Why not a GEMM: the same-run GEMM rate the benchmarks print is a library's (PyTorch's MKL or
//! flex's gemm crate), and libraries reach different shares of a CPU: on a Zen 5 EPYC PyTorch's
//! 1024^3 product ran at 210 to 240 GFLOP/s on two cores while the forward tile alone ran at
//! 280 a core, so "a share of the GEMM rate" there was above 1 and said nothing about how close to
//! the machine the kernels are. A loop of independent fused multiply-adds, as many chains as
//! cover the instruction's latency on both FMA pipes, is what no kernel can beat.

use super::isa::{self, Isa};

/// Multiply-adds each chain takes per timed call (about 3 ms at AVX-512's 24 chains on a 4.7 GHz
/// core, long beside starting the pool's threads).
const STEPS: usize = 1 << 20;
/// Independent chains: 24 registers on AVX-512 and 12 on AVX2 (an FMA's 4-cycle latency on two
/// pipes needs 8 in flight), the same number of 8-lane arrays in the portable code.
const CHAINS: usize = 24;

/// GFLOP/s of independent multiply-adds on the instruction set `isa::current` picks, every thread
/// of the current rayon pool running its own chains at once: the best of `calls` timed calls
/// after one untimed (interference from other tenants only ever adds time).
pub fn fma_peak_gflops(calls: usize) -> f64 {
    let isa = isa::current();
    let threads = rayon::current_num_threads();
    let (lanes, chains) = match isa {
        Isa::Avx512 => (16, CHAINS),
        Isa::Avx2 => (8, CHAINS / 2),
        Isa::Portable => (8, CHAINS / 2),
    };
    let flops = 2.0 * (lanes * chains * STEPS * threads) as f64;
    let once = || {
        rayon::broadcast(|_| std::hint::black_box(chains_of(isa, STEPS)));
    };
    once();
    let best = (0..calls.max(1))
        .map(|_| {
            let clock = std::time::Instant::now();
            once();
            clock.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    flops / best / 1e9
}

/// Runs `steps` multiply-adds on each chain of `isa` (one this CPU has) and returns their sum
/// (so none is dead).
fn chains_of(isa: Isa, steps: usize) -> f32 {
    assert!(isa <= isa::detected(), "the FMA peak of {isa:?}, which this CPU lacks");
    match isa {
        // SAFETY: the CPU has `isa` (asserted above).
        #[cfg(x86_kernels)]
        Isa::Avx512 => unsafe { chains_avx512(steps) },
        #[cfg(x86_kernels)]
        Isa::Avx2 => unsafe { chains_avx2(steps) },
        _ => chains_portable(steps),
    }
}

/// Values that keep every chain finite for any number of steps: `x * A + B` with `A < 1` and
/// `B = 1 - A` has its fixed point at 1, which every chain (starting at 0 to 23) approaches.
const A: f32 = 0.999;
const B: f32 = 1.0 - A;

#[cfg(x86_kernels)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn chains_avx512(steps: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(A), _mm512_set1_ps(B));
    let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..steps {
        for x in &mut acc {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
}

#[cfg(x86_kernels)]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_avx2(steps: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(A), _mm256_set1_ps(B));
    let mut acc: [__m256; CHAINS / 2] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
    for _ in 0..steps {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut lanes = [0.0f32; 8];
    acc.iter().fold(0.0, |sum, &x| {
        _mm256_storeu_ps(lanes.as_mut_ptr(), x);
        sum + lanes.iter().sum::<f32>()
    })
}

/// The portable kernels' multiply-add (`f32::mul_add`) over arrays of 8 values.
fn chains_portable(steps: usize) -> f32 {
    let mut acc = [[0.0f32; 8]; CHAINS / 2];
    for (i, chain) in acc.iter_mut().enumerate() {
        chain.fill(i as f32);
    }
    for _ in 0..steps {
        for chain in &mut acc {
            for x in chain.iter_mut() {
                *x = x.mul_add(A, B);
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path this CPU has gives a finite, positive rate (what it measures is timing; this
    /// checks that it measures), and its chains stay finite.
    #[test]
    fn every_path_measures_a_rate() {
        for isa in isa::compared_in("the FMA peak") {
            let _forced = isa::force(isa);
            let rate = fma_peak_gflops(1);
            assert!(rate.is_finite() && rate > 0.0, "{isa:?}: {rate}");
            let sum = chains_of(isa, 1000);
            assert!(sum.is_finite() && sum > 0.0, "{isa:?}: {sum}");
        }
    }
}
