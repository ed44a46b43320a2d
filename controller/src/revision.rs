//! Revisions that never go backwards across controller restarts (until the Raft log index
//! replaces them).
//!
//! The state directory holds a reservation: the highest revision this controller may have
//! handed out. It is raised in blocks (one fsynced write per block, not per revision), and a
//! restarted controller starts above it. Skipped numbers are harmless: revisions only need to
//! increase.

use std::path::{Path, PathBuf};

const BLOCK: u64 = 1000;
const FILE: &str = "revision";

#[derive(Debug)]
pub struct RevisionStore {
    path: Option<PathBuf>,
    reserved: u64,
    next: u64,
    /// Revisions reserved by one write.
    block: u64,
}

impl RevisionStore {
    /// A store in `dir` (created if missing), or in memory only when `dir` is `None`.
    pub fn open(dir: Option<&Path>) -> std::io::Result<RevisionStore> {
        Self::open_with_block(dir, BLOCK)
    }

    /// The same, reserving `block` revisions per write (tests reach the end of one).
    pub fn open_with_block(dir: Option<&Path>, block: u64) -> std::io::Result<RevisionStore> {
        let block = block.max(1);
        let Some(dir) = dir else {
            return Ok(RevisionStore {
                path: None,
                reserved: u64::MAX,
                next: 1,
                block: BLOCK,
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
            block,
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
        Ok(self.hand_out_many(1)?.start)
    }

    /// Hand out `n` consecutive revisions, all or none: when the reservation cannot be
    /// persisted, nothing is handed out and the same revisions are offered next time.
    pub fn hand_out_many(&mut self, n: u64) -> std::io::Result<std::ops::Range<u64>> {
        let first = self.next;
        self.reserve_through(first + n.saturating_sub(1))?;
        self.next += n;
        Ok(first..self.next)
    }

    fn reserve_through(&mut self, r: u64) -> std::io::Result<()> {
        if r <= self.reserved {
            return Ok(());
        }
        let reserved = r + self.block;
        if let Some(path) = &self.path {
            palisade_files::atomic::write(path, format!("{reserved}\n").as_bytes())?;
        }
        self.reserved = reserved;
        Ok(())
    }
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

    #[test]
    fn a_reservation_that_cannot_be_written_hands_out_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RevisionStore::open_with_block(Some(dir.path()), 2).unwrap();
        let first = store.hand_out_many(3).unwrap();
        assert_eq!(first.end - first.start, 3);
        // The reservation file replaced by a non-empty directory: the write fails for real.
        let path = dir.path().join(FILE);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "").unwrap();
        let mut failed = 0;
        while store.hand_out_many(1).is_ok() {
            failed += 1;
            assert!(failed < 10, "the reservation must run out");
        }
        let stuck = store.peek();
        assert!(store.hand_out_many(2).is_err());
        assert_eq!(store.peek(), stuck, "nothing handed out");
        std::fs::remove_dir_all(&path).unwrap();
        assert_eq!(store.hand_out_many(2).unwrap().start, stuck);
    }
}
