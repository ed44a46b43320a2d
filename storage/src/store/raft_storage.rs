//! raft-rs's `Storage` over a log: what raft-rs reads (its state, entries, terms, indexes
//! and the snapshot), from the cache the writes keep. The checks are the same for the sled
//! log and the memory log; only where entries and snapshot data are read from differs.

use super::*;

/// The entries `low..high` (at most `max_size` bytes, at least one), read by `read` once
/// the range is known to be in the log.
pub(crate) fn entries(
    c: &Cache,
    low: u64,
    high: u64,
    max_size: Option<u64>,
    read: impl FnOnce(u64, u64) -> raft::Result<Vec<Entry>>,
) -> raft::Result<Vec<Entry>> {
    if low < c.first {
        return Err(raft::Error::Store(raft::StorageError::Compacted));
    }
    if high > c.last + 1 {
        return Err(raft::Error::Store(raft::StorageError::Unavailable));
    }
    let mut out = read(low, high)?;
    if out.len() as u64 != high - low {
        return Err(other(format!("entries {low}..{high} are not all there")));
    }
    raft::util::limit_size(&mut out, max_size);
    Ok(out)
}

/// The term of the entry at `idx` (the snapshot's, at its index), read by `read` once the
/// entry is known to be in the log.
pub(crate) fn term(
    c: &Cache,
    idx: u64,
    read: impl FnOnce(u64) -> raft::Result<u64>,
) -> raft::Result<u64> {
    if idx == c.snapshot_meta.index {
        return Ok(c.snapshot_meta.term);
    }
    if idx < c.first {
        return Err(raft::Error::Store(raft::StorageError::Compacted));
    }
    if idx > c.last {
        return Err(raft::Error::Store(raft::StorageError::Unavailable));
    }
    read(idx)
}

/// The latest snapshot, if it reaches `request_index`; otherwise the replica is asked to
/// take a newer one ([`raft::StorageError::SnapshotTemporarilyUnavailable`]). `data` reads
/// the snapshot's data at an index.
pub(crate) fn snapshot(
    meta: SnapshotMetadata,
    request_index: u64,
    to: u64,
    data: impl FnOnce(u64) -> raft::Result<Vec<u8>>,
) -> raft::Result<Snapshot> {
    let cs = meta.get_conf_state();
    // A replica added after the snapshot would refuse it (it is not in its
    // configuration): the leader takes a new one when it adds a replica, and sends that.
    // `to` 0: the replica's own read of its latest snapshot (always answered).
    let holds = |id: u64| {
        id == 0 || cs.voters.is_empty() || cs.voters.contains(&id) || cs.learners.contains(&id)
    };
    if meta.index < request_index || meta.index == 0 || !holds(to) {
        return Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ));
    }
    let data = data(meta.index)?;
    let mut snap = Snapshot::default();
    snap.set_metadata(meta);
    snap.set_data(data.into());
    Ok(snap)
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.cache();
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        entries(&self.cache(), low, high, max_size.into(), |low, high| {
            self.db
                .range(Key::Entry(low).to_bytes()..Key::Entry(high).to_bytes())
                .map(|kv| {
                    let (_, v) = kv.map_err(other)?;
                    Entry::parse_from_bytes(&v).map_err(other)
                })
                .collect()
        })
        .map_err(|e| match e {
            raft::Error::Store(raft::StorageError::Other(why)) => {
                other(format!("{}: {why}", self.path.display()))
            }
            e => e,
        })
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        term(&self.cache(), idx, |idx| {
            self.read_entry(idx).map(|e| e.term).map_err(other)
        })
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cache().first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cache().last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.cache().snapshot_meta.clone();
        snapshot(meta, request_index, to, |index| {
            std::fs::read(Self::snapshot_file(&self.path, index)).map_err(other)
        })
    }
}
