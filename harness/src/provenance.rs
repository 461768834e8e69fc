//! Provenance: the git facts stamped on every results row, read with git2 (no `git` binary
//! needed), and the machine facts that decide floating-point results on the CPU backend. Outside
//! a checkout the run still records, with the commit marked "unknown".

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Git state of the code that produced a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Full hex id of HEAD, or "unknown".
    pub commit: String,
    /// Whether tracked files differ from HEAD or untracked, non-ignored files exist; None when
    /// unknown.
    pub dirty: Option<bool>,
    /// Current branch name; None when detached or unknown.
    pub branch: Option<String>,
}

impl Provenance {
    /// Provenance of the repository containing `dir` (searching upwards).
    pub fn discover(dir: &Path) -> Self {
        match git2::Repository::discover(dir) {
            Ok(repo) => Self::of(&repo),
            Err(_) => Self::unknown(),
        }
    }

    /// The state when no repository is found.
    pub fn unknown() -> Self {
        Self {
            commit: "unknown".into(),
            dirty: None,
            branch: None,
        }
    }

    fn of(repo: &git2::Repository) -> Self {
        let head = repo.head().ok();
        let commit = head
            .as_ref()
            .and_then(|h| h.peel_to_commit().ok())
            .map(|c| c.id().to_string())
            .unwrap_or_else(|| "unknown".into());
        let branch = head
            .as_ref()
            .filter(|h| h.is_branch())
            .and_then(|h| h.shorthand().ok().map(str::to_string));
        let mut options = git2::StatusOptions::new();
        options.include_untracked(true).include_ignored(false).exclude_submodules(true);
        let dirty = repo.statuses(Some(&mut options)).ok().map(|s| !s.is_empty());
        Self { commit, dirty, branch }
    }
}

/// The machine a run used: what makes CPU results differ between machines. The CPU backend's
/// GEMM picks its blocking (and so its summation order) from the cache sizes, and its kernels
/// from the SIMD level, so both are recorded with every run (docs/methods.md, "Reproducibility").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub host: String,
    /// CPU model and data-cache geometry.
    pub cpu: String,
    /// SIMD level the kernels dispatch to, and the CPU's own level.
    pub simd: String,
}

impl Machine {
    /// Facts of the machine this process runs on.
    pub fn current() -> Self {
        let host = atso_schema::leftovers::this_host().to_string();
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let caches = cache_geometry();
        let cpu = if caches.is_empty() { model } else { format!("{model} ({caches})") };
        Self {
            host,
            cpu,
            simd: simd_level(),
        }
    }
}

/// "L1d 32K/8w, L2 1024K/8w, L3 32768K/16w" from sysfs (empty where unavailable).
fn cache_geometry() -> String {
    let base = Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut parts = Vec::new();
    for index in 0..8 {
        let dir = base.join(format!("index{index}"));
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_string());
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        if kind == "Instruction" {
            continue;
        }
        let ways = read("ways_of_associativity").unwrap_or_default();
        let name = if kind == "Data" {
            format!("L{level}d")
        } else {
            format!("L{level}")
        };
        parts.push(format!("{name} {size}/{ways}w"));
    }
    parts.join(", ")
}

/// The SIMD levels the CPU kernels dispatch to on this CPU, e.g. "conv avx2+fma,
/// elementwise x86-64-v4 (cpu x86-64-v4)".
fn simd_level() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
        {
            4
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            3
        } else if is_x86_feature_detected!("sse4.2") {
            2
        } else {
            1
        };
        if !crate::kernels::own_kernels() {
            // burn's ops (`ATSO_KERNELS=burn`): their convolutions and sums follow the machine,
            // so the text leaves out "elementwise", which the exact expectations written for the
            // project's kernels look for (experiments/references/ci.toml).
            return format!("burn's ops at x86-64-v{} (cpu x86-64-v{cpu})", cpu.min(4));
        }
        // The project's convolution kernels run AVX-512, AVX2 + FMA or portable code with the
        // same bits; flex's elementwise kernels (macerator, with its default avx512 feature)
        // dispatch up to v4, and the sums whose order their width would change are taken in one
        // order (kernels::ordered_sum), so runs agree across v3 and v4.
        let conv = crate::kernels::isa::current().name();
        format!("conv {conv}, elementwise x86-64-v{} (cpu x86-64-v{cpu})", cpu.min(4))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_facts_are_filled() {
        let machine = Machine::current();
        assert!(!machine.cpu.is_empty() && !machine.simd.is_empty() && !machine.host.is_empty());
    }

    #[test]
    fn runs_on_burns_ops_are_not_labelled_as_the_kernels() {
        crate::kernels::use_own_kernels(false);
        let burns = simd_level();
        crate::kernels::use_own_kernels(true);
        let own = simd_level();
        assert!(!burns.contains("elementwise") && !burns.contains("conv "), "{burns}");
        if cfg!(target_arch = "x86_64") {
            assert!(burns.starts_with("burn's ops at x86-64-v"), "{burns}");
            assert!(own.starts_with("conv ") && own.contains("elementwise x86-64-v"), "{own}");
        }
    }

    #[test]
    fn outside_a_repository_the_commit_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let p = Provenance::discover(dir.path());
        // A temp dir may sit inside a checkout on some machines; only assert when it does not.
        if git2::Repository::discover(dir.path()).is_err() {
            assert_eq!(p, Provenance::unknown());
        }
    }

    #[test]
    fn reads_commit_branch_and_dirty_state() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("a.txt")).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        let id = repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap();
        index.write().unwrap();
        let clean = Provenance::discover(dir.path());
        assert_eq!(clean.commit, id.to_string());
        assert_eq!(clean.dirty, Some(false));
        assert!(clean.branch.is_some());
        std::fs::write(dir.path().join("a.txt"), "changed").unwrap();
        assert_eq!(Provenance::discover(dir.path()).dirty, Some(true));
    }
}
