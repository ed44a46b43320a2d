//! Opening what a replica runs on, before it serves: the Raft log and state machine, the
//! Raft service of a replica still settling its identity, the client side of mTLS toward
//! peers, and the manifest source.

use std::path::PathBuf;
use std::sync::Arc;

use palisade_proto::endpoint::ClientTls;
use palisade_proto::v1::raft_server::RaftServer;
use palisade_replica::{Machine, Replica};
use palisade_storage::SledStorage;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::info;

use super::{activity, conns, listen, serve, Config, ServerError, TlsFiles};
use crate::metrics::Metrics;
use crate::replication::{self, bootstrap};
use crate::source::{self, ManifestDir};

/// Open the Raft log in `dir` (created when missing) and this replica, and restore the state
/// machine from the log's snapshot.
pub(super) fn open_replica(
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
pub(super) fn serve_waiting(
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
pub(super) fn client_tls(files: &TlsFiles) -> Result<ClientTls, ServerError> {
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
pub(super) fn open_source(
    dir: &std::path::Path,
    config: &Config,
) -> Result<ManifestDir, ServerError> {
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
