//! Wiring: the Raft log (sled, under the state directory), the replica's driver and apply
//! threads, the hub, the manifest source (leader only), the gRPC services (Sync,
//! Introspection, Admin, Raft, health, reflection v1 and v1alpha) on one listener, metrics on
//! another. Listeners and shutdown are injected, so tests run controllers on ephemeral ports
//! and stop them at will.

use std::path::PathBuf;
use std::sync::Arc;

use palisade_proto::pre_encoded::sync_server::SyncServer;
use palisade_proto::v1::admin_server::AdminServer;
use palisade_proto::v1::introspection_server::IntrospectionServer;
use palisade_proto::v1::raft_server::RaftServer;
use palisade_proto::v1::FILE_DESCRIPTOR_SET;
use palisade_storage::{Create, SledStorage};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{info, warn};

pub mod activity;
mod config;
pub mod conns;
mod http;
pub mod listen;
mod open;

pub use config::{Config, ServerError, TlsFiles};
use open::{client_tls, open_replica, open_source, serve_waiting};

pub use http::SOURCE_SERVICE;

use crate::admin::AdminService;
use crate::auth::RequireOperator;
use crate::hub::Hub;
use crate::introspection::IntrospectionService;
use crate::lint::Linter;
use crate::metrics::Metrics;
use crate::replication::service::RaftService;
use crate::replication::transport::Transport;
use crate::replication::{self, bootstrap, standing, Group};
use crate::reports::Reports;
use crate::source::watch::Pace;
use crate::source::{self, Health};
use crate::sync::{SyncConfig, SyncService};

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
        let context = source::Context {
            hub: hub.clone(),
            reports: reports.clone(),
            group: group.clone(),
            pace: Pace {
                rescan: config.rescan,
                debounce: config.debounce,
                settle: config.timing.settle,
            },
            health: source_health_tx,
            shutdown: shutdown.clone(),
        };
        threads.push(spawn(
            "manifests",
            Box::new(move || source::watch(context, source)),
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
