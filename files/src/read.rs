//! Bounded reads: a file is read only up to a limit, and a FIFO, socket or device is never
//! opened in a way that could block or stream forever.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What kind of file [`file`] accepts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Require {
    /// Regular files only (what a watched directory may hold). Anything else is refused
    /// without reading, and opening a FIFO does not wait for a writer.
    Regular,
    /// Whatever the caller named explicitly (`palisadectl -f <(…)` is a FIFO); still bounded.
    Any,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a regular file but a {0}: skipped")]
    NotRegular(&'static str),
    #[error("larger than the limit of {limit} bytes: skipped (raise the limit to read it)")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A file type, in words.
pub fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Whether some process holds `path` open for writing, as the kernel knows it (any process,
/// any container): a read lease cannot be taken on a file open for writing. `None` when it
/// cannot be told (leases disabled, a file system without them, not the file's owner and
/// without CAP_LEASE). Never blocks: the file is opened without waiting and the lease is
/// given back at once.
pub fn open_for_writing(path: &Path) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    // A lease holder is sent SIGIO when someone opens the file for writing, whose default
    // action ends the process: this process never wants it (nothing here uses SIGIO).
    static IGNORE_SIGIO: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting a signal's disposition to SIG_IGN.
    IGNORE_SIGIO.call_once(|| unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
    });
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns; F_SETLEASE takes an int argument.
    let taken = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if taken == 0 {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(true),
        _ => None,
    }
}

/// Read `path` (following symbolic links), at most `limit` bytes.
pub fn file(path: &Path, limit: u64, require: Require) -> Result<Vec<u8>, ReadError> {
    file_and_metadata(path, limit, require).map(|(bytes, _)| bytes)
}

/// The same, with the metadata of the file read, taken once it was read (compare it with an
/// earlier `stat` to know that nobody changed the file in between).
pub fn file_and_metadata(
    path: &Path,
    limit: u64,
    require: Require,
) -> Result<(Vec<u8>, std::fs::Metadata), ReadError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if require == Require::Regular {
        // Opening a FIFO without a writer would block; a regular file ignores the flag.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let f = options.open(path)?;
    let meta = f.metadata()?;
    if require == Require::Regular && !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(kind(meta.file_type())));
    }
    if meta.file_type().is_file() && meta.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(meta.len().min(limit) as usize);
    let mut f = f.take(limit.saturating_add(1));
    f.read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let after = f.into_inner().metadata()?;
    Ok((out, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_holding_a_file_open_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        assert_eq!(open_for_writing(&path), Some(false));
        let writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(open_for_writing(&path), Some(true));
        drop(writer);
        assert_eq!(open_for_writing(&path), Some(false));
        let reader = std::fs::File::open(&path).unwrap();
        assert_eq!(open_for_writing(&path), Some(false));
        drop(reader);
        assert_eq!(open_for_writing(&dir.path().join("missing")), None);
    }

    #[test]
    fn limits_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.yaml");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(file(&p, 5, Require::Regular).unwrap(), b"12345");
        assert!(matches!(
            file(&p, 4, Require::Regular),
            Err(ReadError::TooLarge { limit: 4 })
        ));
        // A character device that never ends: refused at once, or cut at the limit.
        let zero = Path::new("/dev/zero");
        assert!(matches!(
            file(zero, 1 << 20, Require::Regular),
            Err(ReadError::NotRegular("character device"))
        ));
        assert!(matches!(
            file(zero, 1 << 20, Require::Any),
            Err(ReadError::TooLarge { .. })
        ));
        // A FIFO nobody writes to: refused without blocking.
        let fifo = dir.path().join("p.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            file(&fifo, 100, Require::Regular),
            Err(ReadError::NotRegular("FIFO"))
        ));
    }
}
