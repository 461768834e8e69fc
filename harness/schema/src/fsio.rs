//! Files that appear whole or not at all.
//!
//! Every file the harness writes (records, tables, splits, configs, fingerprints, generated
//! data, reports) goes through [`write_atomic`]: the bytes go to a temporary file in the target's
//! folder whose name is unique per process and call, are flushed and fsynced, and the file is
//! renamed over the target; the folder is fsynced so the rename survives a power cut. A kill at
//! any moment leaves either the old file or the new one, plus at worst a stray `.<name>.*.tmp`
//! that readers ignore and the next sweep removes (its name carries its writer; see
//! `leftovers`). Write errors (a full disk) surface as errors naming the file, never as a
//! silently truncated file: nothing is buffered past the explicit flush.
//!
//! Modes: a temporary file is created readable by its owner only, so before it is renamed into
//! place it gets the mode a plain `File::create` would give it under the process's umask (0644
//! under 022, 0664 under 002), and staging folders likewise get `0777 & !umask`. A lab's shared
//! results folder (setgid, umask 002) thereby stays readable and writable by the whole group.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

/// The process's file-mode creation mask. Read from `/proc/self/status` where Linux has it;
/// elsewhere by setting and restoring it once (which a file created at that very moment by
/// another thread could see; the harness reads it before it starts threads that write).
#[cfg(unix)]
pub fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let from_proc = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
        from_proc.unwrap_or_else(|| {
            // SAFETY: umask only swaps the process's mask; it is put back at once.
            let mask = unsafe { libc::umask(0o022) };
            unsafe { libc::umask(mask) };
            #[allow(clippy::useless_conversion)] // mode_t is u16 on some platforms
            u32::from(mask)
        })
    })
}

/// The mode `File::create` gives a new file under `umask`.
pub fn file_mode(umask: u32) -> u32 {
    0o666 & !umask
}

/// The mode `create_dir` gives a new folder under `umask`.
pub fn dir_mode(umask: u32) -> u32 {
    0o777 & !umask
}

/// Gives a file the harness made through a temporary file the mode a plain create would have.
pub fn set_created_mode(file: &std::fs::File, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(file_mode(umask())))
            .with_context(|| format!("{}: setting its mode", path.display()))?;
    }
    let _ = (file, path);
    Ok(())
}

/// Gives a folder the harness made through a temporary folder the mode `create_dir` would have,
/// keeping the setgid bit it inherited (in a group folder, files made in it later keep the
/// group).
pub fn set_created_dir_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let inherited = std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o7000);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(inherited | dir_mode(umask())))
            .with_context(|| format!("{}: setting its mode", path.display()))?;
    }
    let _ = path;
    Ok(())
}

/// Whether an existing target may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Replace an existing file atomically.
    Yes,
    /// Fail if the target exists (records are never overwritten).
    Never,
}

/// Writes `bytes` to `path` atomically (see the module doc), creating parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, Replace::Yes, |w| w.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`], but refuses to replace an existing file.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, Replace::Never, |w| w.write_all(bytes).map_err(Into::into))
}

/// A writer that remembers the last I/O error its inner writer gave. Encoders such as polars'
/// parquet writer turn a failed write into their own message ("Invalid thrift: transport
/// error"), losing the cause a user can act on; the write's own error ("No space left on
/// device") is kept here and put in front of theirs.
pub struct TrackedWriter<W: Write> {
    inner: W,
    last_error: Option<String>,
}

impl<W: Write> TrackedWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, last_error: None }
    }

    /// `error`, with the I/O error behind it named first when the inner writer gave one.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        match &self.last_error {
            Some(cause) if !format!("{error:#}").contains(cause.as_str()) => error.context(cause.clone()),
            _ => error,
        }
    }

    fn remember<T>(&mut self, result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &result {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.last_error = Some(e.to_string());
            }
        }
        result
    }
}

impl<W: Write> Write for TrackedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = self.inner.write(buf);
        self.remember(result)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.inner.flush();
        self.remember(result)
    }
}

/// Writes `path` atomically with whatever `fill` writes into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    replace: Replace,
    fill: impl FnOnce(&mut TrackedWriter<&mut std::fs::File>) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.{}.", crate::leftovers::owner_tag()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file beside it", path.display()))?;
    set_created_mode(tmp.as_file(), path)?;
    let mut writer = TrackedWriter::new(tmp.as_file_mut());
    let filled = fill(&mut writer).and_then(|()| writer.flush().map_err(Into::into));
    filled
        .map_err(|e| writer.explain(e))
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("{}: fsync failed", path.display()))?;
    pause_for_tests();
    match replace {
        Replace::Yes => {
            tmp.persist(path)
                .map_err(|e| e.error)
                .with_context(|| format!("renaming into {}", path.display()))?;
        }
        Replace::Never => {
            tmp.persist_noclobber(path)
                .map_err(|e| e.error)
                .with_context(|| format!("{}: already exists; refusing to overwrite it", path.display()))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Tests of crash safety set `ATSO_TEST_WRITE_PAUSE_MS` to widen the window between writing a
/// file and renaming it into place, so they can kill the process inside it.
fn pause_for_tests() {
    if let Some(ms) = std::env::var("ATSO_TEST_WRITE_PAUSE_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Fsyncs a folder so a rename into it is durable (best effort: not every platform can open a
/// folder for syncing).
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Whether a file name is one the harness must never read as data: hidden files (macOS `._x`
/// resource forks, `.x.tmp` leftovers of an interrupted write).
pub fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// Whether `path` is a regular file (or a link to one), asked of its metadata without opening
/// it: opening a FIFO for reading blocks until a writer comes, so a FIFO (or a device, or a
/// socket) dropped into a folder the harness reads would hang a sweep or a report.
pub fn is_regular_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Refuses, with a message naming `path`, anything that is not a regular file, before it is
/// opened (see [`is_regular_file`]). A missing file passes: opening it then names the error.
pub fn ensure_regular_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => anyhow::bail!(
            "{}: not a regular file (a FIFO, device or socket); refusing to open it",
            path.display()
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_not_a_regular_file_and_is_refused_unopened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        assert!(!is_regular_file(&fifo));
        let message = ensure_regular_file(&fifo).unwrap_err().to_string();
        assert!(message.contains("x.json") && message.contains("not a regular file"), "{message}");
        std::fs::write(dir.path().join("y.json"), b"{}").unwrap();
        assert!(is_regular_file(&dir.path().join("y.json")));
        assert!(ensure_regular_file(&dir.path().join("y.json")).is_ok());
        assert!(ensure_regular_file(&dir.path().join("missing")).is_ok());
    }

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/table.csv");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["table.csv"]);
    }

    #[test]
    fn never_mode_keeps_the_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write_new(&path, b"kept").unwrap();
        let message = format!("{:#}", write_new(&path, b"lost").unwrap_err());
        assert!(message.contains("record.json") && message.contains("already exists"), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_named_as_such_even_behind_the_parquet_encoder() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut writer = TrackedWriter::new(full);
        let mut frame = polars::df!("x" => (0..10_000).collect::<Vec<i64>>()).unwrap();
        let error = polars::prelude::ParquetWriter::new(&mut writer)
            .finish(&mut frame)
            .map(|_| ())
            .map_err(anyhow::Error::from)
            .unwrap_err();
        let message = format!("{:#}", writer.explain(error));
        assert!(message.to_lowercase().contains("no space left"), "{message}");
    }

    #[cfg(unix)]
    #[test]
    fn a_made_folder_keeps_the_setgid_bit_it_inherited() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        std::fs::create_dir(&made).unwrap();
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o2700)).unwrap();
        set_created_dir_mode(&made).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o2000 | dir_mode(umask()), "{mode:o}");
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("splits.json");
        write_atomic(&path, b"old").unwrap();
        let error = write_atomic_with(&path, Replace::Yes, |_| anyhow::bail!("disk full")).unwrap_err();
        assert!(format!("{error:#}").contains("splits.json"), "{error:#}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn created_modes_follow_the_umask() {
        assert_eq!(file_mode(0o022), 0o644);
        assert_eq!(file_mode(0o002), 0o664);
        assert_eq!(file_mode(0o077), 0o600);
        assert_eq!(dir_mode(0o022), 0o755);
        assert_eq!(dir_mode(0o002), 0o775);
    }

    #[cfg(unix)]
    #[test]
    fn written_files_get_the_mode_of_a_plain_create() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.csv");
        write_atomic(&path, b"x").unwrap();
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain), "as File::create under this process's umask");
        assert_eq!(mode(&path), file_mode(umask()));
    }

    #[test]
    fn hidden_names() {
        assert!(is_hidden(Path::new("records/._x.json")));
        assert!(is_hidden(Path::new(".runs.csv.1a2b.tmp")));
        assert!(!is_hidden(Path::new("records/x.json")));
    }
}
