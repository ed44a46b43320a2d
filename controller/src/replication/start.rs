//! Starting a replica's part in its group: the `raft` thread (the [`Driver`]) and the
//! `apply` thread (the [`Applier`]), the channels between them and the transport, and the
//! [`Group`] handle through which the rest of the controller proposes and reads where the
//! group stands. Everything here is owned by what [`start`] returns.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use palisade_replica::Replica;
use palisade_storage::SledStorage;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::apply::Applier;
use super::driver::{Driver, Input};
use super::transport::Transport;
use super::{Config, Failure, Group, GroupStatus};
use crate::applied::State;
use crate::hub::{Hub, Reads};
use crate::metrics::Metrics;

/// What replication needs to start.
pub struct Parts {
    pub config: Config,
    pub replica: Replica<SledStorage>,
    pub store: SledStorage,
    pub hub: Arc<Hub>,
    /// The applied state (the apply thread takes it) and the readers' questions for it.
    pub state: State,
    pub reads: Reads,
    pub transport: Arc<Transport>,
    /// The group's identity, as peers' messages must carry it.
    pub group: String,
    /// The address this replica is reached at.
    pub address: String,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

/// A replica taking part in its group.
pub struct Started {
    pub group: Group,
    /// Raft's inbox: the Raft service steps peers' messages into it.
    pub inbox: Sender<Input>,
    /// Why this replica refuses agents, when it does (written by [`super::standing`]).
    pub refusing: watch::Sender<Option<String>>,
    /// The `raft` and `apply` threads (they stop at shutdown).
    pub threads: Vec<JoinHandle<()>>,
}

/// Start the `raft` and `apply` threads over `parts` (from within the async runtime, which
/// the returned [`Group`] keeps a handle of).
pub fn start(parts: Parts) -> std::io::Result<Started> {
    let Parts {
        config,
        replica,
        store,
        hub,
        state,
        reads,
        transport,
        group,
        address,
        metrics,
        shutdown,
    } = parts;
    let (inbox_tx, inbox_rx) = std::sync::mpsc::channel();
    let outbox = transport.start(group, metrics.clone(), inbox_tx.clone(), shutdown.clone());
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
    // The apply thread answers readers until shutdown, also after Raft's thread is gone.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        drop(stop_tx);
    });
    let (status_tx, status_rx) = watch::channel(GroupStatus {
        raft: palisade_replica::Status {
            id: config.id,
            ..Default::default()
        },
        applied: state.revision(),
        ..GroupStatus::default()
    });
    let status_tx = Arc::new(status_tx);
    let failure = Failure::default();
    let (refusing_tx, refusing) = watch::channel(None);
    let handle = Group {
        refusing,
        id: config.id,
        address,
        inbox: inbox_tx.clone(),
        status: status_rx,
        transport: transport.clone(),
        lease: config.tick * config.options.election_tick as u32,
        runtime: tokio::runtime::Handle::current(),
    };
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(name.into()).spawn(f)
    };
    let driver = Driver {
        replica,
        config: config.clone(),
        inbox: inbox_rx,
        jobs: jobs_tx,
        outbox,
        status: status_tx.clone(),
        failure: failure.clone(),
        metrics,
        shutdown,
    };
    let raft_failed = (failure.clone(), status_tx.clone());
    let raft = spawn(
        "raft",
        Box::new(move || {
            // raft-rs panics on what it cannot reconcile (a log that lost entries it had
            // acknowledged): the replica stops taking part, says why, and keeps serving.
            let run = std::panic::AssertUnwindSafe(|| driver.run());
            if let Err(panic) = std::panic::catch_unwind(run) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                let why = format!("Raft's thread stopped: {why}");
                raft_failed.0.set(why.clone());
                raft_failed.1.send_modify(|s| s.failure = Some(why));
            }
        }),
    )?;
    let applier = Applier {
        hub,
        state,
        reads,
        jobs: jobs_rx,
        stop: stop_rx,
        inbox: inbox_tx.clone(),
        snapshot_every: config.options.snapshot_every,
        store,
        status: status_tx,
        failure,
        drop_entry: config.fault_drop_entry,
        transport,
    };
    let apply = spawn("apply", Box::new(move || applier.run()))?;
    Ok(Started {
        group: handle,
        inbox: inbox_tx,
        refusing: refusing_tx,
        threads: vec![raft, apply],
    })
}
