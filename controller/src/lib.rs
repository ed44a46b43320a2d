//! The Palisade controller: one replica of a Raft group (a group of one by default).
//!
//! Data comes from the leader's sources: the Kubernetes API server ([`kubernetes`]), a
//! directory of manifests ([`source`]) and objects operators send ([`admin`], the standalone
//! store); the first two live one [`leader`] lifecycle (lead while this replica leads,
//! reconcile, run, start over).
//! They become batches of `palisade-policy` commands proposed to the Raft log
//! ([`replication`]: raft-rs on sled, peers over gRPC); every replica applies each committed
//! entry at its log index, the revision, to its [`applied`] state (the state machine and the
//! per-node update [`history`]), owned by its apply thread alone, which publishes a [`view`]
//! per revision through the [`hub`] and tells the [`rollout`] what changed. The sync stream
//! ([`sync`], which owns the registry of open streams) plans from the view, one delta per
//! node change, pre-encoded and shared. What sources could not take, and the Kubernetes
//! watches' states, are their [`reports`]; [`lint`] owns its findings. Agents' acks
//! come back into the rollout state, which [`introspection`] and [`metrics`] expose; [`auth`]
//! decides who may do what from client certificates; [`server`] wires it all to listeners.
//!
//! # Threads and locks
//!
//! The applied state has no lock: its one writer, the apply thread, owns it. Readers load the
//! view it published last (an `Arc` swapped per revision: one revision, immutable, however
//! many are applied meanwhile), or ask the apply thread ([`hub::Hub::ask`]), which answers
//! between revisions, for what a view does not hold (a slice, the engine, owners).
//!
//! | thread | what it runs | writes | takes |
//! |---|---|---|---|
//! | `raft` ([`replication::driver`]) | the `Replica` (raft-rs over the sled log), proposals, read indexes and their lease | the log; the group status watch (all but `applied`) | nothing the apply thread holds, so a long apply cannot delay heartbeats |
//! | `apply` ([`replication::apply`]) | committed entries and snapshots, in order; readers' questions between them | the applied state (the machine, history), the view it publishes per revision, what each change means for the rollout, `applied`, the revision and node watches | the hub's progress lock briefly per revision, publishing the view inside it (compiling and encoding hold up no ack), the node watches' lock to wake them |
//! | `manifests` ([`source`]) | the manifests directory's [`leader`] lifecycle, driven with `block_on` on this thread (its file work blocks, here only) | the source's records in the state directory | nothing: it asks the apply thread what it owns |
//! | manifest readers ([`source`]'s `reader`) | reading and parsing files, 2 to 8 at a time | their queue (its own mutex and condvar) | nothing else |
//! | tokio workers | every gRPC service (sync, introspection, admin, Raft's transport, the ack exchange), the Kubernetes source, standing, rebalancing, metrics | per-stream state; acks, nacks and connections into the hub's progress | the hub's progress lock (acks take only this one), the ack table's, the connection table's; they await the apply thread's answers, never block on it |
//! | blocking pool | lint (waiting on the apply thread, which lints), merging a peer's ack table, opening stores | the lint cache, the merged acks | the lint cache; the hub's progress lock (a merge checks digests against the view, loaded under it) |
//!
//! Lock order: the lint cache, then the hub's progress (rollout and peers' tables), then its
//! ack table, never the other way round. The progress lock is private to the hub: readers
//! take it only inside `Hub::progress`, whose closure cannot await. The node watches, the
//! connection table ([`server`]), the stream registry ([`sync::Streams`]), the sources'
//! reports ([`reports`]: rejected objects, the Kubernetes board), the transport's peer maps
//! and a replica's `Failure` are leaves: nothing else is taken while they are held. The group
//! status is a tokio `watch` (a parking_lot lock inside): borrow it once, clone what is needed
//! and drop the borrow before anything else, since a second read on the same path deadlocks
//! once a writer waits.

pub mod acks;
pub mod admin;
pub mod applied;
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
