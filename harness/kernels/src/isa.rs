//! Which instruction set the project's kernels run with: one choice, made in one place.
//!
//! The convolution micro-kernels and the elementwise passes each exist as AVX-512, AVX2 (+ FMA)
//! and portable code that perform the same IEEE operations in the same order for every output
//! value (a wider register holds more output values, never a reordered sum), so all of them give
//! the same bits. That promise is only worth something if the paths are exercised on one machine:
//! `ATSO_KERNEL_ISA` caps what a process uses (`portable`, `avx2`, `avx512`; `auto`, the default,
//! takes the best the CPU has), and tests force each path in turn ([`force`]) to compare whole
//! training steps bit for bit. A cap above what the CPU has falls back to the best it has, which
//! `simd` in each record names.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// An instruction set the kernels have code for, from the narrowest up (the order is the order
/// of capability: a CPU that runs one runs every one before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(not(x86_kernels), allow(dead_code))]
pub enum Isa {
    /// Plain Rust (`f32::mul_add` for every fused multiply-add), compiled for the baseline CPU.
    Portable,
    /// AVX2 + FMA intrinsics (x86-64-v3).
    Avx2,
    /// AVX-512 Foundation intrinsics (with AVX2 + FMA, which every AVX-512 CPU has).
    Avx512,
}

impl Isa {
    /// Every instruction set, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name records and `atso bench` print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }

    /// The value of `ATSO_KERNEL_ISA` that caps the kernels at this instruction set.
    pub fn setting(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Its value in `FORCED` (0 there means none).
    fn code(self) -> u8 {
        self as u8 + 1
    }
}

/// The best instruction set this CPU runs (`std` caches the detection).
pub fn detected() -> Isa {
    #[cfg(x86_kernels)]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        // VL as well: the tiles' halves and sums use 256-bit registers beside 512-bit ones, and
        // without VL only 16 of the 32 can hold them (LLVM then spilled the accumulators).
        if avx2 && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The instruction sets this CPU runs, narrowest first (what tests compare).
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|&isa| isa <= detected()).collect()
}

/// The instruction sets this CPU lacks.
pub fn missing() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|&isa| isa > detected()).collect()
}

/// The instruction sets a test compares (`available`), after printing `SKIPPED <isa> in <test>`
/// for each one this CPU lacks, so a passing test says what it could not check.
pub fn compared_in(test: &str) -> Vec<Isa> {
    for isa in missing() {
        eprintln!("SKIPPED {isa:?} in {test}: this CPU lacks it");
    }
    available()
}

/// The cap a value of `ATSO_KERNEL_ISA` sets: `portable`, `avx2`, `avx512` (or the names records
/// carry, `avx2+fma`, `avx512f`); `auto` or an empty value sets none. Anything else is an error
/// that names the variable and what it takes.
pub fn parse_setting(value: &str) -> Result<Option<Isa>, String> {
    match value {
        "" | "auto" => Ok(None),
        _ => Isa::ALL
            .into_iter()
            .find(|isa| isa.setting() == value || isa.name() == value)
            .map(Some)
            .ok_or_else(|| format!("ATSO_KERNEL_ISA={value}: expected auto, portable, avx2 or avx512")),
    }
}

/// Checks `ATSO_KERNEL_ISA` (the command line calls this first, so a misspelt value stops the
/// program with one clear error instead of silently running another instruction set).
pub fn check_setting() -> Result<(), String> {
    match std::env::var("ATSO_KERNEL_ISA") {
        Ok(value) => parse_setting(&value).map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// What `ATSO_KERNEL_ISA` asks for, read once, capped at what the CPU has (a value
/// `check_setting` refuses sets no cap here).
fn configured() -> Isa {
    static CONFIGURED: OnceLock<Isa> = OnceLock::new();
    *CONFIGURED.get_or_init(|| {
        let value = std::env::var("ATSO_KERNEL_ISA").unwrap_or_default();
        parse_setting(&value).ok().flatten().unwrap_or(Isa::Avx512).min(detected())
    })
}

/// A forced choice (tests): 0 = none, else `Isa::code`.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// The instruction set the kernels run with now. Checked at every tile, so it is one relaxed
/// atomic load plus a cached value.
#[inline]
pub fn current() -> Isa {
    match FORCED.load(Ordering::Relaxed) {
        0 => configured(),
        code => Isa::ALL[usize::from(code) - 1].min(detected()),
    }
}

/// Holds a forced instruction set until dropped. Forcing is process-wide (kernels run on the
/// rayon pool's threads), so forcing callers take turns through one lock; everything else keeps
/// running meanwhile, on any path, with the same bits.
pub struct Forced {
    _turn: MutexGuard<'static, ()>,
}

impl Drop for Forced {
    fn drop(&mut self) {
        FORCED.store(0, Ordering::Relaxed);
    }
}

/// Makes the kernels run `isa` (or the best this CPU has, if it lacks `isa`) until the guard is
/// dropped.
pub fn force(isa: Isa) -> Forced {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    FORCED.store(isa.code(), Ordering::Relaxed);
    Forced { _turn: turn }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_caps_at_what_the_cpu_has() {
        for isa in Isa::ALL {
            let _forced = force(isa);
            assert_eq!(current(), isa.min(detected()));
        }
        assert_eq!(available().first(), Some(&Isa::Portable));
        assert_eq!(available().last(), Some(&detected()));
        let settings: Vec<_> = Isa::ALL.iter().map(|isa| isa.setting()).collect();
        assert_eq!(settings, ["portable", "avx2", "avx512"]);
        assert_eq!(available().len() + missing().len(), Isa::ALL.len());
    }

    #[test]
    fn settings_are_read_strictly() {
        assert_eq!(parse_setting("auto"), Ok(None));
        assert_eq!(parse_setting(""), Ok(None));
        assert_eq!(parse_setting("avx2"), Ok(Some(Isa::Avx2)));
        assert_eq!(parse_setting("avx2+fma"), Ok(Some(Isa::Avx2)));
        assert_eq!(parse_setting("avx512f"), Ok(Some(Isa::Avx512)));
        let error = parse_setting("avx-512").unwrap_err();
        assert!(
            error.contains("ATSO_KERNEL_ISA=avx-512") && error.contains("portable, avx2 or avx512"),
            "{error}"
        );
    }
}
