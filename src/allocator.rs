//! Tells glibc's allocator to keep freed memory for reuse instead of returning it to the kernel.
//!
//! Why: every training step frees and allocates again the same large activation and gradient
//! buffers (up to 17 MiB each at SSL4MIS size). By default glibc serves blocks that large with
//! fresh `mmap`s and unmaps them when freed, so each step page-faults and the kernel zeroes
//! every page again; in a profile of `atso bench` that was several percent of a step. With the
//! thresholds below the blocks come from the heap and are reused (`atso bench`, SSL4MIS U-Net,
//! 2 threads, three alternating pairs: 327-337 ms per train step against 360-379 ms; peak
//! memory the same, about 300 MiB). The same setting is what the `MALLOC_*_` environment
//! variables give; elsewhere than Linux with glibc this does nothing.

/// Blocks below 32 MiB (glibc's largest allowed threshold) come from the heap, the heap grows
/// 256 MiB at a time, and it is trimmed only when 1 GiB lies free at its top.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
