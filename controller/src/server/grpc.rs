//! The gRPC services on the replica's one listener: Sync, Introspection (operators only),
//! Raft, Admin, health and reflection (v1 and v1alpha), behind the connection limits and the
//! activity table, over mTLS or, with `--insecure`, plaintext.

use std::sync::Arc;

use palisade_proto::pre_encoded::sync_server::SyncServer;
use palisade_proto::v1::admin_server::AdminServer;
use palisade_proto::v1::introspection_server::IntrospectionServer;
use palisade_proto::v1::raft_server::RaftServer;
use palisade_proto::v1::FILE_DESCRIPTOR_SET;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};
use tracing::info;

use super::{activity, conns, listen, Config};
use crate::admin::AdminService;
use crate::auth::RequireOperator;
use crate::hub::Hub;
use crate::introspection::IntrospectionService;
use crate::lint::Linter;
use crate::replication::bootstrap::Membership;
use crate::replication::service::RaftService;
use crate::replication::transport::Transport;
use crate::replication::{driver, Group, GroupStatus};
use crate::reports::Reports;
use crate::sync::{Streams, SyncConfig, SyncService};

/// What the services work with.
pub(super) struct Parts<H> {
    pub hub: Arc<Hub>,
    pub reports: Arc<Reports>,
    pub group: Group,
    pub streams: Arc<Streams>,
    pub linter: Arc<Linter>,
    pub transport: Arc<Transport>,
    pub membership: Arc<Membership>,
    pub refusing: watch::Receiver<Option<String>>,
    pub inbox: std::sync::mpsc::Sender<driver::Input>,
    pub status: watch::Receiver<GroupStatus>,
    /// Where peers reach this replica.
    pub advertised: String,
    pub health: HealthServer<H>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub shutdown: CancellationToken,
}

/// Serve every gRPC service on `grpc` until shutdown.
pub(super) fn start<H: Health>(
    config: &Config,
    parts: Parts<H>,
    grpc: TcpListener,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let Parts {
        hub,
        reports,
        group,
        streams,
        linter,
        transport,
        membership,
        refusing,
        inbox,
        status,
        advertised,
        health,
        tls,
        shutdown,
    } = parts;
    let insecure = tls.is_none();
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
    let introspection = InterceptedService::new(
        IntrospectionServer::new(IntrospectionService::new(
            hub.clone(),
            group.clone(),
            reports.clone(),
            linter.clone(),
        )),
        RequireOperator { insecure },
    );
    let raft = RaftService {
        membership,
        hub: hub.clone(),
        reports: reports.clone(),
        refusing: refusing.clone(),
        id: config.replication.id,
        insecure,
        inbox: std::sync::Mutex::new(inbox),
        transport,
        status,
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
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let addr = grpc.local_addr().ok();
    let grpc_shutdown = shutdown.clone();
    let metrics_for_listener = hub.metrics.clone();
    let task = match tls {
        Some(tls) => super::serve(
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
        None => super::serve(
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
    task
}
