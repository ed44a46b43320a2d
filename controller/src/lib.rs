//! The Palisade controller: one replica of a Raft group (a group of one by default).
//!
//! Data comes from the leader's sources: the Kubernetes API server ([`kubernetes`]), a
//! directory of manifests ([`source`]) and objects operators send ([`admin`], the standalone
//! store).
//! They become batches of `palisade-policy` commands proposed to the Raft log
//! ([`replication`]: raft-rs on sled, peers over gRPC); every replica applies each committed
//! entry at its log index, the revision, in the [`hub`] (the state machine, the per-node
//! update [`history`], [`rollout`] state), and streams changes to node agents over the gRPC
//! sync stream ([`sync`]), one delta per node change, pre-encoded and shared. Agents' acks
//! come back into the rollout state, which [`introspection`] and [`metrics`] expose; [`auth`]
//! decides who may do what from client certificates; [`server`] wires it all to listeners.

pub mod acks;
pub mod admin;
pub mod auth;
pub mod history;
pub mod hub;
pub mod introspection;
pub mod kubernetes;
pub mod lint;
pub mod metrics;
pub mod rebalance;
pub mod replication;
pub mod rollout;
pub mod server;
pub mod source;
pub mod sync;
