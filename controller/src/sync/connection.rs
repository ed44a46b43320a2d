//! One agent's Sync stream, the shell around its [`Session`]: plans from the hub's view of
//! the applied state (no lock), asks the apply thread for the slice when a snapshot is due,
//! encodes what it plans (a snapshot, a recorded update, a composed chain, or an empty
//! confirmation), sends, records acks and nacks in the rollout, keeps the stream alive,
//! counts, logs, and stops on what ends the stream.

use std::sync::Arc;
use std::time::Instant;

use palisade_policy::Digest;
use palisade_proto::encode;
use palisade_proto::v1::agent_message::Msg;
use palisade_proto::v1::{self as pb};
use palisade_proto::Encoded;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::session::{self, Kind, Session};
use super::{cap, Stream, Streams, SyncConfig, MAX_FAILED_CLOSED, MAX_TEXT};
use crate::hub::{Gone, Hub};
use crate::replication::Group;
use crate::rollout::{AckOutcome, AgentInfo};

/// What ends a connection besides the agent: shutdown, a newer stream of the same node,
/// this replica refusing agents (cut off from its group), or sending the agent to another
/// replica (this one holds more than its share).
pub(super) struct Stop {
    pub(super) shutdown: CancellationToken,
    pub(super) stream: Stream,
    pub(super) refusing: watch::Receiver<Option<String>>,
}

pub(super) struct Connection {
    pub(super) hub: Arc<Hub>,
    pub(super) streams: Arc<Streams>,
    /// Where this replica stands, for keepalives.
    pub(super) group: Group,
    pub(super) config: SyncConfig,
    /// Every decision of the stream's protocol.
    pub(super) session: Session,
}

impl Connection {
    pub(super) async fn run(
        mut self,
        hello: pb::Hello,
        mut inbound: Streaming<pb::AgentMessage>,
        tx: mpsc::Sender<Result<Encoded, Status>>,
        stop: Stop,
    ) {
        let mut refusing = stop.refusing.clone();
        let caps = hello.capacities.unwrap_or_default();
        let agent = AgentInfo {
            version: cap(hello.agent_version, 64),
            capacities: [caps.endpoints, caps.identities, caps.rules],
            dataplane: hello.dataplane,
        };
        let dataplane = pb::Dataplane::try_from(agent.dataplane)
            .map(|d| d.as_str_name())
            .unwrap_or("DATAPLANE_UNSPECIFIED");
        info!(
            agent_version = agent.version,
            dataplane,
            holds = %self.session.holds(),
            capacities = %format!(
                "{} endpoints, {} identities, {} rules",
                caps.endpoints, caps.identities, caps.rules
            ),
            "agent connected"
        );
        if agent.dataplane == pb::Dataplane::Memory as i32 {
            warn!("this node's agent runs the in-memory dataplane: it enforces nothing");
        }
        let node = self.session.node().clone();
        self.hub.connected(&node, &agent);
        self.hub.metrics.stream_opened();
        self.hello_ack();
        let mut latest = self.hub.watch_node(&node);
        // The first message says how often keepalives come (the agent's silence timeout
        // follows it) and where this replica stands.
        // (A stream already gone ends the loop below at its first turn.)
        let _ = tx.send(Ok(self.keepalive())).await;
        let mut keepalive = tokio::time::interval(self.config.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        loop {
            let want = self.session.due(*latest.borrow(), Instant::now());
            let held = self
                .session
                .hold_until()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = stop.shutdown.cancelled() => break,
                _ = stop.stream.replaced.cancelled() => {
                    info!("a newer stream of this node replaces this one");
                    let _ = tx.try_send(Err(Status::aborted("replaced by a newer stream of the same node")));
                    break;
                }
                _ = stop.stream.moved.cancelled() => {
                    info!("sending the agent to another replica: this one holds more than its share of agents");
                    self.hub.metrics.stream_moved();
                    let _ = tx.try_send(Err(Status::unavailable(
                        "this replica holds more than its share of agents: try another replica",
                    )));
                    break;
                }
                // (The borrow ends inside: the arms' outputs must be Send, a snapshot's arm
                // awaits the apply thread's answer.)
                why = async { refusing.wait_for(Option::is_some).await.map(|w| w.clone()) } => {
                    let why = why.ok().flatten().unwrap_or_default();
                    info!("ending the stream: {why}");
                    self.hub.metrics.streams_shed();
                    let _ = tx.try_send(Err(Status::unavailable(format!("{why}: try another replica"))));
                    break;
                }
                permit = tx.reserve(), if want => {
                    let Ok(permit) = permit else { break };
                    match self.next_message().await {
                        Ok(Some((msg, kind))) => {
                            self.hub.metrics.sent(kind.as_str(), msg.len());
                            permit.send(Ok(msg));
                        }
                        Ok(None) => {}
                        // No slice to send: end the stream (the agent tries another replica)
                        // rather than ask again at once.
                        Err(gone) => {
                            warn!("ending the stream: {gone}");
                            permit.send(Err(Status::unavailable(format!("{gone}: try another replica"))));
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep_until(held.unwrap_or_else(tokio::time::Instant::now)), if held.is_some() => {
                    self.session.hold_over();
                }
                changed = latest.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Err(e) = self.received(m) {
                            // Never wait on a peer that does not read.
                            let _ = tx.try_send(Err(e));
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
                    // Never waits: a stream that is full is busy, and its agent hears from it.
                    let msg = self.keepalive();
                    let len = msg.len();
                    if tx.try_send(Ok(msg)).is_ok() {
                        self.hub.metrics.sent("keepalive", len);
                    }
                }
            }
        }
        self.streams.close(&node, stop.stream.id);
        self.hub.disconnected(&node, self.config.insecure);
        self.hub.metrics.stream_closed();
        info!("agent disconnected");
    }

    /// Where this replica stands (the group's status and lease).
    fn keepalive(&self) -> Encoded {
        let f = self.group.freshness();
        encode::keepalive(pb::Keepalive {
            revision: f.revision,
            commit: f.commit,
            current: f.current(),
            transient: f.transient,
            reason: f.stale.unwrap_or_default(),
            interval_ms: self.config.keepalive.as_millis() as u64,
        })
    }

    /// The agent says what it holds; when that is what the controller sent for that version,
    /// it counts as an ack.
    fn hello_ack(&self) {
        if let Some((v, d)) = self.session.hello_ack(&*self.hub.view()) {
            self.hub.ack(self.session.node(), v, d, Some(d), None);
        }
    }

    /// What takes the agent from what it holds to the node's latest version: planned from
    /// one view (cheap: clones of shared parts), encoded after; a snapshot is the slice the
    /// apply thread holds when asked (an error when it does not answer). `None`: nothing due.
    async fn next_message(&mut self) -> Result<Option<(Encoded, Kind)>, Gone> {
        let Some(planned) = self.session.plan(&*self.hub.view()) else {
            return Ok(None);
        };
        // Recorded when the revision was published (together with the view, so a planned
        // version is there).
        let applied_at = self
            .hub
            .progress(|p| p.rollout().committed_at(planned.desired));
        let node = self.session.node().clone();
        let (msg, kind, desired, digest) = match session::encode(&node, planned) {
            Some(m) => m,
            None => {
                let (version, digest, slice) = self.hub.ask(move |st| st.latest(&node)).await?;
                session::snapshot(version, digest, &slice)
            }
        };
        let from = self.session.holds();
        let sent = self
            .session
            .sent(kind, desired, digest, std::time::Instant::now());
        if let Some(by) = sent.resumed {
            self.hub.metrics.resumed(by, msg.len());
        }
        if let (true, Some(t)) = (sent.timed, applied_at) {
            self.hub.metrics.stage("send", t.elapsed());
        }
        debug!(kind = kind.as_str(), %from, to = desired, bytes = msg.len(), "sending");
        Ok(Some((msg, kind)))
    }

    fn received(&mut self, m: pb::AgentMessage) -> Result<(), Status> {
        let node = self.session.node().clone();
        match m.msg {
            Some(Msg::Ack(a)) => {
                let digest = Digest::from_hex(&a.digest)
                    .ok_or_else(|| Status::invalid_argument("Ack.digest is not 64 hex digits"))?;
                let now = std::time::Instant::now();
                let acked = self.session.acked(a.version, now);
                if let Some(t) = acked.round_trip {
                    self.hub.metrics.stage("ack", t);
                }
                let warning = cap(a.warning, MAX_TEXT);
                let mut failed_closed = a.failed_closed;
                failed_closed.truncate(MAX_FAILED_CLOSED);
                for e in &mut failed_closed {
                    *e = cap(std::mem::take(e), 64);
                }
                if !failed_closed.is_empty() {
                    warn!(
                        version = a.version,
                        failed_closed = failed_closed.len(),
                        warning,
                        "agent fails endpoints closed"
                    );
                }
                let outcome = self.hub.ack(
                    &node,
                    a.version,
                    digest,
                    acked.sent,
                    Some((failed_closed, warning)),
                );
                let wait = self.session.ack_outcome(&outcome, now);
                match outcome {
                    AckOutcome::Recorded => debug!(version = a.version, "ack"),
                    AckOutcome::Diverged { expected } => {
                        let wait = humantime::format_duration(wait.unwrap_or_default());
                        warn!(version = a.version, %digest, %expected, divergences = self.session.divergences(), %wait, "agent holds another slice than sent; sending a snapshot");
                    }
                    AckOutcome::Unverified => {
                        warn!(version = a.version, "ack of a version whose digest is no longer known; not taken, sending a snapshot");
                    }
                    AckOutcome::Unknown => {
                        warn!(version = a.version, "ack of a version never sent; ignored")
                    }
                }
            }
            Some(Msg::Nack(n)) => {
                let error = cap(n.error, MAX_TEXT);
                warn!(version = n.version, error, "agent could not apply");
                self.hub.nack(&node, n.version, error);
                self.session.nacked(n.version);
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
