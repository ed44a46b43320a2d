//! The agent sync stream (DESIGN.md contract 6).
//!
//! Each connection knows what the agent holds (or that it does not know), and the node's
//! latest version from a watch channel. When they differ, and the agent has answered the
//! previous update (one unacknowledged update at a time), it sends what takes the agent from
//! the one to the other, computed at that moment: so a slow agent gets one coalesced update
//! for everything it missed, and the controller holds at most one message per connection in
//! flight (memory per agent is bounded). Transport buffers alone would not do this: small
//! updates fit in HTTP/2 windows and would queue there. Updates recorded in the node's history
//! go out pre-encoded, shared with every other send of them.

use std::sync::Arc;
use std::time::Duration;

use palisade_policy::delta::SliceDelta;
use palisade_policy::model::Name;
use palisade_policy::Digest;
use palisade_proto::encode::{self, SharedParts};
use palisade_proto::pre_encoded::sync_server::Sync;
use palisade_proto::v1::agent_message::Msg;
use palisade_proto::v1::{self as pb};
use palisade_proto::Encoded;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::auth;
use crate::history::Catchup;
use crate::hub::Hub;
use crate::rollout::AckOutcome;

#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Plaintext, no identities checked.
    pub insecure: bool,
    /// Send a keepalive after this long without sending anything.
    pub keepalive: Duration,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            insecure: false,
            keepalive: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

pub struct SyncService {
    hub: Arc<Hub>,
    config: SyncConfig,
    shutdown: CancellationToken,
}

impl SyncService {
    pub fn new(hub: Arc<Hub>, config: SyncConfig, shutdown: CancellationToken) -> SyncService {
        SyncService {
            hub,
            config,
            shutdown,
        }
    }
}

fn parse_hello(m: Option<pb::AgentMessage>) -> Result<pb::Hello, Status> {
    let Some(pb::AgentMessage {
        msg: Some(Msg::Hello(hello)),
    }) = m
    else {
        return Err(Status::invalid_argument(
            "the first message of a sync stream must be Hello",
        ));
    };
    if hello.node.is_empty() {
        return Err(Status::invalid_argument("Hello.node is empty"));
    }
    Ok(hello)
}

#[tonic::async_trait]
impl Sync for SyncService {
    type StreamStream = ReceiverStream<Result<Encoded, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let refused = |s: Status| {
            self.hub.metrics.stream_refused();
            warn!(code = ?s.code(), message = s.message(), "sync stream refused");
            s
        };
        let ids = auth::caller(&req, self.config.insecure).map_err(refused)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(self.config.hello_timeout, inbound.message())
            .await
            .map_err(|_| refused(Status::deadline_exceeded("no Hello received in time")))?
            .map_err(refused)?;
        let hello = parse_hello(first).map_err(refused)?;
        auth::authorize_node(&ids, &hello.node).map_err(refused)?;
        let holds = if hello.last_digest.is_empty() && hello.last_version == 0 {
            Knowledge::Holds(0, palisade_policy::NodeSlice::empty(&hello.node).digest())
        } else {
            match Digest::from_hex(&hello.last_digest) {
                Some(d) => Knowledge::Holds(hello.last_version, d),
                None => {
                    return Err(refused(Status::invalid_argument(
                        "Hello.last_digest is not 64 hex digits",
                    )))
                }
            }
        };
        let (tx, rx) = mpsc::channel(1);
        let node: Name = hello.node.as_str().into();
        let span = info_span!("sync", node = %node);
        let conn = Connection {
            hub: self.hub.clone(),
            config: self.config.clone(),
            node,
            holds,
            awaiting: None,
            greeted: false,
            last_snapshot: None,
            snapshot_refused_at: None,
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(conn.run(hello, inbound, tx, shutdown).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What the connection believes the agent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Knowledge {
    Holds(u64, Digest),
    /// After a nack or a divergent ack: only a snapshot will do.
    Unknown,
}

struct Connection {
    hub: Arc<Hub>,
    config: SyncConfig,
    node: Name,
    holds: Knowledge,
    /// The version of the update sent and not yet acked or nacked.
    awaiting: Option<u64>,
    /// Whether the Hello was answered (it always is, if only with an empty update, so the
    /// agent knows it is in sync).
    greeted: bool,
    /// Version of the last message sent, when it was a snapshot.
    last_snapshot: Option<u64>,
    /// A snapshot of this version was nacked: do not resend it until the node changes.
    snapshot_refused_at: Option<u64>,
}

impl Connection {
    fn pending(&self, latest: u64) -> bool {
        if self.awaiting.is_some() {
            return false;
        }
        if !self.greeted {
            return true;
        }
        match self.holds {
            Knowledge::Holds(v, _) => v != latest,
            Knowledge::Unknown => self.snapshot_refused_at != Some(latest),
        }
    }

    async fn run(
        mut self,
        hello: pb::Hello,
        mut inbound: Streaming<pb::AgentMessage>,
        tx: mpsc::Sender<Result<Encoded, Status>>,
        shutdown: CancellationToken,
    ) {
        let caps = hello.capacities.unwrap_or_default();
        info!(agent_version = hello.agent_version, holds = ?self.holds, capacities = ?caps, "agent connected");
        self.hub.lock().rollout.connected(
            &self.node,
            &hello.agent_version,
            [caps.endpoints, caps.identities, caps.rules],
        );
        self.hub.metrics.stream_opened();
        self.hello_ack();
        let mut latest = self.hub.watch_node(&self.node);
        let mut keepalive = tokio::time::interval(self.config.keepalive);
        keepalive.reset();
        let mut sent_since_tick = false;
        loop {
            let want = self.pending(*latest.borrow());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = tx.reserve(), if want => {
                    let Ok(permit) = permit else { break };
                    if let Some((msg, kind)) = self.next_message() {
                        self.hub.metrics.sent(kind, msg.len());
                        permit.send(Ok(msg));
                        sent_since_tick = true;
                    }
                }
                changed = latest.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Err(e) = self.received(m) {
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%status, "stream ended");
                        break;
                    }
                },
                _ = keepalive.tick() => {
                    if !sent_since_tick {
                        let msg = encode::keepalive(self.hub.lock().revision());
                        let len = msg.len();
                        if tx.try_send(Ok(msg)).is_ok() {
                            self.hub.metrics.sent("keepalive", len);
                        }
                    }
                    sent_since_tick = false;
                }
            }
        }
        self.hub.lock().rollout.disconnected(&self.node);
        self.hub.metrics.stream_closed();
        info!("agent disconnected");
    }

    /// The agent says what it holds; when that is what the controller sent for that version,
    /// it counts as an ack.
    fn hello_ack(&self) {
        let Knowledge::Holds(v, d) = self.holds else {
            return;
        };
        let known = {
            let st = self.hub.lock();
            let (desired, desired_digest) = st.desired(&self.node);
            (v == desired && d == desired_digest) || st.history.digest_at(&self.node, v) == Some(d)
        };
        if known && v > 0 {
            self.hub.ack(&self.node, v, d, None);
        }
    }

    /// What takes the agent from what it holds to the node's latest version.
    fn next_message(&mut self) -> Option<(Encoded, &'static str)> {
        let st = self.hub.lock();
        let (desired, digest) = st.desired(&self.node);
        let snapshot = |st: &crate::hub::State| {
            let slice = st.engine.slice(&self.node);
            encode::snapshot(&slice)
        };
        let (msg, kind) = match self.holds {
            Knowledge::Unknown => (snapshot(&st), "snapshot"),
            Knowledge::Holds(v, d) if v == desired && d == digest => {
                // In sync already: confirm with an empty update (only ever as the first answer).
                let empty = SliceDelta::default();
                (
                    encode::update(&self.node, v, v, &d, &empty, &mut SharedParts::default()),
                    "update",
                )
            }
            Knowledge::Holds(v, d) => match st.history.catch_up(&self.node, v, &d) {
                Some(Catchup::UpToDate) => {
                    drop(st);
                    self.holds = Knowledge::Holds(desired, digest);
                    self.greeted = true;
                    return None;
                }
                Some(Catchup::One(entry)) => (entry.encoded, "update"),
                Some(Catchup::Composed {
                    from,
                    to,
                    digest,
                    delta,
                }) => (
                    encode::update(
                        &self.node,
                        from,
                        to,
                        &digest,
                        &delta,
                        &mut SharedParts::default(),
                    ),
                    "update",
                ),
                // Same content under another version (e.g. after a controller restart): move
                // the agent to the current version without sending any policy.
                None if d == digest => {
                    let empty = SliceDelta::default();
                    (
                        encode::update(
                            &self.node,
                            v,
                            desired,
                            &digest,
                            &empty,
                            &mut SharedParts::default(),
                        ),
                        "update",
                    )
                }
                None => (snapshot(&st), "snapshot"),
            },
        };
        drop(st);
        debug!(kind, from = ?self.holds, to = desired, bytes = msg.len(), "sending");
        self.holds = Knowledge::Holds(desired, digest);
        self.greeted = true;
        self.awaiting = Some(desired);
        self.last_snapshot = (kind == "snapshot").then_some(desired);
        Some((msg, kind))
    }

    fn received(&mut self, m: pb::AgentMessage) -> Result<(), Status> {
        match m.msg {
            Some(Msg::Ack(a)) => {
                let digest = Digest::from_hex(&a.digest)
                    .ok_or_else(|| Status::invalid_argument("Ack.digest is not 64 hex digits"))?;
                if self.awaiting.is_some_and(|v| a.version >= v) {
                    self.awaiting = None;
                }
                if !a.failed_closed.is_empty() {
                    warn!(
                        version = a.version,
                        failed_closed = a.failed_closed.len(),
                        warning = a.warning,
                        "agent fails endpoints closed"
                    );
                }
                match self.hub.ack(
                    &self.node,
                    a.version,
                    digest,
                    Some((a.failed_closed, a.warning)),
                ) {
                    AckOutcome::Recorded => debug!(version = a.version, "ack"),
                    AckOutcome::Diverged { expected } => {
                        warn!(version = a.version, %digest, %expected, "agent holds another slice than sent; sending a snapshot");
                        self.holds = Knowledge::Unknown;
                    }
                    AckOutcome::Unknown => {
                        warn!(version = a.version, "ack of a version never sent; ignored")
                    }
                }
            }
            Some(Msg::Nack(n)) => {
                warn!(
                    version = n.version,
                    error = n.error,
                    "agent could not apply"
                );
                self.hub.nack(&self.node, n.version, n.error);
                self.awaiting = None;
                // The agent kept what it held before, which is now unknown here. After a
                // refused update, try a snapshot; after a refused snapshot, wait for the node
                // to change rather than resend the same thing.
                if self.last_snapshot == Some(n.version) {
                    self.snapshot_refused_at = Some(n.version);
                }
                self.holds = Knowledge::Unknown;
            }
            Some(Msg::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "Hello may only be the first message",
                ))
            }
            None => return Err(Status::invalid_argument("empty agent message")),
        }
        Ok(())
    }
}
