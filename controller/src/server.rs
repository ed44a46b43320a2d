//! Wiring: the manifest source, the hub, the gRPC services (Sync, Introspection, health,
//! reflection v1 and v1alpha) on one listener, metrics on another. Listeners and shutdown are
//! injected, so tests run controllers on ephemeral ports and stop them at will.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use palisade_proto::pre_encoded::sync_server::SyncServer;
use palisade_proto::v1::introspection_server::IntrospectionServer;
use palisade_proto::v1::FILE_DESCRIPTOR_SET;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{error, info, warn};

use crate::auth::RequireOperator;
use crate::history::Limits;
use crate::hub::Hub;
use crate::introspection::IntrospectionService;
use crate::metrics::Metrics;
use crate::revision::RevisionStore;
use crate::source::{ManifestDir, Rejected};
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
    pub history: Limits,
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
            history: Limits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("manifests directory {0}: {1}")]
    Manifests(PathBuf, std::io::Error),
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

fn tls(files: &TlsFiles) -> Result<ServerTlsConfig, ServerError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| ServerError::Tls(format!("reading {}: {e}", p.display())))
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
        .client_ca_root(Certificate::from_pem(read(&files.ca)?)))
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
    let revisions = RevisionStore::open(config.state_dir.as_deref()).map_err(ServerError::State)?;
    let metrics = Metrics::new();
    let hub = Arc::new(Hub::new(revisions, config.history, metrics.clone()));

    let mut source = ManifestDir::new(&config.manifests, &config.default_namespace);
    let scan = source
        .scan()
        .map_err(|e| ServerError::Manifests(config.manifests.clone(), e))?;
    for w in &scan.warnings {
        warn!("{w}");
    }
    report_rejections(&BTreeSet::new(), &scan.rejected);
    let loaded_revision = hub.load(scan.commands).map_err(ServerError::State)?;
    let mut known: BTreeSet<String> = scan.rejected.iter().map(rejection_line).collect();
    hub.set_rejected(scan.rejected);

    let source_thread = {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        let config = config.clone();
        std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || watch_manifests(hub, source, &config, &shutdown, &mut known))
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

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(config.keepalive))
        .http2_keepalive_timeout(Some(config.keepalive * 2))
        .tcp_keepalive(Some(config.keepalive));
    if let Some(t) = tls_config {
        builder = builder.tls_config(t)?;
    }
    let addr = grpc.local_addr().ok();
    let router = builder
        .add_service(SyncServer::new(sync))
        .add_service(introspection)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let grpc_shutdown = shutdown.clone();
    let grpc_task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc),
                grpc_shutdown.cancelled_owned(),
            )
            .await
    });
    info!(?addr, tls = !insecure, "serving gRPC");

    let metrics_task = metrics_listener.map(|listener| {
        let addr = listener.local_addr().ok();
        info!(?addr, "serving metrics on /metrics");
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || async move { metrics.render() }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        })
    });

    Ok(Running {
        hub,
        loaded_revision,
        grpc: grpc_task,
        metrics: metrics_task,
        source: source_thread,
    })
}

fn rejection_line(r: &Rejected) -> String {
    format!(
        "{}: {} {}: {}",
        r.source,
        r.kind,
        r.object,
        r.errors.join("; ")
    )
}

/// Log rejections that appeared since `before` (the rest were logged already).
fn report_rejections(before: &BTreeSet<String>, now: &[Rejected]) {
    for r in now {
        let line = rejection_line(r);
        if !before.contains(&line) {
            warn!("rejected: {line}");
        }
    }
}

/// The source loop, on its own thread (it does blocking file I/O): rescan after file events
/// (debounced) and periodically, and apply what changed.
fn watch_manifests(
    hub: Arc<Hub>,
    mut source: ManifestDir,
    config: &Config,
    shutdown: &CancellationToken,
    known: &mut BTreeSet<String>,
) {
    let (tx, rx) = std_mpsc::channel::<()>();
    let watcher = notify::recommended_watcher(move |_event| {
        let _ = tx.send(());
    })
    .and_then(|mut w| w.watch(source.root(), RecursiveMode::Recursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(
                "cannot watch {} ({e}); rescanning every {:?} instead",
                source.root().display(),
                config.rescan
            );
            None
        }
    };
    let tick = Duration::from_millis(200);
    let mut since_scan = Duration::ZERO;
    while !shutdown.is_cancelled() {
        let event = match rx.recv_timeout(tick) {
            Ok(()) => true,
            Err(std_mpsc::RecvTimeoutError::Timeout) => false,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(tick);
                false
            }
        };
        since_scan += tick;
        if !event && since_scan < config.rescan {
            continue;
        }
        if event {
            // Let a burst of writes (an editor's save, a tool's rename) settle.
            std::thread::sleep(config.debounce);
            while rx.try_recv().is_ok() {}
        }
        since_scan = Duration::ZERO;
        match source.scan() {
            Ok(scan) => {
                report_rejections(known, &scan.rejected);
                *known = scan.rejected.iter().map(rejection_line).collect();
                if !scan.commands.is_empty() {
                    let n = scan.commands.len();
                    match hub.apply(scan.commands) {
                        Ok(revision) => info!(commands = n, revision, "manifests changed"),
                        Err(e) => error!("cannot reserve revisions: {e}"),
                    }
                }
                hub.set_rejected(scan.rejected);
            }
            Err(e) => warn!("cannot read {}: {e}", source.root().display()),
        }
    }
}
