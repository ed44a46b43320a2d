//! Replace a file's content atomically and durably.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Write `data` to `path` so that a crash or a full disk leaves either the old or the new
/// content, never a mix: a temporary file beside it (a dotfile, so directory watchers skip it)
/// is written and fsynced, renamed over `path`, then the directory is fsynced so the rename
/// itself is durable. On any error the temporary file is removed and `path` is untouched.
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_batch(&[(path.to_path_buf(), data.to_vec())])
}

/// [`write`] for a secret (a private key): the file is created with mode 0600, so it is never
/// readable by others, not even for a moment.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_files(&[(path.to_path_buf(), data.to_vec())], 0o600)
}

/// Batches larger than this are made durable with one `syncfs` instead of one fsync per file.
const FSYNC_EACH_UP_TO: usize = 16;

/// Write many files at once, each atomically as [`write`] does: every temporary file is
/// written and made durable (one fsync each for a small batch; for a large one, a single
/// `syncfs` of the file system instead of thousands of fsyncs), then each is renamed into
/// place and each directory synced. A crash leaves each file old or new (not necessarily all
/// alike). On error, temporary files are removed; files already renamed keep their new
/// content.
pub fn write_batch(files: &[(PathBuf, Vec<u8>)]) -> std::io::Result<()> {
    write_files(files, 0o666)
}

/// [`write_batch`], creating the files with `mode` (less the umask).
fn write_files(files: &[(PathBuf, Vec<u8>)], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if files.is_empty() {
        return Ok(());
    }
    let tmps: Vec<PathBuf> = files.iter().map(|(p, _)| temporary(p)).collect();
    let each = files.len() <= FSYNC_EACH_UP_TO;
    let result = (|| {
        for ((_, data), tmp) in files.iter().zip(&tmps) {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(tmp)?;
            f.write_all(data)?;
            if each {
                f.sync_all()?;
            }
            // Closed before the rename: a watcher sees the new version renamed into place
            // last, never a close after it (nor a file still open for writing).
            drop(f);
        }
        if !each {
            let dir = std::fs::File::open(
                tmps[0]
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            )?;
            // SAFETY: syncfs takes a file descriptor we own and open for its whole call.
            if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for ((path, _), tmp) in files.iter().zip(&tmps) {
            std::fs::rename(tmp, path)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for tmp in &tmps {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    let dirs: std::collections::BTreeSet<&Path> =
        files.iter().filter_map(|(p, _)| p.parent()).collect();
    for dir in dirs {
        sync_dir(&dir.join("x"))?;
    }
    Ok(())
}

/// Fsync the directory holding `path`, making a rename or creation in it durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Remove the temporary files [`write`] left in `dir` when a process writing there died
/// (SIGKILL, power loss) between creating and renaming them. Call it when opening a directory
/// only this process writes to, before writing there (in a container every run may be pid 1,
/// so the pid in a name cannot tell this run's files from a dead one's). Returns what it
/// removed.
pub fn remove_stale(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `.{name}.{pid}.{n}.tmp`
        let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
            continue;
        };
        let mut parts = inner.rsplitn(3, '.');
        let (Some(n), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !numeric(n) || !numeric(pid) || !entry.file_type()?.is_file() {
            continue;
        }
        std::fs::remove_file(entry.path())?;
        removed.push(entry.path());
    }
    Ok(removed)
}

/// A name beside `path`, unique within this process, hidden from directory walks.
fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let keep = [
            "slice.pb".to_string(),
            ".hidden".to_string(),
            ".x.tmp".to_string(),
            ".x.abc.1.tmp".to_string(),
        ];
        let own = format!(".slice.pb.{}.3.tmp", std::process::id());
        let stale = [".slice.pb.4242424.0.tmp", ".a.b.c.17.9.tmp", own.as_str()];
        for n in keep.iter().map(String::as_str).chain(stale) {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        let mut removed = remove_stale(d).unwrap();
        removed.sort();
        let mut want: Vec<PathBuf> = stale.iter().map(|n| d.join(n)).collect();
        want.sort();
        assert_eq!(removed, want);
        for n in &keep {
            assert!(d.join(n).exists(), "{n}");
        }
    }

    #[test]
    fn replaces_content_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the file itself");
    }

    #[test]
    fn private_files_are_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_private(&path, b"secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn batches_write_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(PathBuf, Vec<u8>)> = (0..(FSYNC_EACH_UP_TO + 5))
            .map(|i| (dir.path().join(format!("f{i}")), vec![i as u8; 3]))
            .collect();
        write_batch(&files).unwrap();
        for (p, data) in &files {
            assert_eq!(&std::fs::read(p).unwrap(), data);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            FSYNC_EACH_UP_TO + 5
        );
        // And a small batch (one fsync per file).
        write_batch(&files[..2]).unwrap();
        assert_eq!(std::fs::read(&files[0].0).unwrap(), files[0].1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_content_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, b"old").unwrap();
        // A directory where the file should be: the rename fails (EISDIR-like), as a real
        // file-system error would.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(write(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
