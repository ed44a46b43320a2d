//! Wiring: the manifest source, the hub, the gRPC services (Sync, Introspection, health,
//! reflection v1 and v1alpha) on one listener, metrics on another. Listeners and shutdown are
//! injected, so tests run controllers on ephemeral ports and stop them at will.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_proto::pre_encoded::sync_server::SyncServer;
use palisade_proto::v1::introspection_server::IntrospectionServer;
use palisade_proto::v1::FILE_DESCRIPTOR_SET;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{info, warn};

mod http;
pub mod listen;

pub use http::SOURCE_SERVICE;

use crate::auth::RequireOperator;
use crate::history::Limits;
use crate::hub::Hub;
use crate::introspection::IntrospectionService;
use crate::metrics::Metrics;
use crate::revision::RevisionStore;
use crate::source::watch::{Pace, Reported};
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
    pub manifests: PathBuf,
    pub default_namespace: String,
    /// Where revisions are reserved so they never go backwards; `None`: in memory.
    pub state_dir: Option<PathBuf>,
    /// `None`: plaintext, no identities (development only).
    pub tls: Option<TlsFiles>,
    pub keepalive: Duration,
    /// Rescan the manifests this often even without file events.
    pub rescan: Duration,
    /// Wait this long after a file event for more before rescanning.
    pub debounce: Duration,
    /// When a changed manifest is complete enough to read, and how long removals wait.
    pub timing: Timing,
    /// Bounds on each manifest file (bytes, nesting depth).
    pub limits: palisade_policy::manifest::Limits,
    pub history: Limits,
    /// Bounds on connections (total, per address, TLS handshake time).
    pub connections: listen::Limits,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Largest gRPC message sent (a snapshot); messages received are held to the smaller of
    /// this and 16 MiB (agents send small acks).
    pub max_message_bytes: usize,
}

impl Config {
    pub fn new(manifests: impl Into<PathBuf>) -> Config {
        Config {
            manifests: manifests.into(),
            default_namespace: "default".into(),
            state_dir: None,
            tls: None,
            keepalive: Duration::from_secs(10),
            rescan: Duration::from_secs(30),
            debounce: Duration::from_millis(50),
            timing: Timing {
                settle: Duration::from_secs(1),
                hold: Duration::from_secs(10),
            },
            limits: palisade_policy::manifest::Limits::default(),
            history: Limits::default(),
            connections: listen::Limits::default(),
            max_streams_per_connection: 64,
            max_message_bytes: 256 << 20,
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
    #[error("TLS: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
}

/// A started controller.
pub struct Running {
    pub hub: Arc<Hub>,
    /// The revision of the initial full compile.
    pub loaded_revision: u64,
    /// Whether the manifest source keeps up (also on /readyz and gRPC health).
    pub source_health: tokio::sync::watch::Receiver<Health>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    metrics: Option<JoinHandle<std::io::Result<()>>>,
    source: std::thread::JoinHandle<()>,
}

impl Running {
    /// Wait until the servers stop (after the shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        let grpc = self.grpc.await.expect("gRPC server task");
        let metrics = match self.metrics {
            Some(m) => m.await.expect("metrics server task"),
            None => Ok(()),
        };
        let _ = tokio::task::spawn_blocking(move || self.source.join()).await;
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
        warn!("running in plaintext without authentication (--insecure): for development only");
    }
    let tls_config = config.tls.as_ref().map(tls).transpose()?;
    // Opening the reservation may fsync: off the async workers.
    let state_dir = config.state_dir.clone();
    let revisions = tokio::task::spawn_blocking(move || RevisionStore::open(state_dir.as_deref()))
        .await
        .expect("revision store task")
        .map_err(ServerError::State)?;
    let metrics = Metrics::new();
    let hub = Arc::new(Hub::new(revisions, config.history, metrics.clone()));

    // The first scan and the full compile block (file I/O, every core): off the runtime.
    let (source, loaded_revision, reported, source_failing) = {
        let hub = hub.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || initial_load(&hub, &config))
            .await
            .expect("initial load task")?
    };
    let (source_health_tx, source_health) = tokio::sync::watch::channel(Health {
        failing: source_failing,
        waiting: 0,
    });

    let source_thread = {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        let pace = Pace {
            rescan: config.rescan,
            debounce: config.debounce,
        };
        std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || source::watch(hub, source, pace, source_health_tx, reported, shutdown))
            .map_err(ServerError::State)?
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SyncServer<SyncService>>().await;
    health
        .set_serving::<IntrospectionServer<IntrospectionService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("descriptor sets are valid");

    let sync = SyncService::new(
        hub.clone(),
        SyncConfig {
            insecure,
            keepalive: config.keepalive,
            ..SyncConfig::default()
        },
        shutdown.clone(),
    );
    let introspection = InterceptedService::new(
        IntrospectionServer::new(IntrospectionService::new(hub.clone())),
        RequireOperator { insecure },
    );

    let limits = listen::Limits {
        max_connections: listen::fit_to_file_limit(config.connections.max_connections),
        tcp_keepalive: Some(config.keepalive),
        ..config.connections
    };
    let router = Server::builder()
        .http2_keepalive_interval(Some(config.keepalive))
        .http2_keepalive_timeout(Some(config.keepalive * 2))
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .add_service(
            SyncServer::new(sync)
                .max_decoding_message_size(config.max_message_bytes.min(16 << 20))
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(introspection)
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
                limits,
                metrics_for_listener,
                shutdown.clone(),
            ),
            grpc_shutdown,
        ),
    };
    info!(
        ?addr,
        tls = !insecure,
        max_connections = limits.max_connections,
        max_per_ip = limits.max_per_ip,
        handshake_timeout = ?limits.handshake_timeout,
        "serving gRPC"
    );

    http::mirror_health(health, source_health.clone(), shutdown.clone());
    let metrics_task = metrics_listener
        .map(|listener| http::serve(listener, metrics, source_health.clone(), shutdown.clone()));

    Ok(Running {
        hub,
        loaded_revision,
        source_health,
        grpc: grpc_task,
        metrics: metrics_task,
        source: source_thread,
    })
}

/// Serve `router` on `incoming` connections (TLS or plaintext) until `shutdown`.
fn serve<S>(
    router: tonic::transport::server::Router,
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<listen::Counted<S>>>,
    shutdown: CancellationToken,
) -> JoinHandle<Result<(), tonic::transport::Error>>
where
    S: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
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

/// Open the manifest source, scan it, and compile what it holds at one revision. Records
/// that cannot be written yet are retried by the source loop (the returned reason says why).
fn initial_load(
    hub: &Hub,
    config: &Config,
) -> Result<(ManifestDir, u64, Reported, Option<String>), ServerError> {
    let options = source::Options {
        default_ns: config.default_namespace.clone(),
        timing: config.timing,
        limits: config.limits.clone(),
        state_dir: config.state_dir.clone(),
    };
    let mut source = ManifestDir::open(&config.manifests, options)?;
    if let Err(e) = palisade_files::walk::manifests(source.root()) {
        if !source.has_records() {
            return Err(ServerError::Manifests(
                config.manifests.clone(),
                e.to_string(),
            ));
        }
    }
    // Files written just before the start are read once quiet (there is no watcher yet to
    // say when their writers finish): wait for them, a `settle` at most, so the first compile
    // holds them. Removals held longer do not delay the start.
    let start = Instant::now();
    let mut scan = source.scan(start);
    let bound = start + config.timing.settle + Duration::from_millis(100);
    while let Some(next) = scan.next.filter(|n| *n <= bound) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        scan = source.scan(Instant::now());
    }
    let mut reported = Reported::default();
    reported.log(&scan);
    let failing = source.persist().err().map(|e| {
        let why = format!("cannot record the manifest source's state: {e}");
        warn!("{why}; serving what the files hold, retrying");
        why
    });
    hub.set_rejected(std::mem::take(&mut scan.rejected));
    let revision = hub.load(scan.commands).map_err(ServerError::State)?;
    source.commit();
    Ok((source, revision, reported, failing))
}
