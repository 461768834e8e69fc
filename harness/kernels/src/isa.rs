//! Which instruction set the project's kernels run with: one choice, made in one place.
//!
//! The convolution micro-kernels and the elementwise passes each exist as AVX2 (+ FMA) code and
//! as portable code that performs the same IEEE operations in the same order, so both give the
//! same bits. That promise is only worth something if both paths are exercised on one machine:
//! `ATSO_KERNEL_ISA=portable` makes a process run the portable code on a CPU that has AVX2, and
//! tests force each path in turn ([`force`]) to compare whole training steps bit for bit.
//! `ATSO_KERNEL_ISA=avx2` (or `auto`, the default) uses AVX2 where the CPU has it; asking for it
//! on a CPU without it falls back to portable code, which `simd` in each record names.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// An instruction set the kernels have code for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(x86_kernels), allow(dead_code))]
pub enum Isa {
    /// Plain Rust (`f32::mul_add` for every fused multiply-add), compiled for the baseline CPU.
    Portable,
    /// AVX2 + FMA intrinsics (x86-64-v3).
    Avx2,
}

impl Isa {
    /// The name records and `atso bench` print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma",
        }
    }
}

/// The best instruction set this CPU runs (`std` caches the detection).
pub fn detected() -> Isa {
    #[cfg(x86_kernels)]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return Isa::Avx2;
    }
    Isa::Portable
}

/// What `ATSO_KERNEL_ISA` asks for, read once: `portable` forces the portable code, anything
/// else (`auto`, `avx2`, unset) takes what the CPU has.
fn configured() -> Isa {
    static CONFIGURED: OnceLock<Isa> = OnceLock::new();
    *CONFIGURED.get_or_init(|| match std::env::var("ATSO_KERNEL_ISA").as_deref() {
        Ok("portable") => Isa::Portable,
        _ => detected(),
    })
}

/// A forced choice (tests); 0 = none.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// The instruction set the kernels run with now. Checked at every tile, so it is one relaxed
/// atomic load plus a cached value.
#[inline]
pub fn current() -> Isa {
    match FORCED.load(Ordering::Relaxed) {
        1 => Isa::Portable,
        2 if detected() == Isa::Avx2 => Isa::Avx2,
        2 => Isa::Portable,
        _ => configured(),
    }
}

/// Holds a forced instruction set until dropped. Forcing is process-wide (kernels run on the
/// rayon pool's threads), so forcing callers take turns through one lock; everything else keeps
/// running meanwhile, on either path, with the same bits.
pub struct Forced {
    _turn: MutexGuard<'static, ()>,
}

impl Drop for Forced {
    fn drop(&mut self) {
        FORCED.store(0, Ordering::Relaxed);
    }
}

/// Makes the kernels run `isa` (AVX2 only where the CPU has it) until the guard is dropped.
pub fn force(isa: Isa) -> Forced {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    FORCED.store(
        match isa {
            Isa::Portable => 1,
            Isa::Avx2 => 2,
        },
        Ordering::Relaxed,
    );
    Forced { _turn: turn }
}
