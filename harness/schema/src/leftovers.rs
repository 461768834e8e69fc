//! What a killed process leaves behind, and clearing it on the next sweep.
//!
//! Every file the harness writes goes through a temporary file beside its target (`fsio`), and
//! generated data through a staging folder beside its root (`data::generated`). A process killed
//! with SIGKILL cannot remove them, and a lab's shared folder would collect them forever. So
//! their names carry their writer, `~<pid>@<host>~`, and the next sweep removes those whose
//! writer is gone: a process of this host that no longer exists, or anything older than
//! [`FOREIGN_AGE`] (no write the harness makes stays open that long; this covers other hosts of
//! a cluster's shared file system, whose processes this host cannot see, names without an
//! owner, and pids reused since). A live writer's files are never touched, provided hosts that
//! share a results folder have distinct host names.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// How old a leftover whose writer this host cannot ask about must be before it is removed.
pub const FOREIGN_AGE: Duration = Duration::from_secs(3600);

/// How deep [`clear`] looks below the folder it is given (records/, previews/<run>/ ...).
const MAX_DEPTH: usize = 3;

/// `~<pid>@<host>~`: the writer of a temporary file or staging folder.
pub fn owner_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| format!("~{}@{}~", std::process::id(), this_host()))
}

/// This host's name, read once (provenance stamps it on every record).
pub fn this_host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    })
}

/// The writer a leftover's name carries, if any.
fn owner(name: &str) -> Option<(u32, &str)> {
    let start = name.find('~')?;
    let rest = &name[start + 1..];
    let end = rest.find('~')?;
    let (pid, host) = rest[..end].split_once('@')?;
    Some((pid.parse().ok()?, host))
}

/// Whether `name` is what an interrupted write or generation leaves: `.<target>.….tmp` (a
/// temporary file; a plot's bitmap is `.….tmp.png`, since its encoder goes by the extension) or
/// `.<root>.….staging` (a staging folder).
pub fn is_leftover_name(name: &str) -> bool {
    name.starts_with('.') && [".tmp", ".tmp.png", ".staging"].iter().any(|end| name.ends_with(end))
}

/// Whether process `pid` of this host exists (signal 0; a process of another user counts).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether the leftover `name`, last modified at `modified`, belongs to nobody any more.
fn abandoned(name: &str, modified: SystemTime) -> bool {
    let old = SystemTime::now().duration_since(modified).unwrap_or_default() >= FOREIGN_AGE;
    // No write stays open for an hour, so an old one is abandoned even if its pid has been
    // reused by another process since.
    old || owner(name).is_some_and(|(pid, host)| host == this_host() && !process_alive(pid))
}

/// Removes the abandoned temporary files and staging folders in `dir` and up to three folders
/// below it; returns how many it removed. Errors (a folder this user cannot write, a race with
/// another sweep removing the same file) are skipped: clearing is housekeeping.
pub fn clear(dir: &Path) -> usize {
    clear_at(dir, 0)
}

fn clear_at(dir: &Path, depth: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_leftover_name(&name) {
            removed += remove_if_abandoned(&path, &name, &meta);
        } else if meta.is_dir() && depth < MAX_DEPTH && !name.starts_with('.') {
            removed += clear_at(&path, depth + 1);
        }
    }
    removed
}

/// Removes the leftover `path` (named `name`) if its writer is gone; 1 if it went.
fn remove_if_abandoned(path: &Path, name: &str, meta: &std::fs::Metadata) -> usize {
    if !meta.modified().is_ok_and(|m| abandoned(name, m)) {
        return 0;
    }
    let gone = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match gone {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed what a killed process left");
            1
        }
        Err(_) => 0,
    }
}

/// Removes the abandoned staging folders (and temporary files) of `root` that sit beside it,
/// named `.<root's name>.…`; nothing else in its parent folder is looked at (a dataset's parent
/// may be a large shared tree).
pub fn clear_beside(root: &Path) -> usize {
    let (Some(parent), Some(name)) = (root.parent(), root.file_name().and_then(|n| n.to_str())) else {
        return 0;
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) || !is_leftover_name(&name) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        removed += remove_if_abandoned(&path, &name, &meta);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_names() {
        assert_eq!(owner(".runs.csv.~123@node-7.lab~.AbC9.tmp"), Some((123, "node-7.lab")));
        assert_eq!(owner(".runs.csv.AbC9.tmp"), None);
        assert!(owner_tag().starts_with(&format!("~{}@", std::process::id())));
    }

    #[test]
    fn only_what_a_gone_writer_left_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("records");
        std::fs::create_dir(&sub).unwrap();
        // A process that no longer exists on this host (pid_max is far below this).
        let dead = format!("~4000000000@{}~", this_host());
        let files = [
            (sub.join(format!(".a.json.{dead}.x1.tmp")), false),
            (sub.join(format!(".b.json.{}.x2.tmp", owner_tag())), true), // ours: alive
            (sub.join(".c.json.old.tmp"), true),                         // foreign and fresh
            (sub.join(".hidden"), true),                                 // not a leftover
            (sub.join("d.json"), true),
        ];
        for (path, _) in &files {
            std::fs::write(path, b"x").unwrap();
        }
        let staging = dir.path().join(format!(".phantom.{dead}.q.staging"));
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("case_0.nii.gz"), b"x").unwrap();
        assert_eq!(clear(dir.path()), 2);
        for (path, kept) in &files {
            assert_eq!(path.exists(), *kept, "{}", path.display());
        }
        assert!(!staging.exists());
    }

    #[test]
    fn beside_a_dataset_only_its_own_staging_folders_go() {
        let dir = tempfile::tempdir().unwrap();
        let dead = format!("~4000000000@{}~", this_host());
        let mine = dir.path().join(format!(".phantom.{dead}.q.staging"));
        let other = dir.path().join(format!(".scenes.{dead}.q.staging"));
        std::fs::create_dir(&mine).unwrap();
        std::fs::create_dir(&other).unwrap();
        assert_eq!(clear_beside(&dir.path().join("phantom")), 1);
        assert!(!mine.exists() && other.exists());
    }

    #[test]
    fn an_old_leftover_goes_even_if_its_pid_is_alive_again() {
        let hour_ago = SystemTime::now() - FOREIGN_AGE - Duration::from_secs(5);
        let reused = format!(".x.{}.y.tmp", owner_tag()); // this (live) process's pid
        assert!(abandoned(&reused, hour_ago));
        assert!(!abandoned(&reused, SystemTime::now()));
        assert!(
            is_leftover_name(&format!(".dice_vs_ratio.{}.k2.tmp.png", owner_tag())),
            "a plot's temporary"
        );
    }

    #[test]
    fn foreign_leftovers_go_only_when_old() {
        let hour_ago = SystemTime::now() - FOREIGN_AGE - Duration::from_secs(5);
        assert!(abandoned(".x.tmp", hour_ago));
        assert!(!abandoned(".x.tmp", SystemTime::now()));
        assert!(abandoned(".x.~1@elsewhere~.y.tmp", hour_ago));
        assert!(!abandoned(".x.~1@elsewhere~.y.tmp", SystemTime::now()));
    }
}
