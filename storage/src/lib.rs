//! The Raft log on disk: [`SledStorage`] implements raft-rs's [`raft::Storage`] over one sled
//! tree, and takes each `Ready`'s writes (entries, hard state, a received snapshot, a
//! state-machine snapshot, compaction) as one atomic batch made durable before it returns.
//!
//! Data comes from the replica's Raft loop (what raft-rs hands out in a `Ready`, and the
//! state-machine snapshots the replica takes) and goes back to raft-rs (entries, terms,
//! indexes, snapshots it asks for) and, at startup, to the replica (what was durable when the
//! process stopped). Keys are typed and big-endian ([`keys`]), so the log is ordered by index
//! on disk; a format marker tells a Palisade Raft directory from anything else, and an
//! identity record ([`Identity`]) says which group and replica the directory belongs to.
//! [`MemLog`] is the same log in memory (the same checks on every write), for the
//! deterministic test harness.

mod identity;
pub mod keys;
mod store;

pub use identity::{GroupId, Identity};
pub use raft::eraftpb::ConfState;
pub use store::{Create, MemLog, SledStorage, StorageError, Write};
