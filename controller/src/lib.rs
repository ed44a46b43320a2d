//! The Palisade controller: one replica of a Raft group (a group of one by default).
//!
//! Data comes from the leader's sources: the Kubernetes API server ([`kubernetes`]), a
//! directory of manifests ([`source`]) and objects operators send ([`admin`], the standalone
//! store); the first two live one [`leader`] lifecycle (lead while this replica leads,
//! reconcile, run, start over).
//! They become batches of `palisade-policy` commands proposed to the Raft log
//! ([`replication`]: raft-rs on sled, peers over gRPC); every replica applies each committed
//! entry at its log index, the revision, in the [`hub`] (the state machine, the per-node
//! update [`history`], [`rollout`] state), and streams changes to node agents over the gRPC
//! sync stream ([`sync`], which owns the registry of open streams), one delta per node
//! change, pre-encoded and shared. What sources could not take, and the Kubernetes watches'
//! states, are their [`reports`]; [`lint`] owns its findings. Agents' acks
//! come back into the rollout state, which [`introspection`] and [`metrics`] expose; [`auth`]
//! decides who may do what from client certificates; [`server`] wires it all to listeners.
//!
//! # Threads and locks
//!
//! | thread | what it runs | writes | takes |
//! |---|---|---|---|
//! | `raft` ([`replication::driver`]) | the `Replica` (raft-rs over the sled log), proposals, read indexes and their lease | the log; the group status watch (all but `applied`) | never the hub's state lock, so a long apply cannot delay heartbeats |
//! | `apply` ([`replication::apply`]) | committed entries and snapshots, in order | the hub's state (the machine, history) and what each change means for the rollout, `applied`, the revision watches | the hub's state lock for each batch; within it, its progress lock briefly per entry (compiling and encoding hold up no ack) |
//! | `manifests` ([`source`]) | the manifests directory's [`leader`] lifecycle, driven with `block_on` on this thread (its file work blocks, here only) | the source's records in the state directory | the hub's state lock, briefly, to read what it owns |
//! | manifest readers ([`source`]'s `reader`) | reading and parsing files, 2 to 8 at a time | their queue (its own mutex and condvar) | nothing else |
//! | tokio workers | every gRPC service (sync, introspection, admin, Raft's transport, the ack exchange), the Kubernetes source, standing, rebalancing, metrics | per-stream state; acks, nacks and connections into the hub's progress | the hub's state lock to read (the known limit in `docs/architecture.md`), its progress lock (acks take only this one), the ack table's, the connection table's |
//! | blocking pool | lint, merging a peer's ack table, opening stores | the lint cache, the merged acks | the hub's state lock, then its progress lock (a merge checks digests against the applied state) |
//!
//! Lock order: the lint cache, then the hub's state, then its progress (rollout and peers'
//! tables), then its ack table, never the other way round. Both hub locks are private to it:
//! readers take them only inside `Hub::read`, `Hub::progress` or `Hub::read_both`, whose
//! closures cannot await. The connection table ([`server`]), the stream registry
//! ([`sync::Streams`]), the sources' reports ([`reports`]: rejected objects, the Kubernetes
//! board), the transport's peer maps and a replica's `Failure` are leaves: nothing else is
//! taken while they are held. The group
//! status is a tokio `watch` (a parking_lot lock inside): borrow it once, clone what is needed
//! and drop the borrow before anything else, since a second read on the same path deadlocks
//! once a writer waits.

pub mod acks;
pub mod admin;
pub mod auth;
pub mod history;
pub mod hub;
pub mod introspection;
pub mod kubernetes;
pub mod leader;
pub mod lint;
pub mod metrics;
pub mod rebalance;
pub mod replication;
pub mod reports;
pub mod rollout;
pub mod server;
pub mod source;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod view;
