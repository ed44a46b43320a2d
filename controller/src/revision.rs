//! Revisions that never go backwards across controller restarts (until the Raft log index
//! replaces them).
//!
//! The state directory holds a reservation: the highest revision this controller may have
//! handed out. It is raised in blocks (one fsynced write per block, not per revision), and a
//! restarted controller starts above it. Skipped numbers are harmless: revisions only need to
//! increase.

use std::io::Write;
use std::path::{Path, PathBuf};

const BLOCK: u64 = 1000;
const FILE: &str = "revision";

#[derive(Debug)]
pub struct RevisionStore {
    path: Option<PathBuf>,
    reserved: u64,
    next: u64,
}

impl RevisionStore {
    /// A store in `dir` (created if missing), or in memory only when `dir` is `None`.
    pub fn open(dir: Option<&Path>) -> std::io::Result<RevisionStore> {
        let Some(dir) = dir else {
            return Ok(RevisionStore {
                path: None,
                reserved: u64::MAX,
                next: 1,
            });
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let reserved = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: expected a revision number, found '{}'",
                        path.display(),
                        s.trim()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut store = RevisionStore {
            path: Some(path),
            reserved,
            next: reserved + 1,
        };
        store.reserve_through(store.next)?;
        Ok(store)
    }

    /// The next revision (not yet handed out).
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Hand out the next revision, persisting a new reservation when needed.
    pub fn hand_out(&mut self) -> std::io::Result<u64> {
        let r = self.next;
        self.reserve_through(r)?;
        self.next += 1;
        Ok(r)
    }

    fn reserve_through(&mut self, r: u64) -> std::io::Result<()> {
        if r <= self.reserved {
            return Ok(());
        }
        let reserved = r + BLOCK;
        if let Some(path) = &self.path {
            write_atomically(path, format!("{reserved}\n").as_bytes())?;
        }
        self.reserved = reserved;
        Ok(())
    }
}

/// Write `data` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_continue_above_everything_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = RevisionStore::open(Some(dir.path())).unwrap();
        let first = a.hand_out().unwrap();
        let mut last = first;
        for _ in 0..1500 {
            last = a.hand_out().unwrap();
        }
        drop(a);
        let mut b = RevisionStore::open(Some(dir.path())).unwrap();
        assert!(b.hand_out().unwrap() > last);
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        let err = RevisionStore::open(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("expected a revision number"));
    }
}
