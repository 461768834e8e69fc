//! Output buffers for the kernels, filled chunk by chunk by the threads that write them.
//!
//! Why: `vec![0.0; n]` zero-fills a layer's whole output on the calling thread before the
//! threads write it: a memset of megabytes, plus the page faults of fresh memory, while the other
//! cores wait. The profile of a training step found these fills at about 2 % of its CPU time and
//! among the parts one core ran alone. Outputs whose every value a kernel writes ([`written`])
//! are never zeroed: a [`Writer`] hands out the values front to back and the chunk is checked
//! whole before the vector is; the few that add into zeros ([`filled`]) have each chunk zeroed by
//! the thread about to write it, in its cache.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::elementwise;

/// `len` values, written front to back by `fill(state, index, writer)` for each `chunk`-long
/// piece (the last may be shorter), pieces in parallel; `state` comes from `init`, once per piece of
/// work a thread takes (as `for_each_init`: a scratch buffer to reuse). Nothing is zeroed first:
/// `fill` must write every value of its piece, or this panics.
pub fn written_by_chunks<T>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> T + Sync + Send,
    fill: impl Fn(&mut T, usize, &mut Writer) + Sync + Send,
) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    assert!(chunk > 0, "output chunks must hold at least one value");
    let mut output: Vec<f32> = Vec::with_capacity(len);
    output.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .with_max_len(leaf_len(len.div_ceil(chunk)))
        .for_each_init(init, |state, (index, piece)| {
            let mut writer = Writer { slots: piece, written: 0 };
            fill(state, index, &mut writer);
            assert_eq!(writer.remaining(), 0, "output chunk {index}: values left unwritten");
        });
    // SAFETY: every piece was written whole (checked above; a panic unwinds past this line,
    // leaving the vector empty).
    unsafe { output.set_len(len) };
    output
}

/// `K` outputs written together, chunk by chunk: chunk `index` of every output (`lens[k]` values
/// of output `k`) is written by one call `fill(index, writers)`, chunks in parallel. For a pass
/// that computes several outputs from the same reads (a loss's per-pixel terms).
pub fn written_together<const K: usize>(
    chunks: usize,
    lens: [usize; K],
    fill: impl Fn(usize, &mut [Writer; K]) + Sync + Send,
) -> [Vec<f32>; K] {
    let mut outputs: [Vec<f32>; K] = std::array::from_fn(|k| Vec::with_capacity(chunks * lens[k]));
    {
        let mut rests: [&mut [MaybeUninit<f32>]; K] = {
            let mut spare = outputs.each_mut().map(|out| out.spare_capacity_mut());
            std::array::from_fn(|k| std::mem::take(&mut spare[k]))
        };
        let mut pieces: Vec<[&mut [MaybeUninit<f32>]; K]> = Vec::with_capacity(chunks);
        for _ in 0..chunks {
            pieces.push(std::array::from_fn(|k| {
                let (piece, rest) = std::mem::take(&mut rests[k]).split_at_mut(lens[k]);
                rests[k] = rest;
                piece
            }));
        }
        pieces
            .into_par_iter()
            .enumerate()
            .with_max_len(leaf_len(chunks))
            .for_each(|(index, slots)| {
                let mut writers = slots.map(|slots| Writer { slots, written: 0 });
                fill(index, &mut writers);
                for (k, writer) in writers.iter().enumerate() {
                    assert_eq!(writer.remaining(), 0, "output {k}, chunk {index}: values left unwritten");
                }
            });
    }
    for (out, len) in outputs.iter_mut().zip(lens) {
        // SAFETY: every chunk of every output was written whole (checked above; a panic unwinds
        // past this line, leaving the vectors empty).
        unsafe { out.set_len(chunks * len) };
    }
    outputs
}

/// The most chunks one rayon task takes, out of `chunks`: about an eighth of a thread's share.
///
/// Why: rayon splits a parallel loop into as many pieces as threads, and splits a piece further
/// only when another thread steals it, so with 8 images on 2 threads each task ran 2 images, and
/// a thread that started late (waking a sleeping thread took 50 to 400 us on the project's VMs)
/// left the other one finishing a 2-image task alone: a scheduler trace of a training step found
/// the second thread asleep for 18 % of it, mostly while the first ran convolution tiles. With
/// tasks of an eighth of a share, the last task one thread runs alone is that much shorter.
/// How work is split never changes what a chunk computes, so results keep their bits.
pub fn leaf_len(chunks: usize) -> usize {
    (chunks / (8 * rayon::current_num_threads())).max(1)
}

/// `written_by_chunks` without per-thread state.
pub fn written(len: usize, chunk: usize, fill: impl Fn(usize, &mut Writer) + Sync + Send) -> Vec<f32> {
    written_by_chunks(len, chunk, || (), |(), index, writer| fill(index, writer))
}

/// The values of one output chunk not yet written, handed out front to back.
pub struct Writer<'a> {
    slots: &'a mut [MaybeUninit<f32>],
    written: usize,
}

impl<'a> Writer<'a> {
    /// Values still to write.
    pub fn remaining(&self) -> usize {
        self.slots.len() - self.written
    }

    /// Has `write` fill the next `len` values (panics past the chunk's end), and counts them
    /// written only once it has returned: `write` writes every value it is given (each caller
    /// below does), and a panic inside it leaves them uncounted, so no caller that catches the
    /// panic can end up with values counted but never written.
    #[inline(always)]
    fn write_next(&mut self, len: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) {
        assert!(len <= self.remaining(), "output chunk: {len} values written past its end");
        write(&mut self.slots[self.written..][..len]);
        self.written += len;
    }

    /// Has `write` fill the next `len` values through whatever pointers it likes (a kernel that
    /// writes tiles in place), and counts them written once it has returned.
    ///
    /// # Safety
    /// `write` must write every one of the `len` values: nothing checks it, and the output is
    /// read as `f32` afterwards.
    pub unsafe fn write_with(&mut self, len: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) {
        self.write_next(len, write);
    }

    /// Splits the next `parts * part_len` values into `parts` writers of `part_len` values each,
    /// for `fill` to write in any interleaving (each part front to back), and counts them written
    /// once `fill` has returned with every part whole (panics otherwise). For outputs written in
    /// another order than their layout: a loss's per-class planes, written a block of pixels at
    /// a time across all classes.
    pub fn in_parts(&mut self, parts: usize, part_len: usize, fill: impl FnOnce(&mut [Writer])) {
        let len = parts.checked_mul(part_len).expect("output parts overflow");
        assert!(len <= self.remaining(), "output chunk: {len} values written past its end");
        let mut writers: Vec<Writer> = if part_len == 0 {
            (0..parts)
                .map(|_| Writer {
                    slots: &mut [],
                    written: 0,
                })
                .collect()
        } else {
            self.slots[self.written..][..len]
                .chunks_mut(part_len)
                .map(|slots| Writer { slots, written: 0 })
                .collect()
        };
        fill(&mut writers);
        for (part, writer) in writers.iter().enumerate() {
            assert_eq!(writer.remaining(), 0, "output part {part}: values left unwritten");
        }
        self.written += len;
    }

    /// Writes `len` zeros and hands them back, written, to be added into.
    pub fn zeros(&mut self, len: usize) -> &mut [f32] {
        assert!(len <= self.remaining(), "output chunk: {len} values written past its end");
        let slots = &mut self.slots[self.written..][..len];
        slots.fill(MaybeUninit::new(0.0));
        self.written += len;
        // SAFETY: every value of `slots` was written just above, and `MaybeUninit<f32>` has the
        // layout of `f32`.
        unsafe { &mut *(slots as *mut [MaybeUninit<f32>] as *mut [f32]) }
    }

    /// Writes `values` as they are.
    pub fn copy(&mut self, values: &[f32]) {
        self.write_next(values.len(), |slots| {
            slots.write_copy_of_slice(values);
        });
    }

    /// Writes `f(x)` for each `x` of `src`.
    #[inline(always)]
    pub fn map(&mut self, src: &[f32], f: impl Fn(f32) -> f32) {
        self.write_next(src.len(), |slots| elementwise::map_into(src, slots, f));
    }

    /// Writes `f(i)` for `i` in `0..len`.
    #[inline(always)]
    pub fn from_fn(&mut self, len: usize, f: impl Fn(usize) -> f32) {
        self.write_next(len, |slots| elementwise::from_fn_into(slots, f));
    }

    /// Writes `f(a[i], b[i])` for each `i`.
    #[inline(always)]
    pub fn zip_map<T: Copy>(&mut self, a: &[f32], b: &[T], f: impl Fn(f32, T) -> f32) {
        assert_eq!(a.len(), b.len(), "output zip_map: lengths differ");
        self.write_next(a.len(), |slots| elementwise::zip_map_into(a, b, slots, f));
    }
}

/// `len` values, written by `fill(index, chunk)` for each `chunk`-long piece (the last may be
/// shorter), pieces in parallel. Each piece is zero before `fill` sees it (zeroed by the thread
/// about to fill it), so values `fill` leaves alone are 0: for outputs that add into zeros.
pub fn filled(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    written(len, chunk, |index, writer| {
        let whole = writer.remaining();
        fill(index, writer.zeros(whole))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks hold about an eighth of a thread's share, at least one chunk: 8 images on 2
    /// threads are 8 tasks, 1000 planes tasks of 62.
    #[test]
    fn tasks_are_an_eighth_of_a_share() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        assert_eq!(
            pool.install(|| [leaf_len(0), leaf_len(8), leaf_len(16), leaf_len(1000)]),
            [1, 1, 1, 62]
        );
    }

    /// Parts written in an interleaved order land in their places; a part left short panics and
    /// leaves the output unwritten.
    #[test]
    fn parts_are_written_in_any_interleaving() {
        let out = written(12, 12, |_, writer| {
            writer.copy(&[-1.0]);
            writer.in_parts(2, 5, |parts| {
                for step in 0..5 {
                    for (p, part) in parts.iter_mut().enumerate() {
                        part.copy(&[(p * 10 + step) as f32]);
                    }
                }
            });
            writer.in_parts(0, 3, |parts| assert!(parts.is_empty()));
            writer.copy(&[-2.0]);
        });
        assert_eq!(out, [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0, 13.0, 14.0, -2.0]);
        let short = std::panic::catch_unwind(|| written(4, 4, |_, writer| writer.in_parts(2, 2, |parts| parts[0].copy(&[1.0, 2.0]))));
        assert!(short.is_err());
    }

    /// Outputs written together land chunk by chunk in their own vectors; a chunk left short
    /// panics.
    #[test]
    fn outputs_written_together_hold_their_chunks() {
        let [a, b, c] = written_together(3, [2, 0, 1], |index, [a, _, c]| {
            a.from_fn(2, |i| (10 * index + i) as f32);
            c.copy(&[-(index as f32)]);
        });
        assert_eq!(a, [0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
        assert!(b.is_empty());
        assert_eq!(c, [-0.0, -1.0, -2.0]);
        let short = std::panic::catch_unwind(|| written_together(2, [1], |_, [a]| a.copy(&[])));
        assert!(short.is_err());
    }

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

    /// A writer's values land in order, chunk by chunk; a chunk left short or written past its
    /// end panics instead of handing out a vector with values never written.
    #[test]
    fn writers_fill_every_value_or_panic() {
        let source: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let out = written(10, 4, |index, writer| {
            let part = &source[index * 4..][..writer.remaining()];
            let half = part.len() / 2;
            writer.copy(&part[..half]);
            writer.map(&part[half..], |v| v + 0.5);
        });
        let expected: Vec<f32> = [0.0, 1.0, 2.5, 3.5, 4.0, 5.0, 6.5, 7.5, 8.0, 9.5].to_vec();
        assert_eq!(out, expected);
        let short = std::panic::catch_unwind(|| written(8, 4, |_, writer| writer.copy(&[1.0; 3])));
        assert!(short.is_err(), "a chunk with a value left unwritten");
        let long = std::panic::catch_unwind(|| written(8, 4, |_, writer| writer.copy(&[1.0; 5])));
        assert!(long.is_err(), "a chunk written past its end");
        // A write that panics inside `fill`, caught there: its values are not counted, so the
        // chunk is still found short.
        let left = std::sync::atomic::AtomicUsize::new(0);
        let caught = std::panic::catch_unwind(|| {
            written(4, 4, |_, writer| {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.zip_map(&[1.0; 4], &[1.0; 3], |a, _| a)));
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    writer.map(&[1.0; 4], |_| panic!("inside the write"))
                }));
                left.store(writer.remaining(), std::sync::atomic::Ordering::Relaxed);
            })
        });
        assert_eq!(left.into_inner(), 4, "writes that panicked are not counted");
        assert!(caught.is_err(), "a chunk whose writes all panicked is refused");
    }
}
