//! Palisade's pure core: everything about *what* is enforced, and nothing about I/O.
//!
//! Data comes in as Kubernetes objects (k8s-openapi types, or manifest text via
//! [`manifest::parse`]), is validated into the [`model`] by [`k8s`] (rejecting what the API
//! server would reject), and is fed to the [`engine::Engine`] as [`model::Command`]s at
//! revisions. The engine keeps every node's [`slice::NodeSlice`] (the minimal policy a node
//! needs) and, for each command, returns the nodes whose slice changed with a canonical
//! [`delta::SliceDelta`] and digest. Out go: slices and deltas to the controller's sync stream,
//! [`eval`] verdicts to `palisadectl` and introspection, [`lint`] findings (valid policies that are
//! probably wrong) to `palisadectl lint` and the controller's report, and [`lower`]ed map images to the node
//! agent's eBPF maps. No tokio, no sockets, no files, no clocks, no randomness: the same
//! commands give byte-identical slices and digests on every replica.

pub mod cluster;
pub mod delta;
pub mod digest;
pub mod encode;
pub mod engine;
pub mod eval;
pub mod k8s;
pub mod lint;
pub mod lower;
pub mod manifest;
pub mod model;
pub mod narrow;
pub mod net;
pub mod report;
pub mod slice;

pub use delta::{apply, diff, SliceDelta};
pub use digest::Digest;
pub use engine::{Engine, NodeUpdate};
pub use eval::{evaluate, explain, Flow, Verdict};
pub use model::Command;
pub use slice::NodeSlice;
