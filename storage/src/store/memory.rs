//! [`MemLog`]: the Raft log in memory, for the deterministic test harness: the same writes,
//! checks and reads as [`SledStorage`] (one [`Plan`] per write, the same raft-rs reads), with
//! nothing durable. A "crash" keeps what the log held, as a disk would; a wiped disk is a new
//! `MemLog`.

use std::collections::BTreeMap;

use super::raft_storage;
use super::*;

#[derive(Default)]
struct Mem {
    cache: Cache,
    entries: BTreeMap<u64, Entry>,
    /// Snapshot data by index: the current one, and any staged after it.
    snapshots: BTreeMap<u64, Vec<u8>>,
}

/// Clones share the log (as the controller's threads share the sled one).
#[derive(Clone)]
pub struct MemLog {
    mem: Arc<RwLock<Mem>>,
}

impl Default for MemLog {
    fn default() -> MemLog {
        MemLog::new()
    }
}

impl MemLog {
    /// An empty log (as a new directory).
    pub fn new() -> MemLog {
        let mem = Mem {
            cache: Cache {
                first: 1,
                ..Cache::default()
            },
            ..Mem::default()
        };
        MemLog {
            mem: Arc::new(RwLock::new(mem)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Mem> {
        self.mem.read().expect("memory log lock")
    }

    /// Apply `w` as [`SledStorage::write`] does (refused as it would be).
    pub fn write(&self, w: Write) -> Result<(), StorageError> {
        let mut mem = self.mem.write().expect("memory log lock");
        let Plan { next, entries } = mem.cache.plan(&w, |i| {
            mem.entries
                .get(&i)
                .map(|e| e.term)
                .ok_or_else(|| StorageError::Invalid(format!("entry {i} is missing")))
        })?;
        if let Some((index, _, None)) = &w.own_snapshot {
            if !mem.snapshots.contains_key(index) {
                return Err(StorageError::Invalid(format!(
                    "no snapshot data was staged at {index}"
                )));
            }
        }
        for op in entries {
            match op {
                EntryOp::Remove { from, to } => {
                    if from <= to {
                        let kept = mem.entries.split_off(&from);
                        mem.entries
                            .extend(kept.into_iter().filter(|(i, _)| *i > to));
                    }
                }
                EntryOp::Put(at) => {
                    let e = w.entries[at].clone();
                    mem.entries.insert(e.index, e);
                }
            }
        }
        if let Some(snap) = &w.snapshot {
            mem.snapshots
                .insert(snap.get_metadata().index, snap.get_data().to_vec());
        }
        if let Some((index, _, Some(data))) = w.own_snapshot {
            mem.snapshots.insert(index, data);
        }
        // Only the current snapshot's data is kept (and any staged after it).
        let current = next.snapshot_meta.index;
        mem.snapshots.retain(|i, _| *i >= current);
        mem.cache = next;
        Ok(())
    }

    /// Stage a snapshot's data, as [`SledStorage::stage_snapshot`] does.
    pub fn stage_snapshot(&self, index: u64, data: Vec<u8>) -> Result<(), StorageError> {
        let mut mem = self.mem.write().expect("memory log lock");
        if index <= mem.cache.snapshot_meta.index {
            return Err(StorageError::Invalid(format!(
                "a snapshot at {index} is not newer than the current one"
            )));
        }
        mem.snapshots.insert(index, data);
        Ok(())
    }

    /// The index of the entry whose configuration change the stored configuration holds.
    pub fn conf_index(&self) -> u64 {
        self.read().cache.conf_index
    }

    /// The metadata of the latest snapshot (index 0: none).
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.read().cache.snapshot_meta.clone()
    }
}

impl raft::Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let mem = self.read();
        Ok(RaftState::new(
            mem.cache.hard_state.clone(),
            mem.cache.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let mem = self.read();
        raft_storage::entries(&mem.cache, low, high, max_size.into(), |low, high| {
            Ok(mem
                .entries
                .range(low..high)
                .map(|(_, e)| e.clone())
                .collect())
        })
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let mem = self.read();
        raft_storage::term(&mem.cache, idx, |idx| {
            mem.entries
                .get(&idx)
                .map(|e| e.term)
                .ok_or_else(|| other(format!("entry {idx} is missing")))
        })
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().cache.first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().cache.last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mem = self.read();
        raft_storage::snapshot(mem.cache.snapshot_meta.clone(), request_index, to, |i| {
            mem.snapshots
                .get(&i)
                .cloned()
                .ok_or_else(|| other(format!("the snapshot at {i} has no data")))
        })
    }
}
