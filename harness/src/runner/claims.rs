//! Claims: how several processes (parallel jobs, Slurm array tasks, two people's sweeps) share
//! one results folder without running or writing the same run twice.
//!
//! A run is claimed before it starts by taking an exclusive lock on
//! `claims/<config hash>.claim` and writing the holder (host, pid, start time) into it. The lock
//! is the operating system's file lock (std's `File::try_lock`, flock on Unix; it also works
//! across hosts on NFS), so a process killed with SIGKILL releases its claims at once and the
//! next sweep takes them over. On a file system without locks, the holder text decides: a claim
//! of a dead process on this host is taken over, a claim from another host only after
//! `stale_after`. The claim file is removed when the run is recorded. The results folder has
//! one more lock, `.lock`, held while tables are rebuilt.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Who holds a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// RFC 3339 time the claim was taken.
    pub since: String,
    pub run: String,
}

impl Holder {
    fn me(run: &str) -> Self {
        Self {
            host: crate::provenance::Machine::current().host,
            pid: std::process::id(),
            since: chrono::Utc::now().to_rfc3339(),
            run: run.to_string(),
        }
    }
}

/// A held claim; dropping it releases the lock (the file is removed by [`Claim::release`]).
pub struct Claim {
    file: File,
    path: PathBuf,
}

impl Claim {
    /// Removes the claim file, then releases the lock.
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Where a claim stands, for `atso status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimState {
    /// No claim file.
    Free,
    /// Locked by a live process.
    Held(Option<Holder>),
    /// A claim file whose holder is gone (it will be taken over).
    Stale(Option<Holder>),
}

/// The claims folder of a results folder.
pub fn claims_dir(results: &Path) -> PathBuf {
    results.join("claims")
}

fn claim_path(results: &Path, config_hash: &str) -> PathBuf {
    claims_dir(results).join(format!("{config_hash}.claim"))
}

/// Tries to claim run `config_hash` (named `run` for humans). `Ok(None)`: another live process
/// holds it.
pub fn try_claim(results: &Path, config_hash: &str, run: &str, stale_after: Duration) -> Result<Option<Claim>> {
    let path = claim_path(results, config_hash);
    std::fs::create_dir_all(claims_dir(results)).with_context(|| format!("creating {}", claims_dir(results).display()))?;
    let mut file = open_lock_file(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(error)) => {
            // No locks on this file system: decide from what the holder wrote.
            tracing::debug!(file = %path.display(), %error, "file locks unavailable; using holder text");
            if let Some(holder) = read_holder(&mut file) {
                if holder_alive(&holder, stale_after) {
                    return Ok(None);
                }
            }
        }
    }
    // Rewritten in place (not through `fsio`): the locked inode must stay the claim file.
    let holder = serde_json::to_vec(&Holder::me(run))?;
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(&holder).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()?;
    Ok(Some(Claim { file, path }))
}

/// The state of run `config_hash`'s claim, without taking it.
pub fn state(results: &Path, config_hash: &str, stale_after: Duration) -> ClaimState {
    let path = claim_path(results, config_hash);
    let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else {
        return ClaimState::Free;
    };
    let holder = read_holder(&mut file);
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            ClaimState::Stale(holder)
        }
        Err(TryLockError::WouldBlock) => ClaimState::Held(holder),
        Err(TryLockError::Error(_)) => match &holder {
            Some(h) if holder_alive(h, stale_after) => ClaimState::Held(holder),
            _ => ClaimState::Stale(holder),
        },
    }
}

/// Removes run `config_hash`'s claim file if no live process holds it: called for runs already
/// recorded, whose claim only a process killed between recording and releasing leaves behind.
pub fn clear_unheld(results: &Path, config_hash: &str, stale_after: Duration) {
    let path = claim_path(results, config_hash);
    let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else {
        return;
    };
    let unheld = match file.try_lock() {
        Ok(()) => true,
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(_)) => read_holder(&mut file).is_none_or(|h| !holder_alive(&h, stale_after)),
    };
    if unheld {
        let _ = std::fs::remove_file(&path);
    }
    let _ = file.unlock();
}

/// Opens (creating, never truncating) a file that is only ever locked or rewritten in place.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a holder (read from a claim file on a lock-less file system) still counts.
fn holder_alive(holder: &Holder, stale_after: Duration) -> bool {
    if holder.host == crate::leftovers::this_host() {
        return crate::leftovers::process_alive(holder.pid);
    }
    let age = chrono::DateTime::parse_from_rfc3339(&holder.since)
        .map(|t| chrono::Utc::now().signed_duration_since(t))
        .ok()
        .and_then(|d| d.to_std().ok());
    age.is_some_and(|age| age < stale_after)
}

/// An exclusive lock on the results folder (`.lock`), held while tables are rebuilt; waits for
/// other holders. Released on drop.
pub struct FolderLock(File);

impl FolderLock {
    pub fn acquire(results: &Path) -> Result<Self> {
        std::fs::create_dir_all(results)?;
        let path = results.join(".lock");
        let file = open_lock_file(&path)?;
        match file.lock() {
            Ok(()) => {}
            // Without locks nothing better can be done; atomic writes keep each table whole.
            Err(error) => tracing::debug!(file = %path.display(), %error, "no folder lock"),
        }
        Ok(Self(file))
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_excludes_others_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86400);
        let claim = try_claim(dir.path(), "abc", "run-a", day).unwrap().expect("free claim");
        // A second handle (another process would be the same) cannot take it.
        assert!(try_claim(dir.path(), "abc", "run-a", day).unwrap().is_none());
        match state(dir.path(), "abc", day) {
            ClaimState::Held(Some(holder)) => {
                assert_eq!(holder.pid, std::process::id());
                assert_eq!(holder.run, "run-a");
            }
            other => panic!("{other:?}"),
        }
        claim.release();
        assert_eq!(state(dir.path(), "abc", day), ClaimState::Free);
        assert!(try_claim(dir.path(), "abc", "run-a", day).unwrap().is_some());
    }

    #[test]
    fn clearing_removes_only_claims_nobody_holds() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86400);
        let held = try_claim(dir.path(), "held", "a", day).unwrap().unwrap();
        std::fs::write(
            claim_path(dir.path(), "left"),
            r#"{"host":"h","pid":1,"since":"2020-01-01T00:00:00Z","run":"b"}"#,
        )
        .unwrap();
        clear_unheld(dir.path(), "held", day);
        clear_unheld(dir.path(), "left", day);
        clear_unheld(dir.path(), "never", day);
        assert!(claim_path(dir.path(), "held").exists());
        assert!(!claim_path(dir.path(), "left").exists());
        assert!(!claim_path(dir.path(), "never").exists());
        held.release();
    }

    #[test]
    fn a_claim_file_without_a_lock_is_stale_and_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86400);
        std::fs::create_dir_all(claims_dir(dir.path())).unwrap();
        // What a SIGKILLed holder leaves behind: the file, no lock.
        std::fs::write(
            claim_path(dir.path(), "dead"),
            r#"{"host":"h","pid":1,"since":"2020-01-01T00:00:00Z","run":"x"}"#,
        )
        .unwrap();
        assert!(matches!(state(dir.path(), "dead", day), ClaimState::Stale(Some(_))));
        assert!(try_claim(dir.path(), "dead", "x", day).unwrap().is_some());
    }
}
