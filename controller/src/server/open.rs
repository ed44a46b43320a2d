//! Opening what a replica runs on, before it serves: the Raft log and state machine, the
//! Raft service of a replica still settling its identity, the client side of mTLS toward
//! peers, and the manifest source.

use std::path::PathBuf;
use std::sync::Arc;

use palisade_proto::endpoint::ClientTls;
use palisade_proto::v1::raft_server::RaftServer;
use palisade_replica::{Machine, Replica};
use palisade_storage::{Create, SledStorage};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::info;

use super::{activity, conns, listen, serve, Config, ServerError, TlsFiles};
use crate::metrics::Metrics;
use crate::replication::transport::Transport;
use crate::replication::{self, bootstrap};
use crate::source::{self, ManifestDir};

/// What a replica runs on, opened and settled.
pub(super) struct Opened {
    pub store: SledStorage,
    pub transport: Arc<Transport>,
    pub membership: Arc<bootstrap::Membership>,
    pub replica: Replica<SledStorage>,
    pub machine: Machine,
}

/// Open the Raft log under `state_dir`, settle who this replica is in its group (serving
/// peers who it is on `grpc` meanwhile, when the group is new), open the replica and restore
/// its state machine, and tell the transport the members the state machine knows of.
pub(super) async fn open_group(
    rc: &replication::Config,
    state_dir: &std::path::Path,
    grpc: &TcpListener,
    client_tls: Option<&ClientTls>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Opened, ServerError> {
    // Opening the log reads and checks all of it: off the async workers.
    let store = {
        let dir = state_dir.join("raft");
        tokio::task::spawn_blocking(move || SledStorage::open(&dir, Create::IfMissing))
            .await
            .expect("opening the Raft log")?
    };
    let transport = Arc::new(Transport::new(rc.id, &rc.peers, client_tls)?);
    // Who this replica is, settled before it takes any part in its group.
    let membership = {
        let voters = rc.voters();
        let waiting = match bootstrap::needs_protocol(&store, &voters, rc.bootstrap)? {
            true => Some(serve_waiting(
                grpc,
                &store,
                rc,
                tls_config,
                metrics.clone(),
                shutdown,
            )?),
            false => None,
        };
        let settled =
            bootstrap::settle(&store, rc.id, &voters, rc.bootstrap, &transport, shutdown).await;
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
    if machine.retired().contains(&rc.id) {
        let applied = machine.applied();
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
    Ok(Opened {
        store,
        transport,
        membership,
        replica,
        machine,
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
