//! Wiring: the Raft log (sled, under the state directory), the replica's driver and apply
//! threads, the hub, the manifest source (leader only), the gRPC services (Sync,
//! Introspection, Admin, Raft, health, reflection v1 and v1alpha) on one listener, metrics on
//! another. Listeners and shutdown are injected, so tests run controllers on ephemeral ports
//! and stop them at will.

use std::path::PathBuf;
use std::sync::Arc;

use palisade_proto::pre_encoded::sync_server::SyncServer;
use palisade_proto::v1::introspection_server::IntrospectionServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

pub mod activity;
mod config;
pub mod conns;
mod grpc;
mod http;
pub mod listen;
mod open;
mod sources;

pub use config::{Config, ServerError, TlsFiles};
use open::{client_tls, open_group, Opened};

pub use http::SOURCE_SERVICE;

use crate::applied::State;
use crate::hub::Hub;
use crate::introspection::IntrospectionService;
use crate::lint::Linter;
use crate::metrics::Metrics;
use crate::replication::{self, standing, Group};
use crate::reports::Reports;
use crate::source::Health;
use crate::sync::SyncService;

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
    let Opened {
        store,
        transport,
        membership,
        replica,
        machine,
    } = open_group(
        &rc,
        &state_dir,
        &grpc,
        client_tls.as_ref(),
        tls_config.clone(),
        &metrics,
        &shutdown,
    )
    .await?;
    let applied = machine.applied();
    let (hub, reads) = Hub::new(rc.id, metrics.clone());
    let state = State::new(machine, config.history, &hub);
    let hub = Arc::new(hub);
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
        state,
        reads,
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
    let (source_health, loaded_revision) = sources::start(
        &config,
        sources::Parts {
            hub: hub.clone(),
            reports: reports.clone(),
            group: group.clone(),
            applied,
            shutdown: shutdown.clone(),
        },
        &mut threads,
    )
    .await?;

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
    let streams: Arc<crate::sync::Streams> = Arc::default();
    let linter = Arc::new(Linter::new(hub.clone()));
    crate::replication::exchange::start(hub.clone(), rc.id, transport.clone(), shutdown.clone());
    let grpc_task = grpc::start(
        &config,
        grpc::Parts {
            hub: hub.clone(),
            reports: reports.clone(),
            group: group.clone(),
            streams: streams.clone(),
            linter: linter.clone(),
            transport,
            membership,
            refusing: refusing.clone(),
            inbox: inbox_tx,
            status: status_rx.clone(),
            advertised,
            health: health_service,
            tls: tls_config,
            shutdown: shutdown.clone(),
        },
        grpc,
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
