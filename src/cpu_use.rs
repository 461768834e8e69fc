//! CPU seconds per wall second between two moments: of the whole process, of the calling thread,
//! and of each other busy thread by name, for `atso bench --phases`.
//!
//! Why per thread: a GPU backend's work is split between the thread that runs the training (burn's
//! autodiff and fusion tracing) and the runtime's own device thread (kernel compilation, encoding
//! and submission), and either can be what a step waits for; the process total alone cannot tell
//! which. Read from the OS (`clock_gettime` and `/proc/self/task`), so only on Linux with glibc;
//! elsewhere every figure is `None`.

use std::time::Instant;

/// A moment: the wall clock and the CPU seconds used so far.
pub struct CpuMark {
    wall: Instant,
    process: Option<f64>,
    caller: Option<f64>,
    /// Every thread's id, name and CPU seconds.
    threads: Vec<(u64, String, f64)>,
}

/// CPU seconds per wall second between two marks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuUse {
    /// All the process's threads together.
    pub process: Option<f64>,
    /// The thread that took both marks (the one driving the training).
    pub caller: Option<f64>,
    /// The other threads that used at least 5 % of a CPU, busiest first, by name.
    pub others: Vec<(String, f64)>,
}

impl CpuMark {
    pub fn now() -> Self {
        Self {
            wall: Instant::now(),
            process: clock_seconds(Clock::Process),
            caller: clock_seconds(Clock::Thread),
            threads: threads(),
        }
    }

    /// What was used between `earlier` and this mark (both taken on the same thread).
    pub fn since(&self, earlier: &CpuMark) -> CpuUse {
        let wall = (self.wall - earlier.wall).as_secs_f64();
        if wall <= 0.0 {
            return CpuUse::default();
        }
        let rate = |now: Option<f64>, then: Option<f64>| Some((now? - then?) / wall);
        let caller_id = current_thread_id();
        let mut others: Vec<(String, f64)> = self
            .threads
            .iter()
            .filter(|(id, _, _)| Some(*id) != caller_id)
            .map(|(id, name, seconds)| {
                let before = earlier.threads.iter().find(|(e, _, _)| e == id).map_or(0.0, |(_, _, s)| *s);
                (name.clone(), (seconds - before) / wall)
            })
            .filter(|(_, share)| *share >= 0.05)
            .collect();
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuUse {
            process: rate(self.process, earlier.process),
            caller: rate(self.caller, earlier.caller),
            others,
        }
    }
}

enum Clock {
    Process,
    Thread,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn clock_seconds(clock: Clock) -> Option<f64> {
    let id = match clock {
        Clock::Process => libc::CLOCK_PROCESS_CPUTIME_ID,
        Clock::Thread => libc::CLOCK_THREAD_CPUTIME_ID,
    };
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let ok = unsafe { libc::clock_gettime(id, &mut now) } == 0;
    ok.then_some(now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn current_thread_id() -> Option<u64> {
    // SAFETY: gettid has no preconditions.
    Some(unsafe { libc::gettid() } as u64)
}

/// Each thread of this process: id, name and CPU seconds (user + system), from
/// `/proc/self/task/<id>/stat` (clock-tick resolution, usually 10 ms). Threads that end while
/// being read are skipped, and a thread starting or ending meanwhile can make the listing skip
/// another (procfs lists a process's tasks by position).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn threads() -> Vec<(u64, String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let id = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (name, seconds) = parse_stat(&stat, ticks)?;
            Some((id, name, seconds))
        })
        .collect()
}

/// The name and CPU seconds in a `/proc/.../stat` line: the name sits in the parentheses (and
/// may contain spaces or parentheses itself), user and system time are the 14th and 15th fields.
fn parse_stat(stat: &str, ticks_per_second: f64) -> Option<(String, f64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: field 3 (state) is fields[0], so field n is fields[n - 3].
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    (ticks_per_second > 0.0).then_some((name, (user + system) / ticks_per_second))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn clock_seconds(_clock: Clock) -> Option<f64> {
    None
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn current_thread_id() -> Option<u64> {
    None
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn threads() -> Vec<(u64, String, f64)> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_and_user_plus_system_seconds() {
        let line = "4242 (DS (dev) 0) S 1 4242 4242 0 -1 4194368 100 0 0 0 250 50 0 0 20 0 3 0 1000 0 0";
        assert_eq!(parse_stat(line, 100.0), Some(("DS (dev) 0".to_string(), 3.0)));
        assert_eq!(parse_stat("4242 (short) S 1", 100.0), None);
    }

    #[test]
    fn others_are_the_busy_threads_but_the_caller_busiest_first() {
        let then = Instant::now();
        let earlier = CpuMark {
            wall: then,
            process: Some(10.0),
            caller: Some(4.0),
            threads: vec![(1, "a".into(), 1.0), (2, "b".into(), 2.0)],
        };
        let later = CpuMark {
            wall: then + std::time::Duration::from_secs(2),
            process: Some(12.0),
            caller: Some(5.0),
            threads: vec![(1, "a".into(), 1.6), (2, "b".into(), 2.02), (3, "new".into(), 0.8)],
        };
        let usage = later.since(&earlier);
        assert_eq!(usage.process, Some(1.0));
        assert_eq!(usage.caller, Some(0.5));
        let names: Vec<&str> = usage.others.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["new", "a"], "b used 1 % of a CPU: {usage:?}");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn this_machine_reports_the_process_the_caller_and_its_threads() {
        let mark = CpuMark::now();
        assert!(mark.process.is_some() && mark.caller.is_some());
        let me = current_thread_id().unwrap();
        // Other tests start and end threads meanwhile, which can make one listing skip this
        // thread (see `threads`); one of a few in a row lists it.
        let listed = |mark: &CpuMark| mark.threads.iter().any(|(id, _, _)| *id == me);
        let marks: Vec<CpuMark> = std::iter::once(mark).chain((0..4).map(|_| CpuMark::now())).collect();
        assert!(marks.iter().any(listed), "{:?}", marks[0].threads);
    }
}
