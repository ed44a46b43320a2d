//! One controller replica's Raft node and the state machine it feeds, without I/O of their
//! own: the driver (the controller's threads, or the deterministic test harness) feeds the
//! [`Replica`] ticks, messages from peers and proposals, and carries out what it returns:
//! messages to send and events (entries committed, a leader's snapshot to install, a role
//! change).
//!
//! Data comes from the leader's sources as batches of `palisade_policy` commands ([`entry`]),
//! goes through raft-rs into the log on disk (`palisade-storage`, through [`LogStore`]), and,
//! once committed, is applied by the driver to the [`Machine`] (the policy engine and each
//! object's owner) at the entry's index, which is the revision: every replica applies the
//! same entries at the same indexes and so computes the same slices, versions and digests.
//! State-machine snapshots (objects, owners and each node's version, canonically encoded),
//! handed back to the replica, bound the log and bring lagging replicas up to date.

pub mod entry;
pub mod lease;
mod log;
pub mod machine;
pub mod membership;
mod node;
mod store;

pub use entry::{Batch, ProposalId};
pub use lease::{Confirmed, Lease, OWN_READ};
pub use machine::{Applied, Machine, Refused};
pub use membership::{Change, Members};
pub use node::{
    decode_message, encode_message, Event, LogStore, Options, Output, ProposeError, Replica,
    ReplicaError, Role, Status,
};
pub use raft::eraftpb::{Message, MessageType};
