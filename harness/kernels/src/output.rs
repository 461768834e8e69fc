//! Output buffers for the kernels, zeroed and filled chunk by chunk by the threads that write
//! them.
//!
//! Why: `vec![0.0; n]` zero-fills a layer's whole output on the calling thread before the
//! threads write it: a memset of megabytes, plus the page faults of fresh memory, while the other
//! cores wait. The profile of a training step found these fills at about 2 % of its CPU time and
//! among the parts one core ran alone. Here each chunk is zeroed by the thread about to write it,
//! so the zeros land in its cache and the threads share the work.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// `len` values, written by `fill(state, index, chunk)` for each `chunk`-long piece (the last
/// may be shorter), pieces in parallel; `state` comes from `init`, once per piece of work a
/// thread takes (as `for_each_init`: a scratch buffer to reuse). Each piece is zero before
/// `fill` sees it, so values `fill` leaves alone are 0.
pub fn filled_by_chunks<T>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> T + Sync + Send,
    fill: impl Fn(&mut T, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    assert!(chunk > 0, "output chunks must hold at least one value");
    let mut output: Vec<f32> = Vec::with_capacity(len);
    output.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each_init(init, |state, (index, piece)| {
            piece.fill(MaybeUninit::new(0.0));
            // SAFETY: every value of `piece` was written just above, and `MaybeUninit<f32>` has
            // the layout of `f32`.
            let piece = unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) };
            fill(state, index, piece);
        });
    // SAFETY: the pieces cover `..len` and each was written above (a panic in `fill` unwinds
    // past this line, leaving the vector empty).
    unsafe { output.set_len(len) };
    output
}

/// `filled_by_chunks` without per-thread state.
pub fn filled(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    filled_by_chunks(len, chunk, || (), |(), index, piece| fill(index, piece))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value is written once, by its chunk's call, zero where the call leaves it, for
    /// lengths that are and are not whole chunks; an empty output calls nothing.
    #[test]
    fn chunks_cover_the_output_and_start_at_zero() {
        for (len, chunk) in [(10, 3), (12, 4), (1, 5), (1000, 7)] {
            let out = filled(len, chunk, |index, piece| {
                assert!(piece.iter().all(|&v| v.to_bits() == 0), "chunk {index} starts at +0");
                for (i, v) in piece.iter_mut().enumerate().skip(1) {
                    *v = (index * chunk + i) as f32;
                }
            });
            assert_eq!(out.len(), len);
            for (i, &v) in out.iter().enumerate() {
                let expected = if i % chunk == 0 { 0.0 } else { i as f32 };
                assert_eq!(v, expected, "value {i} of {len} in chunks of {chunk}");
            }
        }
        assert!(filled(0, 0, |_, _| panic!("nothing to fill")).is_empty());
    }
}
