//! Palisade's deterministic harness (after raft-rs's `harness/`): N controller cores, each a
//! replica on an in-memory log ([`palisade_storage::MemLog`]) with the hub its entries are
//! applied to and the sync sessions of its agents ([`core`]); one fake agent per node that
//! takes messages as the node agent does ([`agent`]); and a simulated network between them
//! that drops, delays, cuts and heals by kind of message ([`net`]). A [`Cluster`] steps them
//! one tick at a time, every random choice drawn from one seed, so a run replays from its
//! seed. What must never happen (replicas or agents diverging, agents moving back) is
//! checked as the run goes ([`check`]); [`schedule`] draws whole runs of faults from a seed.
//! A [`feed`] is a source every replica reads alike, working only while its replica leads.
//!
//! Data comes from the test (proposals, faults) and goes nowhere but the checks: no sockets,
//! no threads, no clock but the tick.

pub mod agent;
pub mod check;
pub mod cluster;
pub mod core;
pub mod feed;
pub mod net;
pub mod schedule;

pub use cluster::Cluster;
