//! When a changed manifest file is complete enough to read (pure: times are passed in).
//!
//! A file rewritten in place passes through states nobody meant: empty after `>` truncates
//! it, cut off mid-document while a slow writer works. Reading one of those would delete or
//! widen policy. So a change is read only once it is complete:
//! * its writer closed it, or it was renamed into place (inotify says so: [`Hint`]); or
//! * without such a sign, it has not changed for `settle` (its modification time counts, so
//!   a file written long ago is read at once, at startup too);
//! * a file inotify saw written and not yet closed waits for the close, however long: a
//!   writer that stalls mid-rule must never have its half enforced (if inotify loses events,
//!   hints are forgotten and the quiet period applies).
//!
//! And a complete change that *removes* objects the file held (emptied, truncated, shrunk)
//! is applied only once the file has stayed so for `hold`, unless it was renamed into place
//! (an atomic replace is a deliberate whole new version). Deleting a file is explicit and
//! removes its objects at once.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime};

/// What identifies one content of a file, as cheaply as a `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub inode: u64,
    pub dev: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// How long ago a file was last modified, by the wall clock (zero if in the future).
pub fn age(meta: &std::fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default()
}

/// What inotify last said about a path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hint {
    /// Nothing (no watcher, or no event since the last applied change).
    #[default]
    None,
    /// Created or written, and not closed since: a writer may hold it open.
    Writing,
    /// Closed after writing.
    Closed,
    /// Renamed into place: complete, and a deliberate whole new version.
    Renamed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Quiet period for a change without a sign of completion.
    pub settle: Duration,
    /// How long a removal waits, and how long a file held open for writing may wait.
    pub hold: Duration,
}

/// A change of a file seen and not applied yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub stamp: Stamp,
    /// Since when the file has had this content.
    pub quiet_since: Instant,
}

impl Pending {
    /// A pending change after observing `stamp` at `now` (its modification time `age` ago).
    pub fn observe(
        previous: Option<Pending>,
        stamp: Stamp,
        now: Instant,
        age: Duration,
    ) -> Pending {
        match previous {
            Some(p) if p.stamp == stamp => p,
            _ => Pending {
                stamp,
                quiet_since: now.checked_sub(age).unwrap_or(now),
            },
        }
    }

    /// `None`: read it now. `Some(t)`: not now; look again at `t`.
    pub fn read_at(&self, hint: Hint, now: Instant, t: Timing) -> Option<Instant> {
        let at = match hint {
            Hint::Closed | Hint::Renamed => return None,
            // Only its writer's close (or rename) says it is complete: look again later.
            Hint::Writing => return Some(now + t.hold.max(t.settle).max(Duration::from_secs(1))),
            Hint::None => self.quiet_since + t.settle,
        };
        (now < at).then_some(at)
    }

    /// For a change that removes objects: `None` to apply it now, `Some(t)`: hold until `t`.
    pub fn removals_at(&self, hint: Hint, now: Instant, t: Timing) -> Option<Instant> {
        if hint == Hint::Renamed {
            return None;
        }
        let at = self.quiet_since + t.hold;
        (now < at).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        settle: Duration::from_secs(1),
        hold: Duration::from_secs(10),
    };

    fn stamp(len: u64) -> Stamp {
        Stamp {
            len,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 1,
            dev: 1,
        }
    }

    #[test]
    fn a_change_is_read_once_quiet_or_closed() {
        let t0 = Instant::now();
        let p = Pending::observe(None, stamp(0), t0, Duration::ZERO);
        assert_eq!(p.read_at(Hint::None, t0, T), Some(t0 + T.settle));
        assert_eq!(p.read_at(Hint::None, t0 + T.settle, T), None);
        assert_eq!(p.read_at(Hint::Closed, t0, T), None);
        assert_eq!(p.read_at(Hint::Renamed, t0, T), None);
        // Open for writing: waits for the close, however long.
        for later in [T.settle, T.hold, T.hold * 100] {
            assert!(p.read_at(Hint::Writing, t0 + later, T).is_some());
        }
        // Another content restarts the quiet period; the same keeps it.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            Pending::observe(Some(p), stamp(0), later, Duration::ZERO),
            p
        );
        let q = Pending::observe(Some(p), stamp(5), later, Duration::ZERO);
        assert_eq!(q.quiet_since, later);
        // A file last modified long ago is quiet already.
        let old = Pending::observe(None, stamp(9), t0, Duration::from_secs(60));
        assert_eq!(old.read_at(Hint::None, t0, T), None);
    }

    #[test]
    fn removals_wait_unless_renamed_into_place() {
        let t0 = Instant::now();
        let p = Pending::observe(None, stamp(0), t0, Duration::ZERO);
        assert_eq!(p.removals_at(Hint::Closed, t0, T), Some(t0 + T.hold));
        assert_eq!(p.removals_at(Hint::None, t0 + T.hold, T), None);
        assert_eq!(p.removals_at(Hint::Renamed, t0, T), None);
    }
}
