//! Wiring: the Raft log (sled, under the state directory), the replica's driver and apply
//! threads, the hub, the manifest source (leader only), the gRPC services (Sync,
//! Introspection, Admin, Raft, health, reflection v1 and v1alpha) on one listener, metrics on
//! another. Listeners and shutdown are injected, so tests run controllers on ephemeral ports
//! and stop them at will.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_proto::endpoint::ClientTls;
use palisade_proto::pre_encoded::sync_server::SyncServer;
use palisade_proto::v1::admin_server::AdminServer;
use palisade_proto::v1::introspection_server::IntrospectionServer;
use palisade_proto::v1::raft_server::RaftServer;
use palisade_proto::v1::FILE_DESCRIPTOR_SET;
use palisade_replica::{Machine, Replica, ReplicaError};
use palisade_storage::{Create, SledStorage, StorageError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{info, warn};

pub mod activity;
pub mod conns;
mod http;
pub mod listen;

pub use http::SOURCE_SERVICE;

use crate::admin::AdminService;
use crate::auth::RequireOperator;
use crate::history::Limits;
use crate::hub::Hub;
use crate::introspection::IntrospectionService;
use crate::lint::Linter;
use crate::metrics::Metrics;
use crate::replication::transport::{RaftService, Transport, TransportError};
use crate::replication::{self, bootstrap, standing, Group};
use crate::reports::Reports;
use crate::source::watch::Pace;
use crate::source::{self, Health, ManifestDir, Timing};
use crate::sync::{SyncConfig, SyncService};

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

/// A started controller.
pub struct Running {
    pub hub: Arc<Hub>,
    /// What the sources report (rejected objects, the Kubernetes watches).
    pub reports: Arc<Reports>,
    pub group: Group,
    /// A single replica with manifests: the revision holding them once first read (`start`
    /// waits for it); otherwise the revision applied at start.
    pub loaded_revision: u64,
    /// Whether the manifest source keeps up (also on /readyz and gRPC health).
    pub source_health: tokio::sync::watch::Receiver<Health>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    metrics: Option<JoinHandle<std::io::Result<()>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The state directory when none was given (removed when the controller stops).
    _temporary: Option<tempfile::TempDir>,
}

impl Running {
    /// Wait until the servers stop (after the shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        let grpc = self.grpc.await.expect("gRPC server task");
        let metrics = match self.metrics {
            Some(m) => m.await.expect("metrics server task"),
            None => Ok(()),
        };
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        grpc?;
        metrics.map_err(ServerError::Metrics)
    }
}

fn tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| ServerError::Tls(format!("reading {}: {e}", p.display())))
    };
    listen::server_config(&read(&files.ca)?, &read(&files.cert)?, &read(&files.key)?)
        .map(Arc::new)
        .map_err(ServerError::Tls)
}

/// Load the manifests, then serve gRPC on `grpc` (and metrics on `metrics`) until `shutdown`.
pub async fn start(
    config: Config,
    grpc: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<Running, ServerError> {
    let insecure = config.tls.is_none();
    if insecure {
        warn!(
            "AUTHENTICATION IS OFF (--insecure): plaintext, no client certificates, anyone who reaches this replica's port may apply policies and read every node's slice; for development only (metric palisade_insecure)"
        );
    }
    let tls_config = config.tls.as_ref().map(tls).transpose()?;
    let client_tls = config.tls.as_ref().map(client_tls).transpose()?;
    let (state_dir, temporary) = match &config.state_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::tempdir().map_err(ServerError::State)?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let metrics = Metrics::new();
    metrics.set_insecure(insecure);
    let rc = config.replication.clone();
    // Opening the log reads and checks all of it: off the async workers.
    let store = {
        let dir = state_dir.join("raft");
        tokio::task::spawn_blocking(move || SledStorage::open(&dir, Create::IfMissing))
            .await
            .expect("opening the Raft log")?
    };
    let transport = Arc::new(Transport::new(rc.id, &rc.peers, client_tls.as_ref())?);
    // Who this replica is, settled before it takes any part in its group.
    let membership = {
        let voters = rc.voters();
        let waiting = match bootstrap::needs_protocol(&store, &voters, rc.bootstrap)? {
            true => Some(serve_waiting(
                &grpc,
                &store,
                &rc,
                tls_config.clone(),
                metrics.clone(),
                &shutdown,
            )?),
            false => None,
        };
        let settled =
            bootstrap::settle(&store, rc.id, &voters, rc.bootstrap, &transport, &shutdown).await;
        if let Some(w) = waiting {
            w.cancel();
        }
        let identity = settled?;
        bootstrap::check_membership(&store, &identity, &voters)?;
        Arc::new(bootstrap::Membership::new(store.clone(), identity, voters))
    };
    // Restoring a snapshot compiles: off the async workers.
    let (replica, machine) = {
        let dir = state_dir.join("raft");
        let rc = rc.clone();
        let store = store.clone();
        tokio::task::spawn_blocking(move || open_replica(&dir, store, &rc))
            .await
            .expect("opening the replica")?
    };
    let applied = machine.applied();
    if machine.retired().contains(&rc.id) {
        return Err(bootstrap::IdentityError::Refused(format!(
            "replica {} was removed from its group (the state machine at revision {applied} says so): it never takes part again under this id; add a replica under a new id instead",
            rc.id
        ))
        .into());
    }
    // Replicas added by membership changes are reached at the address the change gave,
    // unless --peers names them (the operator's word now); removed ones are not reached.
    for id in machine.retired() {
        transport.retire(*id);
    }
    for (id, address) in machine.addresses() {
        transport.learn(*id, address)?;
    }
    let hub = Arc::new(Hub::new(rc.id, machine, config.history, metrics.clone()));
    let reports = Arc::new(Reports::new(metrics.clone()));

    let advertised = rc
        .peers
        .get(&rc.id)
        .cloned()
        .or_else(|| grpc.local_addr().ok().map(|a| a.to_string()))
        .unwrap_or_default();
    let started = replication::start::start(replication::start::Parts {
        config: rc.clone(),
        replica,
        store,
        hub: hub.clone(),
        transport: transport.clone(),
        group: membership.group_text().to_string(),
        address: advertised.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    })
    .map_err(ServerError::State)?;
    let replication::start::Started {
        group,
        inbox: inbox_tx,
        refusing: refusing_tx,
        mut threads,
    } = started;
    let status_rx = group.watch();
    let refusing = group.refusing_agents();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(ServerError::State)
    };

    let (source_health_tx, source_health) = tokio::sync::watch::channel(Health::default());
    if let Some(dir) = &config.manifests {
        let source = {
            let config = config.clone();
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || open_source(&dir, &config))
                .await
                .expect("opening the manifest source")?
        };
        let hub = hub.clone();
        let reports = reports.clone();
        let group = group.clone();
        let shutdown = shutdown.clone();
        let pace = Pace {
            rescan: config.rescan,
            debounce: config.debounce,
            settle: config.timing.settle,
        };
        threads.push(spawn(
            "manifests",
            Box::new(move || {
                source::watch(
                    hub,
                    reports,
                    group,
                    source,
                    pace,
                    source_health_tx,
                    shutdown,
                )
            }),
        )?);
    }
    if let Some(options) = &config.kubernetes {
        let client = crate::kubernetes::client(options).await?;
        tokio::spawn(crate::kubernetes::run(
            hub.clone(),
            reports.clone(),
            group.clone(),
            client,
            options.clone(),
            shutdown.clone(),
        ));
    }
    // A group of one with manifests: serve once they are read and applied, as a single
    // controller always did (a replica of a larger group cannot wait: it may not lead).
    let mut loaded_revision = applied;
    if config.manifests.is_some() && rc.voters().len() == 1 {
        // ... unless the replica fails first: then serve, and say so (readiness, replicas).
        let mut h = source_health.clone();
        let mut g = status_rx.clone();
        let first = tokio::select! {
            r = h.wait_for(|h| h.revision.is_some() || h.failing.is_some()) => {
                r.map(|h| h.revision).ok().flatten()
            }
            _ = g.wait_for(|s| s.failure.is_some()) => None,
        };
        loaded_revision = first.unwrap_or(applied);
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SyncServer<SyncService>>().await;
    health
        .set_serving::<IntrospectionServer<IntrospectionService>>()
        .await;
    if let Some(addr) = config.health_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Health(addr, e))?;
        let service = health_service.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await;
            if let Err(e) = served {
                warn!("the health listener stopped: {e}");
            }
        });
        info!(%addr, "serving gRPC health in plaintext (for probes)");
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("descriptor sets are valid");

    let streams: Arc<crate::sync::Streams> = Arc::default();
    let sync = SyncService::new(
        hub.clone(),
        streams.clone(),
        SyncConfig {
            insecure,
            keepalive: config.agent_keepalive,
            resume_wait: config.resume_wait,
            ..SyncConfig::default()
        },
        group.clone(),
        shutdown.clone(),
    );
    let linter = Arc::new(Linter::new(hub.clone()));
    let introspection = InterceptedService::new(
        IntrospectionServer::new(IntrospectionService::new(
            hub.clone(),
            group.clone(),
            reports.clone(),
            linter.clone(),
        )),
        RequireOperator { insecure },
    );
    crate::replication::exchange::start(hub.clone(), rc.id, transport.clone(), shutdown.clone());
    let raft = RaftService {
        membership,
        hub: hub.clone(),
        reports: reports.clone(),
        refusing: refusing.clone(),
        id: rc.id,
        insecure,
        inbox: std::sync::Mutex::new(inbox_tx),
        transport,
        status: status_rx.clone(),
        address: advertised,
    };
    let admin = AdminService {
        hub: hub.clone(),
        group: group.clone(),
        insecure,
        limits: config.limits.clone(),
    };

    let limits = listen::Limits {
        max_connections: listen::fit_to_file_limit(config.connections.max_connections),
        tcp_keepalive: Some(config.keepalive),
        ..config.connections
    };
    let table: Arc<std::sync::Mutex<conns::Table>> = Arc::default();
    let router = Server::builder()
        .layer(activity::Activity::new(table.clone()))
        .http2_keepalive_interval(Some(config.keepalive))
        .http2_keepalive_timeout(Some(config.keepalive * 2))
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .add_service(
            SyncServer::new(sync)
                .max_decoding_message_size(config.max_message_bytes.min(16 << 20))
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(introspection)
        // A batch may carry a snapshot of the whole state (objects of a large cluster).
        .add_service(RaftServer::new(raft).max_decoding_message_size(1 << 30))
        .add_service(
            AdminServer::new(admin)
                .max_decoding_message_size(config.max_message_bytes.min(64 << 20)),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let addr = grpc.local_addr().ok();
    let grpc_shutdown = shutdown.clone();
    let metrics_for_listener = hub.metrics.clone();
    let grpc_task = match tls_config {
        Some(tls) => serve(
            router,
            listen::incoming(
                grpc,
                listen::tls(tls),
                table,
                limits,
                metrics_for_listener,
                shutdown.clone(),
            ),
            grpc_shutdown,
        ),
        None => serve(
            router,
            listen::incoming(
                grpc,
                listen::plain(),
                table,
                limits,
                metrics_for_listener,
                shutdown.clone(),
            ),
            grpc_shutdown,
        ),
    };
    info!(
        addr = %addr.map_or_else(|| "unknown".to_string(), |a| a.to_string()),
        tls = !insecure,
        max_connections = limits.max_connections,
        max_per_ip = limits.max_per_ip,
        handshake_timeout = %humantime::format_duration(limits.handshake_timeout),
        "serving gRPC"
    );

    let reach = {
        let group = group.clone();
        let window = config.shed_agents_after;
        // The voters as the configuration says now (membership changes), and only voters
        // heard from count: a learner or a removed replica is no quorum.
        move || {
            let voters = group.status().members.voters;
            standing::Reach {
                voters: voters.len().max(1),
                heard: group
                    .contacts()
                    .iter()
                    .filter(|(id, t)| {
                        **id != group.id() && voters.contains(id) && t.elapsed() < window
                    })
                    .count(),
            }
        }
    };
    tokio::spawn(standing::watch(
        status_rx.clone(),
        reach,
        config.shed_agents_after,
        refusing_tx,
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::rebalance::run(
        hub.clone(),
        streams.clone(),
        group.clone(),
        config.rebalance,
        shutdown.clone(),
    ));
    tokio::spawn(crate::lint::run(
        linter,
        config.lint_every,
        shutdown.clone(),
    ));
    http::mirror_health(health, source_health.clone(), refusing, shutdown.clone());
    let metrics_task = metrics_listener.map(|listener| {
        http::serve(
            listener,
            metrics,
            source_health.clone(),
            status_rx,
            shutdown.clone(),
        )
    });

    Ok(Running {
        hub,
        reports,
        group,
        loaded_revision,
        source_health,
        grpc: grpc_task,
        metrics: metrics_task,
        threads,
        _temporary: temporary,
    })
}

/// Serve `router` on `incoming` connections (TLS or plaintext) until `shutdown`.
fn serve<S>(
    router: tonic::transport::server::Router<
        tower_layer::Stack<activity::Activity, tower_layer::Identity>,
    >,
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<listen::Counted<S>>>,
    shutdown: CancellationToken,
) -> JoinHandle<Result<(), tonic::transport::Error>>
where
    S: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + listen::Peer
        + Unpin
        + Send
        + 'static,
{
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    })
}

/// Open the Raft log in `dir` (created when missing) and this replica, and restore the state
/// machine from the log's snapshot.
fn open_replica(
    dir: &std::path::Path,
    store: SledStorage,
    rc: &replication::Config,
) -> Result<(Replica<SledStorage>, Machine), ServerError> {
    let replica = Replica::open(rc.id, &rc.voters(), store.clone(), rc.options.clone())?;
    let machine = match replica.stored_snapshot()? {
        Some((index, data)) => {
            // The full compile of a large cluster takes seconds: say so before it starts.
            info!(
                index,
                bytes = data.len(),
                "restoring the state machine from the stored snapshot (a full compile)"
            );
            Machine::restore(&data)
        }
        .map_err(|why| {
            ServerError::State(std::io::Error::other(format!(
                "the snapshot at {index} in {} cannot be restored: {why}",
                dir.display()
            )))
        })?,
        None => Machine::new(),
    };
    info!(
        id = rc.id,
        voters = %rc.voters().iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        snapshot = machine.applied(),
        dir = %dir.display(),
        "Raft log opened"
    );
    Ok((replica, machine))
}

/// Serve the Raft service of a replica still settling its identity (it answers peers who
/// it is) on a duplicate of `grpc`, until the returned token is cancelled.
fn serve_waiting(
    grpc: &TcpListener,
    store: &SledStorage,
    rc: &replication::Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    metrics: Metrics,
    shutdown: &CancellationToken,
) -> Result<CancellationToken, ServerError> {
    use std::os::fd::AsFd;
    let dup = grpc
        .as_fd()
        .try_clone_to_owned()
        .map_err(ServerError::State)?;
    let dup = std::net::TcpListener::from(dup);
    dup.set_nonblocking(true).map_err(ServerError::State)?;
    let dup = TcpListener::from_std(dup).map_err(ServerError::State)?;
    let stop = shutdown.child_token();
    let waiting = bootstrap::Waiting {
        membership: Arc::new(bootstrap::Membership::new(
            store.clone(),
            palisade_storage::Identity {
                id: rc.id,
                ..Default::default()
            },
            rc.voters(),
        )),
        insecure: tls.is_none(),
    };
    let table: Arc<std::sync::Mutex<conns::Table>> = Arc::default();
    let router = Server::builder()
        .layer(activity::Activity::new(table.clone()))
        .add_service(RaftServer::new(waiting));
    let limits = listen::Limits::default();
    match tls {
        Some(tls) => drop(serve(
            router,
            listen::incoming(dup, listen::tls(tls), table, limits, metrics, stop.clone()),
            stop.clone(),
        )),
        None => drop(serve(
            router,
            listen::incoming(dup, listen::plain(), table, limits, metrics, stop.clone()),
            stop.clone(),
        )),
    }
    Ok(stop)
}

/// The client side of mTLS toward peers: this replica's own certificate.
fn client_tls(files: &TlsFiles) -> Result<ClientTls, ServerError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| ServerError::Tls(format!("reading {}: {e}", p.display())))
    };
    Ok(ClientTls {
        ca: read(&files.ca)?,
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        domain: None,
    })
}

/// Open the manifest source (its records in the state directory); the directory must exist
/// unless records of an earlier run say what it held.
fn open_source(dir: &std::path::Path, config: &Config) -> Result<ManifestDir, ServerError> {
    let options = source::Options {
        default_ns: config.default_namespace.clone(),
        timing: config.timing,
        limits: config.limits.clone(),
        state_dir: config.state_dir.clone(),
        link_roots: config.manifest_link_roots.clone(),
        parse_budget: config.parse_budget,
        patience: source::PATIENCE,
    };
    let source = ManifestDir::open(dir, options)?;
    if let Err(e) = palisade_files::walk::manifests(source.root()) {
        if !source.has_records() {
            return Err(ServerError::Manifests(dir.to_path_buf(), e.to_string()));
        }
    }
    Ok(source)
}
