//! What a [`Write`] does to a log, decided without I/O from what the log holds: the checks
//! that keep the log whole (no gap, no overwrite of compacted entries, snapshots inside the
//! log) and the state after it. Both logs carry the same plan out: [`SledStorage`] in one
//! durable sled batch, [`MemLog`](crate::MemLog) in memory, so the test harness's log
//! behaves as the disk's does.

use super::*;

/// One change to the entries, in order (a later one wins for the same index).
#[derive(Debug)]
pub(crate) enum EntryOp {
    /// Remove the entries `from..=to` (none when `from > to`).
    Remove { from: u64, to: u64 },
    /// Put the write's entry at this position of `Write::entries`.
    Put(usize),
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) next: Cache,
    pub(crate) entries: Vec<EntryOp>,
}

impl Cache {
    /// The log after `w`, and the changes to its entries; `term_of` reads the term of an
    /// entry already in the log. Refused (nothing changes) when `w` would break the log.
    pub(crate) fn plan(
        &self,
        w: &Write,
        term_of: impl Fn(u64) -> Result<u64, StorageError>,
    ) -> Result<Plan, StorageError> {
        let mut next = self.clone();
        let mut ops = Vec::new();
        if let Some(snap) = &w.snapshot {
            let meta = snap.get_metadata();
            if meta.index < next.first {
                return Err(StorageError::Invalid(format!(
                    "snapshot at {} is older than the log's first index {}",
                    meta.index, next.first
                )));
            }
            ops.push(EntryOp::Remove {
                from: next.first,
                to: next.last,
            });
            next.hard_state.term = next.hard_state.term.max(meta.term);
            next.hard_state.commit = meta.index;
            next.conf_state = meta.get_conf_state().clone();
            next.conf_index = next.conf_index.max(meta.index);
            next.snapshot_meta = meta.clone();
            next.first = meta.index + 1;
            next.last = meta.index;
        }
        if let Some(first_new) = w.entries.first().map(|e| e.index) {
            if first_new < next.first {
                return Err(StorageError::Invalid(format!(
                    "entries from {first_new} would overwrite compacted ones (first index {})",
                    next.first
                )));
            }
            if first_new > next.last + 1 {
                return Err(StorageError::Invalid(format!(
                    "entries from {first_new} leave a gap after {}",
                    next.last
                )));
            }
            for (i, e) in w.entries.iter().enumerate() {
                if e.index != first_new + i as u64 {
                    return Err(StorageError::Invalid(format!(
                        "entries are not consecutive at {}",
                        e.index
                    )));
                }
            }
            ops.push(EntryOp::Remove {
                from: first_new,
                to: next.last,
            });
            ops.extend((0..w.entries.len()).map(EntryOp::Put));
            next.last = first_new + w.entries.len() as u64 - 1;
        }
        if let Some(hs) = &w.hard_state {
            next.hard_state = hs.clone();
        }
        if let Some(cs) = &w.conf_state {
            next.conf_state = cs.clone();
        }
        if let Some(cs) = &w.initial_conf {
            next.initial_conf = Some(cs.clone());
        }
        if let Some(index) = w.conf_index {
            next.conf_index = index;
        }
        if let Some((index, conf_state, _)) = &w.own_snapshot {
            let index = *index;
            if index < next.snapshot_meta.index || index > next.last || index < next.first - 1 {
                return Err(StorageError::Invalid(format!(
                    "a snapshot at {index} is outside the log ({}..={}) or older than the last one ({})",
                    next.first, next.last, next.snapshot_meta.index
                )));
            }
            let term = if index == next.snapshot_meta.index {
                next.snapshot_meta.term
            } else {
                match w.entries.iter().find(|e| e.index == index) {
                    Some(e) => e.term,
                    None => term_of(index)?,
                }
            };
            let mut meta = SnapshotMetadata {
                index,
                term,
                ..SnapshotMetadata::default()
            };
            meta.set_conf_state(conf_state.clone());
            next.snapshot_meta = meta;
        }
        if let Some(to) = w.compact_to {
            if to > next.snapshot_meta.index + 1 {
                return Err(StorageError::Invalid(format!(
                    "compacting to {to} would drop entries after the latest snapshot ({})",
                    next.snapshot_meta.index
                )));
            }
            if to > next.first {
                ops.push(EntryOp::Remove {
                    from: next.first,
                    to: to - 1,
                });
                next.first = to;
            }
        }
        Ok(Plan { next, entries: ops })
    }
}
