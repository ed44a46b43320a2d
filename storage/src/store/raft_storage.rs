//! raft-rs's `Storage` over the sled log: what raft-rs reads (its state, entries, terms,
//! indexes and the snapshot), from the cache the writes keep.

use super::*;

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
        let (first, last) = {
            let c = self.cache();
            (c.first, c.last)
        };
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        for kv in self
            .db
            .range(Key::Entry(low).to_bytes()..Key::Entry(high).to_bytes())
        {
            let (_, v) = kv.map_err(other)?;
            out.push(Entry::parse_from_bytes(&v).map_err(other)?);
        }
        if out.len() as u64 != high - low {
            return Err(other(format!(
                "{}: entries {low}..{high} are not all there",
                self.path.display()
            )));
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (first, last, snap) = {
            let c = self.cache();
            (
                c.first,
                c.last,
                (c.snapshot_meta.index, c.snapshot_meta.term),
            )
        };
        if idx == snap.0 {
            return Ok(snap.1);
        }
        if idx < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        self.read_entry(idx).map(|e| e.term).map_err(other)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cache().first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cache().last)
    }

    /// The latest snapshot, if it reaches `request_index`; otherwise the replica is asked to
    /// take a newer one ([`raft::StorageError::SnapshotTemporarilyUnavailable`]).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.cache().snapshot_meta.clone();
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
        let data = std::fs::read(Self::snapshot_file(&self.path, meta.index)).map_err(other)?;
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.set_data(data.into());
        Ok(snap)
    }
}
