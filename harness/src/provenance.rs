//! Provenance: the git facts stamped on every results row, read with git2 (no `git` binary
//! needed). Outside a checkout the run still records, with the commit marked "unknown".

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

#[cfg(test)]
mod tests {
    use super::*;

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
