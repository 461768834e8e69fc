//! The two inner loops every convolution pass runs, each written three times: with AVX-512
//! intrinsics, with AVX2 + FMA intrinsics, and as plain Rust with `f32::mul_add` for every other
//! CPU.
//!
//! Why our own loops rather than a GEMM crate: the convolutions read their input straight from a
//! zero-padded copy of the image (no im2col matrix, no operand packing), which a GEMM interface
//! cannot express; at 16 channels those copies cost as much as the arithmetic. And because every
//! version performs the same fused multiply-adds in the same order for each output value (a wider
//! register holds more output values side by side, it never splits or reorders one sum), every
//! CPU computes the same bits: results depend neither on the instruction set nor on cache sizes,
//! only on the code.
//!
//! Every path takes every tile the callers in `conv_cpu` ask for (one code path there): a forward
//! tile of one to three `HALF_TILE`s of positions and up to `MAX_BLOCK` channels, a
//! weight-gradient call of up to `WEIGHT_GROUPS` x `LANES` channels and `weight_taps` taps. The
//! callers size them for the path they read once per call (`forward_block`,
//! `forward_tile_positions`, `run_positions`): AVX-512 fills 8 channels x 48 positions (24
//! accumulators, three runs of 16 positions or six of 8, each run where the caller puts it) and a
//! weight-gradient call up to 24 accumulators; AVX2 and the portable code run a tile as half-tiles
//! of two runs of 8, up to 6 channels, and blocks of `BLOCK` taps (a tile wider than the path, as
//! when a test forces another path mid-call, runs slowly with the same bits).

use super::isa;

/// Output positions one forward tile computes (two AVX-512 registers, four AVX2 ones).
pub const TILE: usize = 32;
/// The most positions a forward tile takes: three AVX-512 registers a channel (24 accumulators
/// at 8 channels, three loads and eight broadcasts a tap where two registers took two and eight
/// for 16 multiply-adds); other paths run it as half-tiles.
pub const MAX_TILE: usize = 3 * HALF_TILE;

/// Positions per forward tile on `isa`: `MAX_TILE` on AVX-512, else `TILE`.
pub fn forward_tile_positions(isa: isa::Isa) -> usize {
    match isa {
        isa::Isa::Avx512 => MAX_TILE,
        _ => TILE,
    }
}
/// Output channels one AVX2 or portable forward tile computes (12 of AVX2's 16 registers
/// accumulate), and taps per weight-gradient block.
pub const BLOCK: usize = 6;
/// Output channels one AVX-512 forward tile computes (16 of its 32 registers accumulate): 16 and
/// 32 channels are whole blocks of 8 (in blocks of 6, before the blocks were evened out, they
/// left a last block of 4 or 2).
pub const MAX_BLOCK: usize = 8;

/// Output channels per forward block on `isa`, the stride of the packed weights: the caller
/// reads the instruction set once and packs for it; `forward_tile` takes any block up to
/// `MAX_BLOCK` on every path (a path narrower than the block runs it slowly, with the same
/// bits), so a test forcing another path mid-call changes no result.
pub fn forward_block(isa: isa::Isa) -> usize {
    match isa {
        isa::Isa::Avx512 => MAX_BLOCK,
        _ => BLOCK,
    }
}
/// Output channels per weight-gradient channel group (one AVX2 register).
pub const LANES: usize = 8;
/// Channel groups one weight-gradient tile computes at most (two AVX-512 registers).
pub const WEIGHT_GROUPS: usize = 4;

/// Taps one weight-gradient call takes at most: on AVX-512, up to 24 of its 32 registers then
/// accumulate (24 taps of 16 channels, or 12 of 32) where a block of 6 taps filled 6 or 12; the
/// other paths run such a call as blocks of `BLOCK` taps.
pub const WEIGHT_TAPS: usize = 4 * BLOCK;

/// Positions per forward half-tile (two AVX2 registers, one AVX-512 one): what a band of output
/// rows is rounded up to, so a band computes at most 15 extra positions per channel, not 31.
pub const HALF_TILE: usize = TILE / 2;

/// Where a run of a forward tile's positions lies: its first position in the source (relative
/// to `src`) and in each channel's output row (relative to `out + c * out_stride`). A run's
/// positions follow one another in both, so one register loads and stores them; runs need not
/// follow one another, so a tile can take the end of one output row and the start of the next
/// without computing the padding between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub src: usize,
    pub out: usize,
}

/// The widest run on `isa`: an AVX-512 register's 16, else an AVX2 register's 8 (the portable
/// code takes runs of 8 too). A run of 16 is two of 8 to the narrower paths; AVX-512 also takes
/// runs of 8, two to a register, where rows are 8 wide.
pub fn run_positions(isa: isa::Isa) -> usize {
    match isa {
        isa::Isa::Avx512 => HALF_TILE,
        _ => HALF_TILE / 2,
    }
}

/// Forward tile: for `c < channels` (at most `block`, at most `MAX_BLOCK`) and the positions `i <
/// run_len` of each run `r` of `runs` (one to three `HALF_TILE`s of positions in all, runs of 8 or
/// 16),
/// `out[c * out_stride + r.out + i] = start + Σ_k weights[k * block + c] * src[r.src + offsets[k] + i]`,
/// the sum taken as one fused multiply-add per tap, in tap order. `start` is `init[c]`, or with
/// `init` `None` the value already in `out`: a sum split over calls gives the same bits.
///
/// # Safety
/// `src` must be readable at `r.src + offsets[k] + i` for every run `r`, tap `k` and `i <
/// run_len`, `out` writable at `c * out_stride + r.out + i` for `c < channels` (and, with `init`
/// `None`, readable there, its values initialized); `weights` must hold `offsets.len() * block`
/// values and `init` at least `channels`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_tile(
    channels: usize,
    block: usize,
    run_len: usize,
    runs: &[Run],
    src: *const f32,
    offsets: &[usize],
    weights: &[f32],
    init: Option<&[f32]>,
    out: *mut f32,
    out_stride: usize,
) {
    assert!(
        (1..=block).contains(&channels)
            && block <= MAX_BLOCK
            && weights.len() >= offsets.len() * block
            && init.is_none_or(|i| i.len() >= channels)
    );
    let positions = runs.len() * run_len;
    assert!(
        (run_len == HALF_TILE || run_len == HALF_TILE / 2) && positions > 0 && positions.is_multiple_of(HALF_TILE) && positions <= MAX_TILE,
        "a forward tile is 1 to {} half-tiles of {HALF_TILE} positions, in runs of 8 or 16",
        MAX_TILE / HALF_TILE
    );
    macro_rules! dispatch {
        ($f:ident $(:: $r:literal)?, $runs:expr) => {
            match channels {
                1 => $f::<1 $(, $r)?>(src, $runs, offsets, weights, block, init, out, out_stride),
                2 => $f::<2 $(, $r)?>(src, $runs, offsets, weights, block, init, out, out_stride),
                3 => $f::<3 $(, $r)?>(src, $runs, offsets, weights, block, init, out, out_stride),
                4 => $f::<4 $(, $r)?>(src, $runs, offsets, weights, block, init, out, out_stride),
                5 => $f::<5 $(, $r)?>(src, $runs, offsets, weights, block, init, out, out_stride),
                6 => $f::<6 $(, $r)?>(src, $runs, offsets, weights, block, init, out, out_stride),
                7 => $f::<7 $(, $r)?>(src, $runs, offsets, weights, block, init, out, out_stride),
                _ => $f::<8 $(, $r)?>(src, $runs, offsets, weights, block, init, out, out_stride),
            }
        };
    }
    // The narrower paths take the tile as half-tiles of two runs of 8.
    macro_rules! in_halves {
        ($f:ident) => {
            for pair in runs_of_eight(run_len, runs)[..positions / 8].chunks_exact(2) {
                unsafe { dispatch!($f, &[pair[0], pair[1]]) };
            }
        };
    }
    match isa::current() {
        // SAFETY (all arms): `current` runs an instruction set only where the CPU has it; the
        // halves are the tile's runs, so the pointer contract is the caller's.
        #[cfg(x86_kernels)]
        isa::Isa::Avx512 if run_len == HALF_TILE => unsafe {
            match runs {
                [a, b, c] => dispatch!(forward_tile_avx512::3, &[*a, *b, *c]),
                [a, b] => dispatch!(forward_tile_avx512::2, &[*a, *b]),
                [a] => dispatch!(forward_tile_avx512::1, &[*a]),
                _ => unreachable!("checked above"),
            }
        },
        // Rows of 8 (the U-Net's deepest level), two runs to a register.
        #[cfg(x86_kernels)]
        isa::Isa::Avx512 => unsafe {
            match positions / HALF_TILE {
                3 => dispatch!(forward_tile_avx512_halves::3, runs),
                2 => dispatch!(forward_tile_avx512_halves::2, runs),
                _ => dispatch!(forward_tile_avx512_halves::1, runs),
            }
        },
        #[cfg(x86_kernels)]
        isa::Isa::Avx2 => in_halves!(forward_half_avx2),
        _ => in_halves!(forward_half_scalar),
    }
}

/// `runs` (of `run_len` positions) as runs of 8, for the paths that take a tile as half-tiles of
/// two runs of 8 (a run of 16 is two).
fn runs_of_eight(run_len: usize, runs: &[Run]) -> [Run; MAX_TILE / 8] {
    let mut eights = [Run { src: 0, out: 0 }; MAX_TILE / 8];
    let parts = runs.iter().flat_map(|run| {
        (0..run_len).step_by(8).map(|i| Run {
            src: run.src + i,
            out: run.out + i,
        })
    });
    for (eight, part) in eights.iter_mut().zip(parts) {
        *eight = part;
    }
    eights
}

/// Each tap's first `C` packed weights, `block` apart: a fixed-length array, so the tiles' loops
/// over channels unroll and their accumulators stay in registers.
fn tap_weights<const C: usize>(weights: &[f32], block: usize) -> impl Iterator<Item = &[f32; C]> {
    weights
        .chunks(block)
        .map(|w| w[..C].try_into().expect("a packed block holds the tile's channels"))
}

/// The forward tile's definition over two runs of 8 positions, in plain Rust.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_half_scalar<const C: usize>(
    src: *const f32,
    runs: &[Run; 2],
    offsets: &[usize],
    weights: &[f32],
    block: usize,
    init: Option<&[f32]>,
    out: *mut f32,
    out_stride: usize,
) {
    let mut acc = [[[0.0f32; 8]; 2]; C];
    for (c, pair) in acc.iter_mut().enumerate() {
        for (lanes, run) in pair.iter_mut().zip(runs) {
            match init {
                Some(init) => lanes.fill(init[c]),
                // SAFETY: readable at `c * out_stride + run.out + 0..8` (the caller's contract).
                None => lanes.copy_from_slice(unsafe { std::slice::from_raw_parts(out.add(c * out_stride + run.out), 8) }),
            }
        }
    }
    for (&offset, w) in offsets.iter().zip(tap_weights::<C>(weights, block)) {
        // SAFETY: readable at `run.src + offset + 0..8` (the caller's contract).
        let x = runs.map(|run| unsafe { std::slice::from_raw_parts(src.add(run.src + offset), 8) });
        for (pair, &wc) in acc.iter_mut().zip(w) {
            for (lanes, x) in pair.iter_mut().zip(x) {
                for (a, &xi) in lanes.iter_mut().zip(x) {
                    *a = wc.mul_add(xi, *a);
                }
            }
        }
    }
    for (c, pair) in acc.iter().enumerate() {
        for (lanes, run) in pair.iter().zip(runs) {
            // SAFETY: writable at `c * out_stride + run.out + 0..8` (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(lanes.as_ptr(), out.add(c * out_stride + run.out), 8) };
        }
    }
}

/// `forward_half_scalar` with two AVX2 registers per output channel, one a run.
#[cfg(x86_kernels)]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_half_avx2<const C: usize>(
    src: *const f32,
    runs: &[Run; 2],
    offsets: &[usize],
    weights: &[f32],
    block: usize,
    init: Option<&[f32]>,
    out: *mut f32,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY (pointers): the runs' starts, which the caller's contract makes readable.
    let (src0, src1) = unsafe { (src.add(runs[0].src), src.add(runs[1].src)) };
    let (out0, out1) = unsafe { (out.add(runs[0].out), out.add(runs[1].out)) };
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for (c, pair) in acc.iter_mut().enumerate() {
        *pair = match init {
            Some(init) => [_mm256_set1_ps(init[c]); 2],
            // SAFETY: readable at `c * out_stride + run.out + 0..8` (the caller's contract).
            None => unsafe { [_mm256_loadu_ps(out0.add(c * out_stride)), _mm256_loadu_ps(out1.add(c * out_stride))] },
        };
    }
    for (&offset, w) in offsets.iter().zip(tap_weights::<C>(weights, block)) {
        // SAFETY: readable at `run.src + offset + 0..8` (the caller's contract).
        let (x0, x1) = unsafe { (_mm256_loadu_ps(src0.add(offset)), _mm256_loadu_ps(src1.add(offset))) };
        for (pair, wc) in acc.iter_mut().zip(w) {
            let wc = _mm256_broadcast_ss(wc);
            pair[0] = _mm256_fmadd_ps(wc, x0, pair[0]);
            pair[1] = _mm256_fmadd_ps(wc, x1, pair[1]);
        }
    }
    for (c, pair) in acc.iter().enumerate() {
        // SAFETY: writable at `c * out_stride + run.out + 0..8` (the caller's contract).
        unsafe {
            _mm256_storeu_ps(out0.add(c * out_stride), pair[0]);
            _mm256_storeu_ps(out1.add(c * out_stride), pair[1]);
        }
    }
}

/// The forward tile with `R` AVX-512 registers per output channel, one a run of 16 positions:
/// the AVX2 half-tile's operations on up to three times the positions and `C` up to 8 channels
/// (at `R = 3`, `C = 8`: 24 accumulators, three loads and eight broadcasts per tap). Compiled with
/// AVX-512VL as every AVX-512 function here (`isa::detected` asks for it): without it LLVM may
/// put a value a 256-bit instruction touches only in the 16 registers VEX can name, which in the
/// halves tile spilled accumulators and halved its rate.
#[cfg(x86_kernels)]
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_tile_avx512<const C: usize, const R: usize>(
    src: *const f32,
    runs: &[Run; R],
    offsets: &[usize],
    weights: &[f32],
    block: usize,
    init: Option<&[f32]>,
    out: *mut f32,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY (pointers): the runs' starts, which the caller's contract makes readable.
    let srcs: [*const f32; R] = std::array::from_fn(|r| unsafe { src.add(runs[r].src) });
    let outs: [*mut f32; R] = std::array::from_fn(|r| unsafe { out.add(runs[r].out) });
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    for (c, regs) in acc.iter_mut().enumerate() {
        *regs = match init {
            Some(init) => [_mm512_set1_ps(init[c]); R],
            // SAFETY: readable at `c * out_stride + run.out + 0..16` (the caller's contract).
            None => std::array::from_fn(|r| unsafe { _mm512_loadu_ps(outs[r].add(c * out_stride)) }),
        };
    }
    for (&offset, w) in offsets.iter().zip(tap_weights::<C>(weights, block)) {
        // SAFETY: readable at `run.src + offset + 0..16` (the caller's contract).
        let x: [__m512; R] = std::array::from_fn(|r| unsafe { _mm512_loadu_ps(srcs[r].add(offset)) });
        for (regs, &wc) in acc.iter_mut().zip(w) {
            let wc = _mm512_set1_ps(wc);
            for (a, &xr) in regs.iter_mut().zip(&x) {
                *a = _mm512_fmadd_ps(wc, xr, *a);
            }
        }
    }
    for (c, regs) in acc.iter().enumerate() {
        for (&a, &at) in regs.iter().zip(&outs) {
            // SAFETY: writable at `c * out_stride + run.out + 0..16` (the caller's contract).
            unsafe { _mm512_storeu_ps(at.add(c * out_stride), a) };
        }
    }
}

/// The AVX-512 forward tile where each register is two runs of 8 positions (`runs` holds `2 R`
/// runs, a register's low half the first of its two): `forward_tile_avx512`'s operations, each
/// load two of 8 joined by one insert, each store two. Rows of 8 (the U-Net's deepest level) are
/// then taken in place: in bands of the padded layout (rows of 9) they computed 80 positions
/// for 64. Timed alone on data in L1 (Zen 5, 8 channels x 48 positions, 256 taps), it ran at the
/// rate of the tile over runs of 16 (280 GFLOP/s a core each); compiled without AVX-512VL, at
/// 150.
#[cfg(x86_kernels)]
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_tile_avx512_halves<const C: usize, const R: usize>(
    src: *const f32,
    runs: &[Run],
    offsets: &[usize],
    weights: &[f32],
    block: usize,
    init: Option<&[f32]>,
    out: *mut f32,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    assert_eq!(runs.len(), 2 * R);
    // SAFETY (pointers): the runs' starts, which the caller's contract makes readable.
    let srcs: [*const f32; R] = std::array::from_fn(|r| unsafe { src.add(runs[2 * r].src) });
    let outs: [*mut f32; R] = std::array::from_fn(|r| unsafe { out.add(runs[2 * r].out) });
    // How far each register's second run lies from its first (wrapping: it may lie before it).
    let src_highs: [usize; R] = std::array::from_fn(|r| runs[2 * r + 1].src.wrapping_sub(runs[2 * r].src));
    let out_highs: [usize; R] = std::array::from_fn(|r| runs[2 * r + 1].out.wrapping_sub(runs[2 * r].out));
    // SAFETY (callers): 8 values readable at `at` and at `at + high`.
    let join = |at: *const f32, high: usize| unsafe {
        let low = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(at)));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            low,
            _mm256_castps_pd(_mm256_loadu_ps(at.wrapping_add(high))),
        ))
    };
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    for (c, regs) in acc.iter_mut().enumerate() {
        *regs = match init {
            Some(init) => [_mm512_set1_ps(init[c]); R],
            // Readable at `c * out_stride + run.out + 0..8` (the caller's contract).
            None => std::array::from_fn(|r| join(outs[r].wrapping_add(c * out_stride).cast_const(), out_highs[r])),
        };
    }
    for (&offset, w) in offsets.iter().zip(tap_weights::<C>(weights, block)) {
        // Readable at `run.src + offset + 0..8` (the caller's contract).
        let x: [__m512; R] = std::array::from_fn(|r| join(srcs[r].wrapping_add(offset), src_highs[r]));
        for (regs, &wc) in acc.iter_mut().zip(w) {
            let wc = _mm512_set1_ps(wc);
            for (a, &xr) in regs.iter_mut().zip(&x) {
                *a = _mm512_fmadd_ps(wc, xr, *a);
            }
        }
    }
    for (c, regs) in acc.iter().enumerate() {
        for ((&a, &at), &high) in regs.iter().zip(&outs).zip(&out_highs) {
            let at = at.wrapping_add(c * out_stride);
            // SAFETY: writable at `c * out_stride + run.out + 0..8` (the caller's contract).
            unsafe {
                _mm256_storeu_ps(at, _mm512_castps512_ps256(a));
                let upper = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a));
                _mm256_storeu_ps(at.wrapping_add(high), _mm256_castpd_ps(upper));
            }
        }
    }
}

/// The positions a weight-gradient call chains over, in order: `rows` rows of `row_len`, row
/// `r`'s position `x` at `r * src_row + x` of each tap's input (the padded layout, rows
/// `padded_width` apart) and at `r * row_len + x` of the output gradient (no padding between its
/// rows). The padded layout's junk columns are never visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub rows: usize,
    pub row_len: usize,
    pub src_row: usize,
}

impl Positions {
    /// Where position `x` of row `r` lies in the input, and its index in the output gradient.
    #[inline(always)]
    fn at(&self, r: usize, x: usize) -> (usize, usize) {
        (r * self.src_row + x, r * self.row_len + x)
    }
}

/// Weight-gradient tile, with output channels along the registers: for `j < offsets.len()` (at
/// most `weight_taps(groups)`) and `c < LANES * groups` (`groups` at most `WEIGHT_GROUPS`),
/// continues the chain
/// `grad[j * grad_stride + c] = fma(src[offsets[j] + s], dyt[p * dyt_stride + c], grad[..])` over
/// the `positions` `(s, p)` in order (`Positions::at`). The chain is stored in `grad` between
/// calls, so splitting the positions across calls does not change a bit.
///
/// # Safety
/// `src` must be readable at `offsets[j] + s`, `dyt` at `p * dyt_stride + c`, and `grad` readable
/// and writable at `j * grad_stride + c`, for all `j`, positions `(s, p)` and `c < LANES *
/// groups`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weight_tile(
    groups: usize,
    src: *const f32,
    offsets: &[usize],
    dyt: *const f32,
    dyt_stride: usize,
    positions: Positions,
    grad: *mut f32,
    grad_stride: usize,
) {
    assert!((1..=WEIGHT_GROUPS).contains(&groups) && (1..=weight_taps(groups)).contains(&offsets.len()));
    // `weight_rows_avx512` over `count` rows of `w` taps starting at `starts`, `z` registers per
    // tap; the arms are the row counts it is instantiated for.
    #[cfg(x86_kernels)]
    macro_rules! avx512_rows {
        ($w:literal, $z:literal, $starts:expr, $count:expr, $($n:literal)+) => {
            match $count {
                $($n => weight_rows_avx512::<$n, $w, $z, { weight_unroll($n, $w, $z) }>(src, $starts[..$n].try_into().expect("rows"), dyt, dyt_stride, positions, grad, grad_stride, last_register_mask(groups)),)+
                _ => unreachable!("at most {} taps a call", WEIGHT_TAPS),
            }
        };
    }
    // The AVX-512 path keeps up to 24 accumulators over the whole call where the taps come in
    // rows of three neighbours (a 3-wide kernel's `kx = 0, 1, 2`), so one pointer serves a row.
    #[cfg(x86_kernels)]
    if isa::current() == isa::Isa::Avx512 {
        if let Some(rows) = tap_rows(offsets) {
            // SAFETY: AVX-512 is the CPU's (`current`); the rows' reads are the taps' reads and
            // the registers cover `LANES * groups` channels, so the contract is the caller's.
            unsafe {
                if groups > 2 {
                    avx512_rows!(3, 2, rows.starts, rows.len, 1 2 3 4)
                } else {
                    avx512_rows!(3, 1, rows.starts, rows.len, 1 2 3 4 5 6 7 8)
                }
            }
            return;
        }
    }
    if offsets.len() > BLOCK {
        for (block, block_offsets) in offsets.chunks(BLOCK).enumerate() {
            // SAFETY: the same contract, for the taps of this block.
            unsafe {
                weight_tile(
                    groups,
                    src,
                    block_offsets,
                    dyt,
                    dyt_stride,
                    positions,
                    grad.add(block * BLOCK * grad_stride),
                    grad_stride,
                )
            };
        }
        return;
    }
    macro_rules! dispatch {
        ($f:ident, $r:literal, $dyt:expr, $grad:expr) => {
            match offsets.len() {
                6 => $f::<$r, 6>(src, offsets, $dyt, dyt_stride, positions, $grad, grad_stride),
                5 => $f::<$r, 5>(src, offsets, $dyt, dyt_stride, positions, $grad, grad_stride),
                4 => $f::<$r, 4>(src, offsets, $dyt, dyt_stride, positions, $grad, grad_stride),
                3 => $f::<$r, 3>(src, offsets, $dyt, dyt_stride, positions, $grad, grad_stride),
                2 => $f::<$r, 2>(src, offsets, $dyt, dyt_stride, positions, $grad, grad_stride),
                _ => $f::<$r, 1>(src, offsets, $dyt, dyt_stride, positions, $grad, grad_stride),
            }
        };
    }
    // AVX2 and the portable code run the tile as halves of at most two groups (16 channels);
    // each channel's chain is the same whichever half holds it.
    macro_rules! in_halves {
        ($f:ident) => {
            for first in (0..groups).step_by(2) {
                let (dyt, grad) = (dyt.add(first * LANES), grad.add(first * LANES));
                if groups - first >= 2 {
                    dispatch!($f, 2, dyt, grad)
                } else {
                    dispatch!($f, 1, dyt, grad)
                }
            }
        };
    }
    match isa::current() {
        // SAFETY (all arms): `current` runs an instruction set only where the CPU has it; the
        // registers and halves cover `LANES * groups` channels, so the pointer contract is the
        // caller's.
        #[cfg(x86_kernels)]
        isa::Isa::Avx512 => unsafe {
            // Each tap a row of its own, two channel groups per register.
            if groups > 2 {
                avx512_rows!(1, 2, offsets, offsets.len(), 1 2 3 4 5 6)
            } else {
                avx512_rows!(1, 1, offsets, offsets.len(), 1 2 3 4 5 6)
            }
        },
        #[cfg(x86_kernels)]
        isa::Isa::Avx2 => unsafe { in_halves!(weight_tile_avx2) },
        _ => unsafe { in_halves!(weight_tile_scalar) },
    }
}

unsafe fn weight_tile_scalar<const R: usize, const T: usize>(
    src: *const f32,
    offsets: &[usize],
    dyt: *const f32,
    dyt_stride: usize,
    positions: Positions,
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
    for (s, p) in (0..positions.rows).flat_map(|r| (0..positions.row_len).map(move |x| positions.at(r, x))) {
        // SAFETY: readable at `p * dyt_stride + 0..8R` (the caller's contract).
        let g = unsafe { std::slice::from_raw_parts(dyt.add(p * dyt_stride), 8 * R) };
        for (row, &offset) in acc.iter_mut().zip(offsets) {
            // SAFETY: readable at `offset + s` (the caller's contract).
            let x = unsafe { *src.add(offset + s) };
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
    positions: Positions,
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
    for r in 0..positions.rows {
        for x in 0..positions.row_len {
            let (s, p) = positions.at(r, x);
            // SAFETY: readable at `p * dyt_stride + 0..8R` (the caller's contract).
            let g: [__m256; R] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(dyt.add(p * dyt_stride + 8 * r)) });
            for (row, tap) in acc.iter_mut().zip(&taps) {
                // SAFETY: readable at `offset + s` (the caller's contract).
                let x = unsafe { _mm256_broadcast_ss(&*tap.add(s)) };
                for (a, &gr) in row.iter_mut().zip(&g) {
                    *a = _mm256_fmadd_ps(x, gr, *a);
                }
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

/// Taps one weight-gradient call of `groups` channel groups takes at most: 24 accumulating
/// registers' worth on AVX-512 (24 taps of up to 16 channels, 12 of up to 32).
pub fn weight_taps(groups: usize) -> usize {
    if groups > 2 {
        WEIGHT_TAPS / 2
    } else {
        WEIGHT_TAPS
    }
}

/// The first offset of each row of three neighbouring taps (`o, o + 1, o + 2`), when `offsets`
/// is such rows one after another (at most `WEIGHT_TAPS` taps); None otherwise.
#[cfg(x86_kernels)]
fn tap_rows(offsets: &[usize]) -> Option<TapRows> {
    if !offsets.len().is_multiple_of(3) || offsets.len() > WEIGHT_TAPS {
        return None;
    }
    let mut rows = TapRows {
        starts: [0; WEIGHT_TAPS / 3],
        len: offsets.len() / 3,
    };
    for (start, t) in rows.starts.iter_mut().zip(offsets.chunks_exact(3)) {
        if t[1] != t[0] + 1 || t[2] != t[0] + 2 {
            return None;
        }
        *start = t[0];
    }
    Some(rows)
}

/// The first offsets of `len` rows of three neighbouring taps.
#[cfg(x86_kernels)]
struct TapRows {
    starts: [usize; WEIGHT_TAPS / 3],
    len: usize,
}

/// Positions the AVX-512 weight tile takes per step for `rows` rows of `w` taps and `z` registers
/// a tap: as many as fit the 32 registers beside the accumulators (`rows w z` of them), `z` per
/// position for the output gradient and `u + w - 1` broadcast inputs per row, at most 4. In a row
/// of neighbouring taps, tap `kx` at position `p + u` reads the input tap `kx + 1` reads at
/// `p + u - 1`, so a step of `u` positions broadcasts `u + 2` values per row instead of `3 u`; at
/// 16 channels, where a position's 24 taps took 25 loads for 24 multiply-adds, the loads bound
/// the tile. A tap of its own (`w = 1`) shares nothing, and takes one position a step.
#[cfg(x86_kernels)]
const fn weight_unroll(rows: usize, w: usize, z: usize) -> usize {
    let mut u = 4;
    while u > 1 && (w == 1 || rows * w * z + u * z + u + w - 1 > 32) {
        u -= 1;
    }
    u
}

/// Broadcast inputs a row keeps for one step at most (`weight_unroll`'s 4 positions of 3 taps).
#[cfg(x86_kernels)]
const MAX_ROW_INPUTS: usize = 6;

/// The weight-gradient tile on AVX-512 over `ROWS` rows of `W` neighbouring taps (tap `W r + kx`
/// reads `src[rows[r] + kx + s]`; `W = 1` takes any taps, `W = 3` a 3-wide kernel's rows with one
/// pointer per row), with `Z` registers (two channel groups each) per tap: `ROWS W Z`
/// accumulators, each continuing its chain over the positions in order, `U` positions of a row a
/// step (`weight_unroll`; every chain still takes them one after the other). The last register's
/// lanes are `last_mask` (`0x00ff` when it holds one group: a masked load, so nothing past the
/// tile is read, and a masked store).
#[cfg(x86_kernels)]
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_rows_avx512<const ROWS: usize, const W: usize, const Z: usize, const U: usize>(
    src: *const f32,
    rows: [usize; ROWS],
    dyt: *const f32,
    dyt_stride: usize,
    positions: Positions,
    grad: *mut f32,
    grad_stride: usize,
    last_mask: u16,
) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; Z] = std::array::from_fn(|z| if z + 1 == Z { last_mask } else { 0xffff });
    // SAFETY (pointers): offsets the caller's contract makes readable.
    let starts: [*const f32; ROWS] = std::array::from_fn(|r| unsafe { src.add(rows[r]) });
    // SAFETY: the masked lanes of tap `W r + kx` are readable (the caller's contract).
    let mut acc: [[[__m512; Z]; W]; ROWS] = std::array::from_fn(|r| {
        std::array::from_fn(|kx| {
            std::array::from_fn(|z| unsafe { _mm512_maskz_loadu_ps(masks[z], grad.add((W * r + kx) * grad_stride + 16 * z)) })
        })
    });
    assert!(
        U >= 1 && U + W - 1 <= MAX_ROW_INPUTS,
        "weight tile: {U} positions of {W} taps a step"
    );
    // SAFETY: the masked lanes are readable at `p * dyt_stride + ..` (the caller's contract).
    let gradient_at =
        |p: usize| -> [__m512; Z] { std::array::from_fn(|z| unsafe { _mm512_maskz_loadu_ps(masks[z], dyt.add(p * dyt_stride + 16 * z)) }) };
    // Steps of `U` positions within each row, then the row's last positions one at a time.
    let whole = positions.row_len / U * U;
    for r in 0..positions.rows {
        for x in (0..whole).step_by(U) {
            let (s, p) = positions.at(r, x);
            let g: [[__m512; Z]; U] = std::array::from_fn(|u| gradient_at(p + u));
            for (row, &start) in acc.iter_mut().zip(&starts) {
                // SAFETY: tap `W r + kx` is readable at `offset + s + u` for `u < U` (the
                // caller's contract), which are these `U + W - 1` values; the rest are never read.
                let x: [__m512; MAX_ROW_INPUTS] = std::array::from_fn(|j| {
                    if j < U + W - 1 {
                        _mm512_set1_ps(unsafe { *start.add(s + j) })
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for (u, gu) in g.iter().enumerate() {
                    for (kx, taps) in row.iter_mut().enumerate() {
                        for (a, &gz) in taps.iter_mut().zip(gu) {
                            *a = _mm512_fmadd_ps(x[u + kx], gz, *a);
                        }
                    }
                }
            }
        }
        for x in whole..positions.row_len {
            let (s, p) = positions.at(r, x);
            let g = gradient_at(p);
            for (row, &start) in acc.iter_mut().zip(&starts) {
                for (kx, taps) in row.iter_mut().enumerate() {
                    // SAFETY: tap `W r + kx` is readable at `offset + s` (the caller's contract).
                    let x = _mm512_set1_ps(unsafe { *start.add(kx + s) });
                    for (a, &gz) in taps.iter_mut().zip(&g) {
                        *a = _mm512_fmadd_ps(x, gz, *a);
                    }
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (kx, taps) in row.iter().enumerate() {
            for (z, a) in taps.iter().enumerate() {
                // SAFETY: the masked lanes are writable (the caller's contract).
                unsafe { _mm512_mask_storeu_ps(grad.add((W * r + kx) * grad_stride + 16 * z), masks[z], *a) };
            }
        }
    }
}

/// The AVX-512 weight tile's mask for its last register: half of it where `groups` is odd.
#[cfg(x86_kernels)]
fn last_register_mask(groups: usize) -> u16 {
    if groups % 2 == 1 {
        0x00ff
    } else {
        0xffff
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

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// On every instruction set this CPU has, the forward tile (one to three half-tiles, in runs
    /// of 8 or 16 that follow one another or lie apart) gives the bits of its definition (one
    /// `mul_add` per tap, in tap order), also when its taps are split over two calls, for blocks
    /// of 6 and 8 packed channels (any block on any path), and writes nothing outside its runs.
    #[test]
    fn the_forward_tile_gives_its_definitions_bits_on_every_isa() {
        const ROW: usize = 2 * MAX_TILE + 8;
        let src = values(460, 1);
        let offsets = [0usize, 7, 33, 120, 121, 250, 300, 301, 302];
        let init = values(MAX_BLOCK, 3);
        // Runs one after the other (a band of the padded layout), and runs with gaps between them
        // in the source and in the output (output rows without their padding).
        let layouts = |run_len: usize| {
            (1..=MAX_TILE / run_len)
                .filter(move |n| (n * run_len).is_multiple_of(HALF_TILE))
                .flat_map(move |n| {
                    let together = (0..n)
                        .map(|i| Run {
                            src: i * run_len,
                            out: i * run_len,
                        })
                        .collect::<Vec<_>>();
                    let apart = (0..n)
                        .map(|i| Run {
                            src: i * (run_len + 5) + 1,
                            out: i * (run_len + 3),
                        })
                        .collect();
                    [together, apart]
                })
        };
        for isa in isa::compared_in("the forward tile") {
            let _forced = isa::force(isa);
            for (run_len, runs) in [8, 16].into_iter().flat_map(|len| layouts(len).map(move |runs| (len, runs))) {
                for block in [BLOCK, MAX_BLOCK] {
                    let weights = values(offsets.len() * block, 2);
                    for channels in 1..=block {
                        let mut out = vec![7.0f32; MAX_BLOCK * ROW];
                        // SAFETY: src holds 460 values, the largest read is 302 + 5 * 13 + 1 + 7;
                        // out holds `MAX_BLOCK` rows of ROW values, the runs end by 5 * 11 + 8.
                        unsafe {
                            let tile = |offsets: &[usize], weights: &[f32], init: Option<&[f32]>, out: *mut f32| {
                                forward_tile(channels, block, run_len, &runs, src.as_ptr(), offsets, weights, init, out, ROW)
                            };
                            tile(&offsets[..3], &weights, Some(&init), out.as_mut_ptr());
                            tile(&offsets[3..], &weights[3 * block..], None, out.as_mut_ptr());
                        }
                        let mut expected = vec![7.0f32; MAX_BLOCK * ROW];
                        for c in 0..channels {
                            for run in &runs {
                                for i in 0..run_len {
                                    let taps = offsets.iter().enumerate();
                                    let chain =
                                        taps.fold(init[c], |sum, (k, &o)| weights[k * block + c].mul_add(src[run.src + o + i], sum));
                                    expected[c * ROW + run.out + i] = chain;
                                    // The definition is the sum it claims to be.
                                    let exact = init[c] as f64
                                        + offsets
                                            .iter()
                                            .enumerate()
                                            .map(|(k, &o)| weights[k * block + c] as f64 * src[run.src + o + i] as f64)
                                            .sum::<f64>();
                                    assert!((chain as f64 - exact).abs() < 1e-5, "{chain} vs {exact}");
                                }
                            }
                        }
                        assert_eq!(
                            bits(&out),
                            bits(&expected),
                            "{isa:?}, runs {runs:?}, block {block}, {channels} channels"
                        );
                    }
                }
            }
        }
    }

    /// On every instruction set this CPU has, the weight-gradient tile continues each channel's
    /// chain of `mul_add`s over the positions exactly as defined, for one to four channel groups
    /// and one to `weight_taps` taps, scattered or in rows of neighbours, over positions one after
    /// the other or in rows with gaps between them in the source, split over two calls, and
    /// writes nothing past its channels.
    #[test]
    fn the_weight_tile_gives_its_definitions_bits_on_every_isa() {
        const ROW: usize = WEIGHT_GROUPS * LANES + 8;
        let src = values(400, 1);
        // Scattered taps (the generic tile, in blocks), and rows of three neighbours (a 3-wide
        // kernel's; AVX-512 holds up to `weight_taps` of them in registers).
        let scattered = [
            0usize, 7, 33, 120, 121, 250, 251, 252, 40, 41, 299, 300, 301, 302, 5, 6, 9, 10, 11, 12, 13, 14, 15, 200,
        ];
        let rows: Vec<usize> = [0usize, 7, 33, 120, 130, 200, 250, 300]
            .iter()
            .flat_map(|&o| [o, o + 1, o + 2])
            .collect();
        let dyt = values(48 * ROW, 4);
        // Positions one after the other (40), rows of 8 with gaps of 3 in the source, rows of 7
        // (steps of several positions leave some over in each row); the second number is the
        // rows the first of two calls takes.
        let layouts = [
            (
                Positions {
                    rows: 8,
                    row_len: 5,
                    src_row: 5,
                },
                5,
            ),
            (
                Positions {
                    rows: 5,
                    row_len: 8,
                    src_row: 11,
                },
                3,
            ),
            (
                Positions {
                    rows: 6,
                    row_len: 7,
                    src_row: 10,
                },
                4,
            ),
        ];
        for isa in isa::compared_in("the weight tile") {
            let _forced = isa::force(isa);
            for (positions, split) in layouts {
                for groups in 1..=WEIGHT_GROUPS {
                    for taps in (1..=weight_taps(groups)).flat_map(|n| [&scattered[..n], &rows[..n]]) {
                        let mut grad = values(taps.len() * ROW, 5);
                        let start = grad.clone();
                        let (first, second) = (
                            Positions { rows: split, ..positions },
                            Positions {
                                rows: positions.rows - split,
                                ..positions
                            },
                        );
                        let (src_split, dyt_split) = positions.at(split, 0);
                        // SAFETY: src reads end at 302 + 2 + 5 * 10 + 6 < 400; dyt rows are ROW
                        // apart (48 rows, at most 42 read), grad rows ROW apart, each covering 8 *
                        // groups <= ROW channels.
                        unsafe {
                            weight_tile(groups, src.as_ptr(), taps, dyt.as_ptr(), ROW, first, grad.as_mut_ptr(), ROW);
                            let (src, dyt) = (src[src_split..].as_ptr(), dyt[dyt_split * ROW..].as_ptr());
                            weight_tile(groups, src, taps, dyt, ROW, second, grad.as_mut_ptr(), ROW);
                        }
                        let visited: Vec<(usize, usize)> = (0..positions.rows)
                            .flat_map(|r| (0..positions.row_len).map(move |x| positions.at(r, x)))
                            .collect();
                        for (j, &offset) in taps.iter().enumerate() {
                            let channels = LANES * groups;
                            let definition: Vec<f32> = (0..channels)
                                .map(|c| {
                                    visited
                                        .iter()
                                        .fold(start[j * ROW + c], |sum, &(s, p)| src[offset + s].mul_add(dyt[p * ROW + c], sum))
                                })
                                .collect();
                            let row = &grad[j * ROW..][..ROW];
                            assert_eq!(
                                bits(&row[..channels]),
                                bits(&definition),
                                "{isa:?}, {positions:?}, {groups} groups, tap {j}"
                            );
                            assert_eq!(
                                bits(&row[channels..]),
                                bits(&start[j * ROW + channels..][..ROW - channels]),
                                "{isa:?}: past the tile"
                            );
                            for (c, &value) in definition.iter().enumerate() {
                                let exact = start[j * ROW + c] as f64
                                    + visited
                                        .iter()
                                        .map(|&(s, p)| src[offset + s] as f64 * dyt[p * ROW + c] as f64)
                                        .sum::<f64>();
                                assert!((value as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{value} vs {exact}");
                            }
                        }
                    }
                }
            }
        }
    }
}
