//! Raft messages between replicas over gRPC (`palisade.v1.Raft`), on the controller's own
//! listener. Outgoing: one queue and one task per peer, sending batches of raft-rs messages as
//! opaque bytes; a full queue or a failed call drops messages (Raft retransmits what matters).
//! Incoming: the caller's certificate must name the replica the batch says it is from
//! (`palisade://replica/N`), and every message in it must be from that replica to this one;
//! node and operator certificates cannot speak Raft.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use palisade_proto::endpoint::{self, ClientTls};
use palisade_proto::v1::admin_client::AdminClient;
use palisade_proto::v1::raft_client::RaftClient;
use palisade_proto::v1::{
    AdoptRequest, AdoptResponse, IdentifyRequest, IdentifyResponse, RaftBatch, RaftStatusRequest,
    ReplicaStatus,
};
use palisade_replica::{encode_message, Message, MessageType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Response, Status};
use tracing::{debug, error, warn};

use super::driver::Input;
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

/// The connections to every peer, and when each was last heard from. Peers come and go
/// with membership changes ([`Transport::set_peer`], [`Transport::remove_peer`]).
pub struct Transport {
    id: u64,
    tls: Option<ClientTls>,
    peers: RwLock<BTreeMap<u64, Peer>>,
    contacts: Mutex<BTreeMap<u64, Instant>>,
    /// Once started: what each peer's sending task needs, and each one's queue.
    links: Mutex<Option<Links>>,
    /// The runtime connections run on (peers are added from the Raft driver's thread).
    runtime: Option<tokio::runtime::Handle>,
    /// Replicas removed from the group: their messages are refused with a reason that tells
    /// them (a replica removed may not learn of it otherwise: the leader stops sending to it).
    retired: RwLock<std::collections::BTreeSet<u64>>,
    /// The ids `--peers` names: their addresses are the operator's word, never replaced by
    /// one learned from the group.
    configured: std::collections::BTreeSet<u64>,
}

/// What a replica answers one that was removed (and that one looks for).
pub const RETIRED: &str = "was removed from the group; its id is retired";

struct Peer {
    address: String,
    channel: Channel,
}

/// What sending tasks share, and the queue and stop token of each.
struct Links {
    group: String,
    metrics: Metrics,
    inbox: Sender<Input>,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
    queues: BTreeMap<u64, (mpsc::Sender<Message>, CancellationToken)>,
}

impl Links {
    /// Start (or restart) the sending task of `peer` over `channel`.
    fn open(&mut self, from: u64, peer: u64, channel: Channel) {
        if let Some((_, stop)) = self.queues.remove(&peer) {
            stop.cancel();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = self.shutdown.child_token();
        self.queues.insert(peer, (tx, stop.clone()));
        self.runtime.spawn(pump(
            Link {
                from,
                to: peer,
                group: self.group.clone(),
                client: RaftClient::new(channel),
                inbox: self.inbox.clone(),
            },
            rx,
            self.metrics.clone(),
            stop,
        ));
    }
}

impl Transport {
    /// Channels (connected lazily, reconnecting by themselves) to every peer but `id`.
    pub fn new(
        id: u64,
        peers: &BTreeMap<u64, String>,
        tls: Option<&ClientTls>,
    ) -> Result<Transport, TransportError> {
        let t = Transport {
            id,
            tls: tls.cloned(),
            peers: RwLock::new(BTreeMap::new()),
            contacts: Mutex::new(BTreeMap::new()),
            links: Mutex::new(None),
            runtime: tokio::runtime::Handle::try_current().ok(),
            retired: RwLock::new(Default::default()),
            configured: peers.keys().copied().collect(),
        };
        for (peer, address) in peers {
            t.set_peer(*peer, address)?;
        }
        Ok(t)
    }

    /// Reach replica `id` at `address` from now on (a new member, or a new address); this
    /// replica's own id is ignored.
    pub fn set_peer(&self, id: u64, address: &str) -> Result<(), TransportError> {
        if id == self.id {
            return Ok(());
        }
        if self
            .peers
            .read()
            .expect("peers lock")
            .get(&id)
            .is_some_and(|p| p.address == address)
        {
            return Ok(());
        }
        let _runtime = self.runtime.as_ref().map(|h| h.enter());
        let channel = endpoint::endpoint(
            address,
            self.tls.as_ref(),
            endpoint::Options {
                connect_timeout: Duration::from_secs(2),
                keepalive: Some(Duration::from_secs(5)),
            },
        )
        .map_err(|e| TransportError::Peer {
            id,
            address: address.to_string(),
            reason: e.to_string(),
        })?
        .connect_lazy();
        self.peers.write().expect("peers lock").insert(
            id,
            Peer {
                address: address.to_string(),
                channel: channel.clone(),
            },
        );
        if let Some(links) = self.links.lock().expect("links lock").as_mut() {
            links.open(self.id, id, channel);
        }
        Ok(())
    }

    /// Replica `id` is reached at `address`, as the group says (a membership change, a
    /// snapshot, a member's answer): taken unless `--peers` names `id`.
    pub fn learn(&self, id: u64, address: &str) -> Result<(), TransportError> {
        if self.configured.contains(&id) || self.is_retired(id) {
            return Ok(());
        }
        self.set_peer(id, address)
    }

    /// The ids removed from the group, as far as this replica knows.
    pub fn retired(&self) -> std::collections::BTreeSet<u64> {
        self.retired.read().expect("retired lock").clone()
    }

    /// Replica `id` was removed from the group: stop talking to it, and refuse its messages.
    pub fn retire(&self, id: u64) {
        self.retired.write().expect("retired lock").insert(id);
        self.remove_peer(id);
    }

    pub(super) fn is_retired(&self, id: u64) -> bool {
        self.retired.read().expect("retired lock").contains(&id)
    }

    /// Stop talking to replica `id` (it left the group).
    pub fn remove_peer(&self, id: u64) {
        self.peers.write().expect("peers lock").remove(&id);
        if let Some(links) = self.links.lock().expect("links lock").as_mut() {
            if let Some((_, stop)) = links.queues.remove(&id) {
                stop.cancel();
            }
        }
    }

    /// Every peer's address by id (this replica's not included).
    pub fn addresses(&self) -> BTreeMap<u64, String> {
        self.peers
            .read()
            .expect("peers lock")
            .iter()
            .map(|(id, p)| (*id, p.address.clone()))
            .collect()
    }

    pub fn contacts(&self) -> BTreeMap<u64, Instant> {
        self.contacts.lock().expect("contacts lock").clone()
    }

    pub(super) fn heard(&self, peer: u64) {
        self.contacts
            .lock()
            .expect("contacts lock")
            .insert(peer, Instant::now());
    }

    /// Every peer's id and channel.
    pub fn channels(&self) -> Vec<(u64, Channel)> {
        self.peers
            .read()
            .expect("peers lock")
            .iter()
            .map(|(id, p)| (*id, p.channel.clone()))
            .collect()
    }

    /// The admin client of peer `id` (to forward an operator's call to the leader).
    pub fn admin(&self, id: u64) -> Option<AdminClient<Channel>> {
        self.channel(id).ok().map(AdminClient::new)
    }

    /// Peer `id`'s own status, asked over Raft's service (bounded by `timeout`).
    pub async fn peer_status(&self, id: u64, timeout: Duration) -> Result<ReplicaStatus, String> {
        let mut client = RaftClient::new(self.channel(id)?);
        match tokio::time::timeout(timeout, client.status(RaftStatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    /// Peer `id`'s answer to `Identify` (bounded by `timeout`), or why there is none.
    pub async fn identify(&self, id: u64, timeout: Duration) -> Result<IdentifyResponse, String> {
        let mut client = RaftClient::new(self.channel(id)?);
        let me = self.id;
        match tokio::time::timeout(timeout, client.identify(IdentifyRequest { from: me })).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err("no answer".into()),
        }
    }

    /// Ask peer `id` (the group's creator) for the group's identity.
    pub async fn adopt(
        &self,
        id: u64,
        req: AdoptRequest,
        timeout: Duration,
    ) -> Result<AdoptResponse, Status> {
        let mut client = RaftClient::new(self.channel(id).map_err(Status::unavailable)?);
        match tokio::time::timeout(timeout, client.adopt(req)).await {
            Ok(r) => r.map(Response::into_inner),
            Err(_) => Err(Status::unavailable("no answer")),
        }
    }

    fn channel(&self, id: u64) -> Result<Channel, String> {
        self.peers
            .read()
            .expect("peers lock")
            .get(&id)
            .map(|p| p.channel.clone())
            .ok_or_else(|| format!("replica {id} is not a peer"))
    }

    /// Start one sending task per peer (and per peer added later); the returned outbox
    /// routes messages to them. What could not be delivered (and snapshots that were) is
    /// reported to `inbox`. Called on the runtime the tasks run on.
    pub fn start(
        self: &Arc<Self>,
        group: String,
        metrics: Metrics,
        inbox: Sender<Input>,
        shutdown: CancellationToken,
    ) -> Outbox {
        let mut links = Links {
            group,
            metrics: metrics.clone(),
            inbox,
            shutdown,
            runtime: tokio::runtime::Handle::current(),
            queues: BTreeMap::new(),
        };
        for (peer, channel) in self.channels() {
            links.open(self.id, peer, channel);
        }
        *self.links.lock().expect("links lock") = Some(links);
        Outbox {
            transport: self.clone(),
            metrics,
        }
    }
}

/// Where the driver hands messages to send.
pub struct Outbox {
    transport: Arc<Transport>,
    metrics: Metrics,
}

impl Outbox {
    pub fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let links = self.transport.links.lock().expect("links lock");
        let Some(links) = links.as_ref() else { return };
        for m in messages {
            match links.queues.get(&m.to) {
                Some((q, _)) => {
                    if q.try_send(m).is_err() {
                        self.metrics.raft_dropped();
                    }
                }
                None => debug!(
                    to = m.to,
                    "a Raft message for a replica whose address is unknown"
                ),
            }
        }
    }

    /// The transport the outbox sends through (membership changes add and remove peers).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }
}

/// One direction of one peer link.
struct Link {
    from: u64,
    to: u64,
    /// The group this replica belongs to, carried by every batch.
    group: String,
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
        group,
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
        let call = client.step(RaftBatch {
            from,
            to,
            messages,
            group: group.clone(),
        });
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
                if why.contains(RETIRED) {
                    let _ = inbox.send(Input::Removed { by: to });
                } else if why.contains("of another group") {
                    // Not a network fault: one of the two directories is not of this group.
                    error!(
                        to,
                        failures, "replica {to} refuses this replica's messages: {why}"
                    );
                } else if failures == 1 || failures.is_power_of_two() {
                    warn!(to, failures, "cannot send to replica {to}: {why}");
                }
                // Back off a little; messages queued meanwhile are still sent (or dropped).
                let delay = palisade_backoff::Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_millis(800),
                )
                .delay(failures);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
