//! The Palisade controller.
//!
//! Data comes from a directory of manifests ([`source`], until the Kubernetes watch exists),
//! becomes `palisade-policy` commands at revisions in the [`hub`] (the engine, the per-node
//! update [`history`], [`rollout`] state), and goes out to node agents over the gRPC sync stream
//! ([`sync`]), one delta per node change, pre-encoded and shared. Agents' acks come back into the
//! rollout state, which [`introspection`] and [`metrics`] expose; [`auth`] decides who may do
//! what from client certificates; [`server`] wires it all to listeners.

pub mod auth;
pub mod history;
pub mod hub;
pub mod introspection;
pub mod metrics;
pub mod revision;
pub mod rollout;
pub mod server;
pub mod source;
pub mod sync;
