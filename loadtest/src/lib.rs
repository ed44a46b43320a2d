//! Palisade's load and scale tests. Synthetic multi-tenant clusters come from [`synth`]
//! (deterministic for a seed). [`compile`] feeds them to the policy engine and measures full
//! compile time, peak memory, incremental latency and slice sizes; [`sync`] writes them as
//! manifests ([`manifests`]) for a real controller with many real agents in one process and
//! times edits to every affected agent's ack; [`datapath`] measures the TC programs' per-packet
//! cost at growing rule counts; [`raft`] runs a group of controller replicas and times
//! proposals to every replica, the log's disk use, and catch-up by snapshot; [`failover`]
//! kills leaders under many agents; [`kube`] drives the Kubernetes source from the API-server
//! emulator; [`cluster`] runs the scale and chaos scenario with its checker and plots, over
//! replica processes ([`replicas`], [`proxy`]) and in-process agents ([`fleet`]). Reports go to
//! stdout (JSON or a table), progress to stderr.

pub mod cluster;
pub mod compile;
pub mod datapath;
pub mod failover;
pub mod fleet;
pub mod kube;
pub mod manifests;
pub mod proxy;
pub mod raft;
pub mod replicas;
pub mod sync;
pub mod synth;
