//! The peak resident memory of this process, measured per run.
//!
//! Speed alone does not choose a harness: a run that needs more memory than a lab's machine has
//! does not run at all. Linux keeps the process's high-water mark of resident memory (`VmHWM`
//! in `/proc/self/status`) and lets a process reset it to the current size (writing `5` to
//! `/proc/self/clear_refs`, Linux 4.0 and later), so each run of a sweep, serial or in a worker,
//! gets its own peak: what the process held at the run's start (the prepared data, the
//! allocator's pools) plus what the run added. Elsewhere both are unavailable (None).

/// Resets the high-water mark to the current resident size; false where that is unsupported.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// The process's peak resident memory in bytes since start or the last [`reset_peak`].
pub fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// [`peak_resident_bytes`] in MiB.
pub fn peak_resident_mib() -> Option<f64> {
    peak_resident_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_peak_sees_an_allocation_and_a_reset_forgets_it() {
        assert!(reset_peak());
        let before = peak_resident_bytes().unwrap();
        let block = std::hint::black_box(vec![1u8; 64 << 20]); // written, so resident
        let during = peak_resident_bytes().unwrap();
        assert!(during >= before + (60 << 20), "{before} -> {during}");
        drop(block);
        assert!(reset_peak());
        let after = peak_resident_bytes().unwrap();
        assert!(
            after + (32 << 20) < during,
            "a reset brings the mark down to the current size: {during} -> {after}"
        );
    }
}
