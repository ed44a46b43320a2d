//! Raft messages between replicas over gRPC (`palisade.v1.Raft`), on the controller's own
//! listener. Outgoing: one queue and one task per peer, sending batches of raft-rs messages as
//! opaque bytes; a full queue or a failed call drops messages (Raft retransmits what matters).
//! Incoming: the caller's certificate must name the replica the batch says it is from
//! (`palisade://replica/N`), and every message in it must be from that replica to this one;
//! node and operator certificates cannot speak Raft.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_proto::endpoint::{self, ClientTls};
use palisade_proto::v1::admin_client::AdminClient;
use palisade_proto::v1::raft_client::RaftClient;
use palisade_proto::v1::raft_server::Raft;
use palisade_proto::v1::{
    AckTable, AcksRequest, RaftAck, RaftBatch, RaftStatusRequest, ReplicaStatus,
};
use palisade_replica::{decode_message, encode_message, Message, MessageType};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use super::driver::Input;
use super::{role_name, GroupStatus};
use crate::auth::{self, Identity};
use crate::metrics::Metrics;

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Messages per call, and bytes after which a call takes no more.
const BATCH: usize = 256;
const BATCH_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("replica {id} at {address}: {reason}")]
    Peer {
        id: u64,
        address: String,
        reason: String,
    },
}

/// The connections to every peer, and when each was last heard from.
pub struct Transport {
    channels: BTreeMap<u64, Channel>,
    contacts: Mutex<BTreeMap<u64, Instant>>,
}

impl Transport {
    /// Channels (connected lazily, reconnecting by themselves) to every peer but `id`.
    pub fn new(
        id: u64,
        peers: &BTreeMap<u64, String>,
        tls: Option<&ClientTls>,
    ) -> Result<Transport, TransportError> {
        let mut channels = BTreeMap::new();
        for (peer, address) in peers.iter().filter(|(p, _)| **p != id) {
            let ep = endpoint::endpoint(
                address,
                tls,
                endpoint::Options {
                    connect_timeout: Duration::from_secs(2),
                    keepalive: Some(Duration::from_secs(5)),
                },
            )
            .map_err(|e| TransportError::Peer {
                id: *peer,
                address: address.clone(),
                reason: e.to_string(),
            })?;
            channels.insert(*peer, ep.connect_lazy());
        }
        Ok(Transport {
            channels,
            contacts: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn contacts(&self) -> BTreeMap<u64, Instant> {
        self.contacts.lock().expect("contacts lock").clone()
    }

    fn heard(&self, peer: u64) {
        self.contacts
            .lock()
            .expect("contacts lock")
            .insert(peer, Instant::now());
    }

    /// Every peer's id and channel.
    pub fn channels(&self) -> Vec<(u64, Channel)> {
        self.channels
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect()
    }

    /// The admin client of peer `id` (to forward an operator's call to the leader).
    pub fn admin(&self, id: u64) -> Option<AdminClient<Channel>> {
        self.channels.get(&id).cloned().map(AdminClient::new)
    }

    /// Peer `id`'s own status, asked over Raft's service (bounded by `timeout`).
    pub async fn peer_status(&self, id: u64, timeout: Duration) -> Result<ReplicaStatus, String> {
        let channel = self
            .channels
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("replica {id} is not a peer"))?;
        let mut client = RaftClient::new(channel);
        match tokio::time::timeout(timeout, client.status(RaftStatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    /// Start one sending task per peer; the returned outbox routes messages to them.
    /// What could not be delivered (and snapshots that were) is reported to `inbox`.
    pub fn start(
        self: &Arc<Self>,
        id: u64,
        metrics: Metrics,
        inbox: Sender<Input>,
        shutdown: CancellationToken,
    ) -> Outbox {
        let mut queues = BTreeMap::new();
        for (peer, channel) in &self.channels {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.insert(*peer, tx);
            tokio::spawn(pump(
                Link {
                    from: id,
                    to: *peer,
                    client: RaftClient::new(channel.clone()),
                    inbox: inbox.clone(),
                },
                rx,
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        Outbox { queues, metrics }
    }
}

/// Where the driver hands messages to send.
pub struct Outbox {
    queues: BTreeMap<u64, mpsc::Sender<Message>>,
    metrics: Metrics,
}

impl Outbox {
    pub fn send(&self, messages: Vec<Message>) {
        for m in messages {
            match self.queues.get(&m.to) {
                Some(q) => {
                    if q.try_send(m).is_err() {
                        self.metrics.raft_dropped();
                    }
                }
                None => debug!(to = m.to, "a Raft message for an unknown replica"),
            }
        }
    }
}

/// One direction of one peer link.
struct Link {
    from: u64,
    to: u64,
    client: RaftClient<Channel>,
    /// The driver's inbox, told what could not be delivered.
    inbox: Sender<Input>,
}

/// Send what is queued for `to`, in batches, until shutdown.
async fn pump(
    link: Link,
    mut rx: mpsc::Receiver<Message>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let Link {
        from,
        to,
        mut client,
        inbox,
    } = link;
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.cancelled() => return,
        };
        let mut snapshot = first.get_msg_type() == MessageType::MsgSnapshot;
        let mut messages = vec![encode_message(&first)];
        let mut bytes = messages[0].len();
        while messages.len() < BATCH && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    snapshot |= m.get_msg_type() == MessageType::MsgSnapshot;
                    let m = encode_message(&m);
                    bytes += m.len();
                    messages.push(m);
                }
                Err(_) => break,
            }
        }
        let n = messages.len();
        let call = client.step(RaftBatch { from, to, messages });
        // A snapshot of a large state takes longer than heartbeats (1 s per 16 MiB on top).
        let bound = Duration::from_secs(2) + Duration::from_millis((bytes >> 14) as u64);
        match tokio::time::timeout(bound, call).await {
            Ok(Ok(_)) => {
                if failures > 0 {
                    debug!(to, "replica reachable again");
                }
                failures = 0;
                metrics.raft_sent(n);
                if snapshot {
                    let _ = inbox.send(Input::Delivery {
                        to,
                        delivered: true,
                        snapshot,
                    });
                }
            }
            failed => {
                let why = match failed {
                    Ok(Err(s)) => format!("{}: {}", s.code(), s.message()),
                    _ => "timed out".to_string(),
                };
                metrics.raft_dropped_n(n);
                let _ = inbox.send(Input::Delivery {
                    to,
                    delivered: false,
                    snapshot,
                });
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    warn!(to, failures, "cannot send to replica {to}: {why}");
                }
                // Back off a little; messages queued meanwhile are still sent (or dropped).
                let delay = Duration::from_millis(50u64 << failures.min(4));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// The `palisade.v1.Raft` service: messages from peers into the driver.
pub struct RaftService {
    pub id: u64,
    pub insecure: bool,
    pub inbox: Mutex<Sender<Input>>,
    pub transport: Arc<Transport>,
    pub status: watch::Receiver<GroupStatus>,
    pub address: String,
    pub hub: Arc<crate::hub::Hub>,
    /// Why this replica refuses agents, when it does.
    pub refusing: watch::Receiver<Option<String>>,
}

impl RaftService {
    fn authorize<T>(&self, req: &Request<T>, from: Option<u64>) -> Result<(), Status> {
        let ids = auth::caller(req, self.insecure)?;
        let ok = ids.iter().any(|i| match i {
            Identity::Anonymous => true,
            Identity::Replica(n) => from.is_none_or(|f| f == *n),
            _ => false,
        });
        if ok {
            return Ok(());
        }
        Err(Status::permission_denied(match from {
            Some(f) => format!(
                "Raft messages from replica {f} need its replica certificate (a URI SAN {})",
                palisade_proto::identity::replica_uri(f)
            ),
            None => "the Raft service needs a replica certificate".to_string(),
        }))
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn step(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let from = req.get_ref().from;
        self.authorize(&req, Some(from))?;
        let batch = req.into_inner();
        if batch.to != self.id {
            return Err(Status::failed_precondition(format!(
                "this is replica {}, not {}: check --peers",
                self.id, batch.to
            )));
        }
        let mut decoded = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            let m = decode_message(bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))?;
            if m.from != from || m.to != self.id {
                return Err(Status::permission_denied(format!(
                    "a message from {} to {} in a batch from {from} to {}",
                    m.from, m.to, self.id
                )));
            }
            decoded.push(m);
        }
        self.transport.heard(from);
        let inbox = self.inbox.lock().expect("inbox lock").clone();
        for m in decoded {
            inbox
                .send(Input::Step(m))
                .map_err(|_| Status::unavailable("this replica is shutting down"))?;
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn status(
        &self,
        req: Request<RaftStatusRequest>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        self.authorize(&req, None)?;
        // Copies first: a borrow held while waiting for the ack table's lock would hold up
        // the Raft driver's status updates.
        let status = self.status.borrow().clone();
        let refusing = self.refusing.borrow().clone();
        Ok(Response::new(own_status(
            &status,
            &self.address,
            &self.hub,
            refusing.as_deref(),
        )))
    }

    async fn acks(&self, req: Request<AcksRequest>) -> Result<Response<AckTable>, Status> {
        let from = req.get_ref().from;
        self.authorize(&req, Some(from))?;
        Ok(Response::new(
            crate::acks::exchange::answer(&self.hub, req.get_ref()).await,
        ))
    }
}

/// This replica's status as introspection shows it.
pub fn own_status(
    s: &GroupStatus,
    address: &str,
    hub: &crate::hub::Hub,
    refusing: Option<&str>,
) -> ReplicaStatus {
    let agents = hub.acks().connected() as u64;
    ReplicaStatus {
        id: s.raft.id,
        address: address.to_string(),
        role: role_name(s.raft.role).to_string(),
        term: s.raft.term,
        commit: s.raft.commit,
        applied: s.applied,
        last_contact_ms: Some(0),
        snapshot: s.raft.snapshot,
        failure: s.failure.clone().unwrap_or_default(),
        matched: s.raft.last_index,
        agents,
        refusing_agents: refusing.unwrap_or_default().to_string(),
        watches: hub.kube.to_pb(),
    }
}
