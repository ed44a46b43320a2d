//! The controller's configuration as `server::start` takes it (the binary builds it from its
//! flags), and what can fail while starting.

use std::path::PathBuf;
use std::time::Duration;

use palisade_replica::ReplicaError;
use palisade_storage::StorageError;

use super::listen;
use crate::history::Limits;
use crate::replication::transport::TransportError;
use crate::replication::{self, bootstrap};
use crate::source::{self, Timing};

/// PEM files for mTLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA that signs agent and operator certificates.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// A directory of manifests the leader watches (`None`: objects come only from
    /// `palisadectl apply`, the standalone store).
    pub manifests: Option<PathBuf>,
    pub default_namespace: String,
    /// Where the Raft log (`raft/`) and the manifest source's records (`source/`) live;
    /// `None`: a temporary directory removed at exit.
    pub state_dir: Option<PathBuf>,
    /// This replica and its group.
    pub replication: replication::Config,
    /// `None`: plaintext, no identities (development only).
    pub tls: Option<TlsFiles>,
    /// HTTP/2 and TCP keepalives on every connection.
    pub keepalive: Duration,
    /// How often each agent is told where this replica stands ([`crate::sync`]).
    pub agent_keepalive: Duration,
    /// Rescan the manifests this often even without file events.
    pub rescan: Duration,
    /// Wait this long after a file event for more before rescanning.
    pub debounce: Duration,
    /// When a changed manifest is complete enough to read, and how long removals wait.
    pub timing: Timing,
    /// Bounds on each manifest file (bytes, nesting depth).
    pub limits: palisade_policy::manifest::Limits,
    /// Directories outside the manifests directory its links may lead to.
    pub manifest_link_roots: Vec<PathBuf>,
    /// A manifest taking longer to read and parse is reported; others are read beside it.
    pub parse_budget: Duration,
    pub history: Limits,
    /// Bounds on connections (total, per address, TLS handshake time).
    pub connections: listen::Limits,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Largest gRPC message sent (a snapshot); messages received are held to the smaller of
    /// this and 16 MiB (agents send small acks).
    pub max_message_bytes: usize,
    /// How long this replica may be without a leader before it refuses agents (they move).
    pub shed_agents_after: Duration,
    /// How long an agent holding a version this replica has not applied yet waits for it
    /// before it is sent to another replica.
    pub resume_wait: Duration,
    /// When and how fast a replica holding more than its share of the agents sends some to
    /// the other replicas.
    pub rebalance: crate::rebalance::Config,
    /// How often the replicated state is linted (when it changed); zero: only when asked.
    pub lint_every: Duration,
    /// Read Namespaces, Pods and NetworkPolicies from a Kubernetes API server (leader only).
    pub kubernetes: Option<crate::kubernetes::Options>,
    /// A plaintext listener serving only gRPC health (for kubelet probes; the main listener
    /// needs client certificates).
    pub health_listen: Option<std::net::SocketAddr>,
}

impl Config {
    /// A single replica watching `manifests`.
    pub fn new(manifests: impl Into<PathBuf>) -> Config {
        Config {
            manifests: Some(manifests.into()),
            ..Config::standalone()
        }
    }

    /// A single replica whose objects come only from `palisadectl apply`.
    pub fn standalone() -> Config {
        Config {
            manifests: None,
            replication: replication::Config::default(),
            default_namespace: "default".into(),
            state_dir: None,
            tls: None,
            keepalive: Duration::from_secs(10),
            agent_keepalive: Duration::from_secs(2),
            rescan: Duration::from_secs(30),
            debounce: Duration::from_millis(50),
            timing: Timing {
                settle: Duration::from_secs(1),
                hold: Duration::from_secs(10),
            },
            limits: palisade_policy::manifest::Limits::default(),
            manifest_link_roots: Vec::new(),
            parse_budget: Duration::from_secs(2),
            history: Limits::default(),
            connections: listen::Limits::default(),
            max_streams_per_connection: 64,
            max_message_bytes: 256 << 20,
            shed_agents_after: Duration::from_secs(3),
            resume_wait: Duration::from_secs(5),
            rebalance: crate::rebalance::Config {
                after: Duration::from_secs(10),
                rate: 50,
            },
            lint_every: Duration::from_secs(300),
            kubernetes: None,
            health_listen: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("manifests directory {0}: {1}")]
    Manifests(PathBuf, String),
    #[error("the manifest source's records: {0}")]
    Records(#[from] source::RecordError),
    #[error("state directory: {0}")]
    State(std::io::Error),
    #[error("the Raft log: {0}")]
    Log(#[from] StorageError),
    #[error("the replica: {0}")]
    Replica(#[from] ReplicaError),
    #[error("this replica's identity: {0}")]
    Identity(#[from] bootstrap::IdentityError),
    #[error("peers: {0}")]
    Peers(#[from] TransportError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
    #[error("the Kubernetes source: {0}")]
    Kube(#[from] crate::kubernetes::KubeError),
    #[error("cannot listen on {0} for health checks: {1}")]
    Health(std::net::SocketAddr, std::io::Error),
}
