//! One agent's Sync stream: what the controller believes the agent holds, what to send it
//! next (a snapshot, a recorded update, a composed chain, or an empty confirmation), one
//! unacknowledged update at a time, keepalives, and what ends the stream.

use std::sync::Arc;
use std::time::Duration;

use palisade_policy::delta::SliceDelta;
use palisade_policy::model::Name;
use palisade_policy::{Digest, NodeSlice};
use palisade_proto::encode::{self, SharedParts};
use palisade_proto::v1::agent_message::Msg;
use palisade_proto::v1::{self as pb};
use palisade_proto::Encoded;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::{cap, Stream, Streams, SyncConfig, MAX_FAILED_CLOSED, MAX_TEXT};
use crate::history::{compose_chain, Catchup, Entry};
use crate::hub::{Hub, State};
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

/// What the connection believes the agent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Knowledge {
    Holds(u64, Digest),
    /// After a nack or a divergent ack: only a snapshot will do.
    Unknown,
}

/// For the logs: `version 7 (digest 3f2a…)`, or `unknown`.
impl std::fmt::Display for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Knowledge::Holds(v, d) => write!(f, "version {v} (digest {d})"),
            Knowledge::Unknown => f.write_str("unknown (a snapshot is due)"),
        }
    }
}

pub(super) struct Connection {
    pub(super) hub: Arc<Hub>,
    pub(super) streams: Arc<Streams>,
    /// Where this replica stands, for keepalives.
    pub(super) group: Group,
    pub(super) config: SyncConfig,
    pub(super) node: Name,
    pub(super) holds: Knowledge,
    /// The version and digest of the last message sent: what an ack of it must say.
    pub(super) sent: Option<(u64, Digest)>,
    /// The version of the update sent and not yet acked or nacked.
    pub(super) awaiting: Option<u64>,
    /// Whether the Hello was answered (it always is, if only with an empty update, so the
    /// agent knows it is in sync).
    pub(super) greeted: bool,
    /// Version of the last message sent, when it was a snapshot.
    pub(super) last_snapshot: Option<u64>,
    /// A snapshot of this version was nacked: do not resend it until the node changes.
    pub(super) snapshot_refused_at: Option<u64>,
    /// Acks in a row whose digest was not the one sent.
    pub(super) divergences: u32,
    /// The agent said it held a version: it resumes.
    pub(super) resuming: bool,
    /// When the update awaiting its ack was handed to the stream.
    pub(super) sent_at: Option<std::time::Instant>,
    /// Send nothing before this (back-off after divergent acks).
    pub(super) hold_until: Option<tokio::time::Instant>,
}

/// What to send, decided under the hub's lock; encoded after it is released.
enum Plan {
    /// An update from `from` to `to` with no change (a confirmation, or the same content
    /// under another version).
    Empty {
        from: u64,
        to: u64,
        digest: Digest,
    },
    /// A recorded update, pre-encoded.
    Recorded(Entry),
    /// Recorded updates to compose.
    Chain(Vec<Entry>),
    Snapshot(NodeSlice),
}

/// The back-off before the next snapshot after `n` divergent acks in a row.
pub(super) fn divergence_backoff(n: u32) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    palisade_backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).delay(n - 2)
}

impl Connection {
    fn pending(&self, latest: u64) -> bool {
        if self.awaiting.is_some() {
            return false;
        }
        if self
            .hold_until
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
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
            holds = %self.holds,
            capacities = %format!(
                "{} endpoints, {} identities, {} rules",
                caps.endpoints, caps.identities, caps.rules
            ),
            "agent connected"
        );
        if agent.dataplane == pb::Dataplane::Memory as i32 {
            warn!("this node's agent runs the in-memory dataplane: it enforces nothing");
        }
        self.hub.connected(&self.node, &agent);
        self.hub.metrics.stream_opened();
        self.hello_ack();
        let mut latest = self.hub.watch_node(&self.node);
        // The first message says how often keepalives come (the agent's silence timeout
        // follows it) and where this replica stands.
        // (A stream already gone ends the loop below at its first turn.)
        let _ = tx.send(Ok(self.keepalive())).await;
        let mut keepalive = tokio::time::interval(self.config.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        loop {
            let want = self.pending(*latest.borrow());
            let held = self.hold_until;
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
                why = refusing.wait_for(Option::is_some) => {
                    let why = why.map(|w| w.clone().unwrap_or_default()).unwrap_or_default();
                    info!("ending the stream: {why}");
                    self.hub.metrics.streams_shed();
                    let _ = tx.try_send(Err(Status::unavailable(format!("{why}: try another replica"))));
                    break;
                }
                permit = tx.reserve(), if want => {
                    let Ok(permit) = permit else { break };
                    if let Some((msg, kind)) = self.next_message() {
                        self.hub.metrics.sent(kind, msg.len());
                        permit.send(Ok(msg));
                    }
                }
                _ = tokio::time::sleep_until(held.unwrap_or_else(tokio::time::Instant::now)), if held.is_some() => {
                    self.hold_until = None;
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
        self.streams.close(&self.node, stop.stream.id);
        self.hub.disconnected(&self.node, self.config.insecure);
        self.hub.metrics.stream_closed();
        info!("agent disconnected");
    }

    /// Where this replica stands (no hub lock: the group's status and lease).
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
        let Knowledge::Holds(v, d) = self.holds else {
            return;
        };
        let known = self.hub.read(|st| {
            let (desired, desired_digest) = st.desired(&self.node);
            (v == desired && d == desired_digest)
                || st.history().digest_at(&self.node, v) == Some(d)
        });
        if known && v > 0 {
            self.hub.ack(&self.node, v, d, Some(d), None);
        }
    }

    /// What to send to take the agent from what it holds to `desired`, decided under the
    /// lock (cheap: clones of shared parts, or the slice for a snapshot).
    /// Also when `desired` was applied here, when still known.
    fn plan(&self) -> (Plan, u64, Digest, Option<std::time::Instant>) {
        let (plan, desired, digest) = self.hub.read(|st| self.plan_in(st));
        // Recorded before the state's lock was let go (the apply thread records a revision
        // in the rollout while it holds it); read apart, so a snapshot's slicing holds up no ack.
        let applied_at = self.hub.progress(|p| p.rollout().committed_at(desired));
        (plan, desired, digest, applied_at)
    }

    fn plan_in(&self, st: &State) -> (Plan, u64, Digest) {
        let (desired, digest) = st.desired(&self.node);
        let plan = match self.holds {
            Knowledge::Unknown => Plan::Snapshot(st.engine().slice(&self.node)),
            Knowledge::Holds(v, d) if v == desired && d == digest => Plan::Empty {
                from: v,
                to: v,
                digest: d,
            },
            // An agent that holds nothing yet gets its slice whole.
            Knowledge::Holds(0, _) => Plan::Snapshot(st.engine().slice(&self.node)),
            Knowledge::Holds(v, d) => match st.history().catch_up(&self.node, v, &d) {
                Some(Catchup::UpToDate) => Plan::Empty {
                    from: desired,
                    to: desired,
                    digest,
                },
                Some(Catchup::One(entry)) => Plan::Recorded(entry),
                Some(Catchup::Chain(entries)) => Plan::Chain(entries),
                // Same content under another version (e.g. after a controller restart): move
                // the agent to the current version without sending any policy.
                None if d == digest => Plan::Empty {
                    from: v,
                    to: desired,
                    digest,
                },
                None => Plan::Snapshot(st.engine().slice(&self.node)),
            },
        };
        (plan, desired, digest)
    }

    /// What takes the agent from what it holds to the node's latest version.
    fn next_message(&mut self) -> Option<(Encoded, &'static str)> {
        let (plan, mut desired, mut digest, applied_at) = self.plan();
        let update = |from, to, digest: &Digest, delta: &SliceDelta| {
            encode::update(
                &self.node,
                from,
                to,
                digest,
                delta,
                &mut SharedParts::default(),
            )
        };
        let (msg, kind) = match plan {
            Plan::Empty { from, to, digest } if from == to && self.greeted => {
                // Caught up without a message (only the first answer confirms).
                self.holds = Knowledge::Holds(to, digest);
                return None;
            }
            Plan::Empty { from, to, digest } => {
                (update(from, to, &digest, &SliceDelta::default()), "update")
            }
            Plan::Recorded(entry) => (entry.encoded, "update"),
            Plan::Chain(entries) => {
                let from = entries.first().expect("a chain").from;
                let last = entries.last().expect("a chain");
                match compose_chain(&entries) {
                    Some(delta) => (update(from, last.to, &last.digest, &delta), "update"),
                    None => {
                        // The engine may have moved on since the plan: say what is sent.
                        let slice;
                        (desired, digest, slice) = self.hub.read(|st| {
                            let (desired, digest) = st.desired(&self.node);
                            (desired, digest, st.engine().slice(&self.node))
                        });
                        (encode::snapshot(&slice), "snapshot")
                    }
                }
            }
            // Taken under the same lock as `desired` and `digest`: consistent.
            Plan::Snapshot(slice) => (encode::snapshot(&slice), "snapshot"),
        };
        if !self.greeted && self.resuming {
            let by = match (kind, self.holds) {
                ("snapshot", _) => "snapshot",
                (_, Knowledge::Holds(v, _)) if v == desired => "current",
                _ => "delta",
            };
            self.hub.metrics.resumed(by, msg.len());
        }
        // Stages are timed on streams in sync (a first answer or a resume waits on the
        // agent's connecting, not on the change).
        self.sent_at = None;
        if self.greeted {
            if let Some(t) = applied_at {
                self.hub.metrics.stage("send", t.elapsed());
            }
            self.sent_at = Some(std::time::Instant::now());
        }
        debug!(kind, from = %self.holds, to = desired, bytes = msg.len(), "sending");
        self.holds = Knowledge::Holds(desired, digest);
        self.sent = Some((desired, digest));
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
                    if let Some(t) = self.sent_at.take() {
                        self.hub.metrics.stage("ack", t.elapsed());
                    }
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
                let sent = self.sent.filter(|(v, _)| *v == a.version).map(|(_, d)| d);
                match self.hub.ack(
                    &self.node,
                    a.version,
                    digest,
                    sent,
                    Some((failed_closed, warning)),
                ) {
                    AckOutcome::Recorded => {
                        self.divergences = 0;
                        debug!(version = a.version, "ack")
                    }
                    AckOutcome::Diverged { expected } => {
                        self.divergences += 1;
                        let wait = divergence_backoff(self.divergences);
                        warn!(version = a.version, %digest, %expected, divergences = self.divergences, wait = %humantime::format_duration(wait), "agent holds another slice than sent; sending a snapshot");
                        self.holds = Knowledge::Unknown;
                        self.hold_until = Some(tokio::time::Instant::now() + wait);
                    }
                    AckOutcome::Unverified => {
                        warn!(version = a.version, "ack of a version whose digest is no longer known; not taken, sending a snapshot");
                        self.holds = Knowledge::Unknown;
                    }
                    AckOutcome::Unknown => {
                        warn!(version = a.version, "ack of a version never sent; ignored")
                    }
                }
            }
            Some(Msg::Nack(n)) => {
                let error = cap(n.error, MAX_TEXT);
                warn!(version = n.version, error, "agent could not apply");
                self.hub.nack(&self.node, n.version, error);
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
