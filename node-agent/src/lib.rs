//! The Palisade node agent.
//!
//! Data comes from the controller's sync stream ([`client`]) as snapshots and deltas of the
//! node's slice; each is applied to a copy of the held slice, checked against the controller's
//! digest, saved to the state directory ([`store`]) and then installed into the [`dataplane`]
//! (all or nothing; a slice that cannot be installed is unsaved again), and only then
//! acknowledged by version and digest, or nacked with the error. Saving first means what is
//! saved is never older than what the dataplane holds and acked: a restarted agent installs
//! its saved slice again and resumes from its version.

pub mod client;
pub mod dataplane;
pub mod ebpf;
pub mod metrics;
pub mod metrics_http;
pub mod store;

pub use client::{Agent, AgentConfig, ClientTls, Phase, Status};
pub use dataplane::{
    Capacities, Dataplane, DataplaneError, Installed, Kind as DataplaneKind, MemoryDataplane,
};
pub use ebpf::{EbpfConfig, EbpfDataplane, EbpfError};
pub use store::StateStore;
