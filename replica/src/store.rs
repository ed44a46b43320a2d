//! Where a replica's log lives: the trait the replica writes through, for the sled log on
//! disk and the same log in memory (the deterministic harness).

use palisade_storage::{MemLog, SledStorage, StorageError, Write};
use raft::Storage;

/// Where the log lives: raft-rs reads it through `raft::Storage`; the replica writes each
/// `Ready` through `write`, which must be durable when it returns.
pub trait LogStore: Storage {
    fn write(&self, w: Write) -> Result<(), StorageError>;
    /// The index of the entry whose configuration change the stored configuration holds.
    fn conf_index(&self) -> u64;
}

impl LogStore for SledStorage {
    fn write(&self, w: Write) -> Result<(), StorageError> {
        SledStorage::write(self, w)
    }
    fn conf_index(&self) -> u64 {
        SledStorage::conf_index(self)
    }
}

/// The same log in memory, for the deterministic harness (nothing durable).
impl LogStore for MemLog {
    fn write(&self, w: Write) -> Result<(), StorageError> {
        MemLog::write(self, w)
    }
    fn conf_index(&self) -> u64 {
        MemLog::conf_index(self)
    }
}
