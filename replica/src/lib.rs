//! One controller replica's Raft state machine, without I/O of its own: the driver (the
//! controller's tokio adapter, or the deterministic test harness) feeds it ticks, messages from
//! peers and proposals, and carries out what it returns: messages to send and events (entries
//! applied, with the nodes whose slices they changed; a snapshot installed; a role change).
//!
//! Data comes from the leader's sources as batches of `palisade_policy` commands ([`entry`]),
//! goes through raft-rs into the log on disk (`palisade-storage`, through [`LogStore`]), and,
//! once committed, into the policy engine ([`machine`]) at the entry's index, which is the
//! revision: every replica applies the same entries at the same indexes and so computes the
//! same slices, versions and digests. State-machine snapshots (the objects and each node's
//! version, canonically encoded) bound the log and bring lagging replicas up to date.

pub mod entry;
mod log;
pub mod machine;
mod node;

pub use entry::{Batch, ProposalId};
pub use machine::Machine;
pub use node::{
    decode_message, encode_message, Event, LogStore, Options, Output, ProposeError, Replica,
    ReplicaError, Role, Status,
};
pub use raft::eraftpb::Message;
