//! Training curves: what a run's loss, its parts and its learning rate did over the steps, kept
//! at the progress interval so a reader can look at a run instead of reading its log.
//!
//! The engine reads losses from the device in batches (one transaction per progress interval and
//! per phase end), never inside a step; a curve point is one step's values as read then: the total
//! loss, the named parts an objective reports for that step (supervised, pseudo-label,
//! consistency and its weight), the learning rate, and the phase the step belongs to. Points sit
//! at every `every`-th step of the run and at the last step of every phase, so each phase's end
//! is on the curve.

pub use atso_schema::curves::CurvePoint;

/// Steps between two progress reports (and curve points) of a run of `total_steps`: a hundredth
/// of the budget, at least one.
pub fn progress_every(total_steps: usize) -> usize {
    (total_steps / 100).max(1)
}

/// Whether the values of the step after which `done` steps are taken go into the curve: every
/// `every`-th step of the run, and the last step of a phase.
pub fn is_recorded(done: usize, every: usize, last_of_phase: bool) -> bool {
    last_of_phase || done.is_multiple_of(every.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_fall_on_the_interval_and_on_phase_ends() {
        assert_eq!(progress_every(50), 1);
        assert_eq!(progress_every(1200), 12);
        let recorded: Vec<usize> = (1..=30).filter(|&done| is_recorded(done, 12, done == 17 || done == 30)).collect();
        assert_eq!(recorded, [12, 17, 24, 30]);
    }
}
