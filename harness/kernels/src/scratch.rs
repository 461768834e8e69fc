//! Working buffers that outlive one kernel call, kept per thread.
//!
//! Why: a convolution needs megabytes of working memory per image (the zero-padded input and
//! the output in the padded layout). Allocated afresh for each call, such a buffer comes back as
//! fresh pages (page faults) or has to be zero-filled, in every layer of every step. Kept per
//! thread, it is allocated once and only grows; the kernels write every value they read.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers a thread keeps at most; more are freed when returned.
const KEPT_PER_THREAD: usize = 4;

thread_local! {
    static KEPT: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer taken from the calling thread's store; dropping it returns it to the store of the
/// thread that drops it. Its values are whatever its last user left.
pub struct Scratch(Vec<f32>);

impl Scratch {
    pub fn take() -> Self {
        Self(KEPT.with(|kept| kept.borrow_mut().pop()).unwrap_or_default())
    }

    /// At least `len` values, growing the buffer (with zeros) only past what it held before.
    pub fn at_least(&mut self, len: usize) -> &mut [f32] {
        if self.0.len() < len {
            self.0.resize(len, 0.0);
        }
        &mut self.0[..len]
    }
}

impl Deref for Scratch {
    type Target = Vec<f32>;

    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        // A thread being torn down has no store left: the buffer is simply freed.
        let _ = KEPT.try_with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() < KEPT_PER_THREAD {
                kept.push(buffer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A returned buffer is handed out again on the same thread with its allocation, and
    /// `at_least` keeps what it held.
    #[test]
    fn buffers_are_reused_on_their_thread() {
        let mut first = Scratch::take();
        first.at_least(1000).fill(3.0);
        let address = first.as_ptr();
        drop(first);
        let mut again = Scratch::take();
        assert_eq!(again.as_ptr(), address, "the same allocation");
        assert_eq!(again.at_least(10), &[3.0; 10], "values left by the last user");
        assert_eq!(again.at_least(2000).len(), 2000);
        assert_eq!(again.len(), 2000);
    }
}
