//! Rollout state (contracts.md §5): per node the desired version, what its agent acked or
//! nacked, whether it is connected, and which revisions are realized.
//!
//! A revision R is realized when every node acked at least the version its slice had at R.
//! For a node, let u be its first unacked version (the oldest change it has not acked); R is
//! realized for that node exactly when R < u. So one watermark answers for every revision:
//! everything up to `min(u over nodes) - 1` is realized. Acks move nodes' u forward, changes
//! enqueue versions; both are O(log nodes).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use palisade_policy::model::Name;
use palisade_policy::Digest;

pub use crate::acks::AgentInfo;
use crate::acks::{Record, FAILED_CLOSED_SHARED};

/// One node's rollout.
#[derive(Clone, Debug)]
pub struct NodeRollout {
    pub desired_version: u64,
    pub desired_digest: Digest,
    /// The highest version the agent acked, on any replica (this one's streams or a peer's).
    pub acked_version: u64,
    pub acked_digest: Option<Digest>,
    /// The highest version acked on this replica's own streams (what its table says).
    pub local_ack: Option<(u64, Digest)>,
    /// An ack a peer reported for a version this replica has not applied yet: taken when it
    /// gets there.
    ahead: Option<(u64, Digest)>,
    /// Versions changed after the acked one, oldest first, with when they were committed.
    unacked: VecDeque<(u64, Instant)>,
    /// Open sync streams on this replica.
    pub connections: u32,
    pub nack: Option<(u64, String)>,
    /// What the agent said of itself in its Hello (here, or to the replica it is on).
    pub agent: AgentInfo,
    /// Endpoints the dataplane fails closed because the slice does not fit, as of the last
    /// ack, and the agent's explanation.
    pub failed_closed: Vec<String>,
    pub capacity_warning: String,
}

impl NodeRollout {
    fn new(digest: Digest) -> NodeRollout {
        NodeRollout {
            desired_version: 0,
            desired_digest: digest,
            acked_version: 0,
            acked_digest: None,
            local_ack: None,
            ahead: None,
            unacked: VecDeque::new(),
            connections: 0,
            nack: None,
            agent: AgentInfo::default(),
            failed_closed: Vec::new(),
            capacity_warning: String::new(),
        }
    }

    /// First version this node has not acked, if any.
    pub fn first_unacked(&self) -> Option<u64> {
        self.unacked.front().map(|(v, _)| *v)
    }

    /// How long the oldest unacked change has waited.
    pub fn lag(&self, now: Instant) -> Duration {
        self.unacked
            .front()
            .map_or(Duration::ZERO, |(_, t)| now.saturating_duration_since(*t))
    }
}

/// What an ack did.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Recorded; the realized watermark may have moved.
    Recorded,
    /// The digest does not match what the controller sent for that version: the agent holds
    /// something else and needs a snapshot.
    Diverged { expected: Digest },
    /// A version the controller never sent (ahead of the desired one): ignored.
    Unknown,
    /// A version whose digest the controller no longer knows: it cannot tell whether the
    /// agent holds what was sent, so the ack is not recorded (the agent gets a snapshot).
    Unverified,
}

/// What a peer's ack did here.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerAck {
    Recorded,
    /// Not newer than what is known.
    Known,
    /// For a version not applied here yet: kept until it is.
    Ahead,
    /// Another digest than this replica has for that version: the replicas diverge.
    Diverged,
}

/// A node lagging behind a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lagging {
    pub node: Name,
    /// The version the node must ack for the revision to be realized.
    pub needed_version: u64,
    pub acked_version: u64,
    pub connected: bool,
    pub nack: Option<String>,
}

impl NodeRollout {
    /// The record of this node as this replica's streams left it: its own acks, and while
    /// the agent is connected here, what the agent said (otherwise that may be a peer's
    /// report).
    pub fn record(&self, connected_here: bool) -> Record {
        let mut r = Record {
            version: self.local_ack.map_or(0, |(v, _)| v),
            digest: self.local_ack.map(|(_, d)| d),
            connected: connected_here,
            ..Record::default()
        };
        if connected_here {
            r.nack = self.nack.clone();
            r.agent = self.agent.clone();
            r.failed_closed = self
                .failed_closed
                .iter()
                .take(FAILED_CLOSED_SHARED)
                .cloned()
                .collect();
            r.warning = self.capacity_warning.clone();
        }
        r
    }
}

#[derive(Default)]
pub struct Rollout {
    nodes: BTreeMap<Name, NodeRollout>,
    /// (first unacked version, node) of every node with unacked versions.
    waiting: BTreeSet<(u64, Name)>,
    latest_revision: u64,
    /// Commit time of revisions not yet realized, for realization latency.
    committed: BTreeMap<u64, Instant>,
    /// Sum of `failed_closed.len()`, and nodes where it is not 0.
    failed_closed: usize,
    degraded_nodes: usize,
}

/// Revisions whose commit time is remembered (older ones are forgotten, unmeasured).
const COMMIT_TIMES_KEPT: usize = 100_000;

impl Rollout {
    pub fn node(&self, name: &str) -> Option<&NodeRollout> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&Name, &NodeRollout)> {
        self.nodes.iter()
    }

    fn entry(&mut self, node: &Name) -> &mut NodeRollout {
        self.nodes
            .entry(node.clone())
            .or_insert_with(|| NodeRollout::new(palisade_policy::NodeSlice::empty(node).digest()))
    }

    /// A node known from the start (a full compile) at `version`. Versions it had before (from
    /// an earlier controller run) are not tracked: it must ack `version`.
    pub fn known(&mut self, node: &Name, version: u64, digest: Digest, now: Instant) {
        self.changed(node, version, digest, now);
    }

    /// `revision` was committed (whether or not it changed any node).
    pub fn committed(&mut self, revision: u64, now: Instant) {
        self.latest_revision = self.latest_revision.max(revision);
        self.committed.insert(revision, now);
        while self.committed.len() > COMMIT_TIMES_KEPT {
            self.committed.pop_first();
        }
    }

    /// When `revision` was committed and applied here, while remembered.
    pub fn committed_at(&self, revision: u64) -> Option<Instant> {
        self.committed.get(&revision).copied()
    }

    /// Node `node`'s slice changed to `version` with `digest`.
    pub fn changed(&mut self, node: &Name, version: u64, digest: Digest, now: Instant) {
        let n = self.entry(node);
        let before = n.first_unacked();
        n.desired_version = version;
        n.desired_digest = digest;
        if version > n.acked_version {
            n.unacked.push_back((version, now));
        }
        let after = n.first_unacked();
        self.reindex(node, before, after);
        // A peer's ack of this version (or of one this replica never saw as a change of its
        // own, having restored a snapshot past it) arrived before this replica applied it.
        let n = self.entry(node);
        if let Some((v, d)) = n.ahead.filter(|(v, _)| *v <= version) {
            n.ahead = None;
            if v < version || d == digest {
                self.record(node, v, d);
            } else {
                tracing::error!(%node, version, peer = %d, here = %digest, "a peer's ack names another digest than this replica computed for the same version: the replicas diverge");
            }
        }
    }

    fn reindex(&mut self, node: &Name, before: Option<u64>, after: Option<u64>) {
        if before == after {
            return;
        }
        if let Some(b) = before {
            self.waiting.remove(&(b, node.clone()));
        }
        if let Some(a) = after {
            self.waiting.insert((a, node.clone()));
        }
    }

    /// The agent of `node` holds `version` with `digest`. `expected` is the digest the
    /// controller sent for that version, when it still knows it; an ack it cannot check is
    /// not recorded.
    pub fn acked(
        &mut self,
        node: &Name,
        version: u64,
        digest: Digest,
        expected: Option<Digest>,
    ) -> AckOutcome {
        let n = self.entry(node);
        if version > n.desired_version {
            return AckOutcome::Unknown;
        }
        let Some(expected) = expected else {
            return AckOutcome::Unverified;
        };
        if expected != digest {
            n.nack = Some((
                version,
                format!(
                    "digest mismatch: the agent holds {digest}, the controller sent {expected}"
                ),
            ));
            return AckOutcome::Diverged { expected };
        }
        if n.local_ack.is_none_or(|(v, _)| v <= version) {
            n.local_ack = Some((version, digest));
        }
        self.record(node, version, digest);
        AckOutcome::Recorded
    }

    /// A peer says the agent of `node` acked `version` with `digest` there (the peer checked
    /// it against what it sent). `expected`: this replica's digest for that version, when it
    /// knows it. Merged by highest version: acks only move forward.
    pub fn acked_by_peer(
        &mut self,
        node: &Name,
        version: u64,
        digest: Digest,
        expected: Option<Digest>,
    ) -> PeerAck {
        let n = self.entry(node);
        if version <= n.acked_version {
            return PeerAck::Known;
        }
        if version > n.desired_version {
            if n.ahead.is_none_or(|(v, _)| v < version) {
                n.ahead = Some((version, digest));
            }
            return PeerAck::Ahead;
        }
        if expected.is_some_and(|e| e != digest) {
            return PeerAck::Diverged;
        }
        self.record(node, version, digest);
        PeerAck::Recorded
    }

    /// The agent of `node` holds `version` with `digest` (checked).
    fn record(&mut self, node: &Name, version: u64, digest: Digest) {
        let n = self.entry(node);
        let before = n.first_unacked();
        if version >= n.acked_version {
            n.acked_version = version;
            n.acked_digest = Some(digest);
        }
        while n.unacked.front().is_some_and(|(v, _)| *v <= version) {
            n.unacked.pop_front();
        }
        if n.nack.as_ref().is_some_and(|(v, _)| *v <= version) {
            n.nack = None;
        }
        let after = n.first_unacked();
        self.reindex(node, before, after);
    }

    /// What a peer that has `node`'s agent says of it (its nack, what it reported of itself
    /// and of its dataplane), taken when the agent is not connected here.
    pub fn reported_by_peer(&mut self, node: &Name, r: &Record) {
        let n = self.entry(node);
        if n.connections > 0 {
            return;
        }
        n.agent = r.agent.clone();
        n.nack = r.nack.clone().filter(|(v, _)| *v > n.acked_version);
        let failed_closed = r.failed_closed.clone();
        let warning = r.warning.clone();
        self.degraded(node, failed_closed, warning);
    }

    pub fn nacked(&mut self, node: &Name, version: u64, error: String) {
        self.entry(node).nack = Some((version, error));
    }

    pub fn connected(&mut self, node: &Name, agent: &AgentInfo) {
        let n = self.entry(node);
        n.connections += 1;
        n.agent = agent.clone();
    }

    /// What the last ack of `node` said its dataplane fails closed (empty: everything fits).
    pub fn degraded(&mut self, node: &Name, failed_closed: Vec<String>, warning: String) {
        let n = self.entry(node);
        let (was_degraded, was) = (!n.failed_closed.is_empty(), n.failed_closed.len());
        n.failed_closed = failed_closed;
        n.capacity_warning = warning;
        let (is_degraded, is) = (!n.failed_closed.is_empty(), n.failed_closed.len());
        self.failed_closed = self.failed_closed - was + is;
        self.degraded_nodes =
            self.degraded_nodes - usize::from(was_degraded) + usize::from(is_degraded);
    }

    /// Endpoints failed closed over all nodes, and the nodes with any.
    pub fn failed_closed(&self) -> (usize, usize) {
        (self.failed_closed, self.degraded_nodes)
    }

    /// A stream of `node` ended. `forget_unknown`: a node that has no slice and no other
    /// stream is forgotten (one an unauthenticated stream merely named).
    pub fn disconnected(&mut self, node: &Name, forget_unknown: bool) {
        let n = self.entry(node);
        n.connections = n.connections.saturating_sub(1);
        if forget_unknown {
            self.forget_if_unknown(node);
        }
    }

    /// Forget `node` if nothing but a stream ever named it: no slice, no stream open here, no
    /// ack (its own or a peer's). Returns whether it did.
    pub fn forget_if_unknown(&mut self, node: &Name) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let unknown = n.connections == 0
            && n.desired_version == 0
            && n.unacked.is_empty()
            && n.acked_version == 0
            && n.ahead.is_none();
        if unknown {
            self.degraded(node, Vec::new(), String::new());
            self.nodes.remove(node);
        }
        unknown
    }

    /// Every revision up to this one is realized.
    pub fn realized_through(&self) -> u64 {
        match self.waiting.first() {
            Some((u, _)) => u - 1,
            None => self.latest_revision,
        }
    }

    pub fn is_realized(&self, revision: u64) -> bool {
        revision <= self.realized_through()
    }

    /// Nodes keeping `revision` from being realized.
    pub fn lagging(&self, revision: u64) -> Vec<Lagging> {
        self.waiting
            .iter()
            .take_while(|(u, _)| *u <= revision)
            .map(|(_, name)| {
                let n = &self.nodes[name];
                let needed = n
                    .unacked
                    .iter()
                    .take_while(|(v, _)| *v <= revision)
                    .last()
                    .map_or(n.acked_version, |(v, _)| *v);
                Lagging {
                    node: name.clone(),
                    needed_version: needed,
                    acked_version: n.acked_version,
                    connected: n.connections > 0,
                    nack: n.nack.as_ref().map(|(_, e)| e.clone()),
                }
            })
            .collect()
    }

    /// Realization latencies of revisions realized since the last call (the watermark moved
    /// past them); they are forgotten afterwards.
    pub fn take_realized(&mut self, now: Instant) -> Vec<(u64, Duration)> {
        let through = self.realized_through();
        let mut out = Vec::new();
        while let Some((&r, &t)) = self.committed.first_key_value() {
            if r > through {
                break;
            }
            self.committed.pop_first();
            out.push((r, now.saturating_duration_since(t)));
        }
        out
    }

    /// Nodes with a change they have not acked (`waiting` holds exactly those).
    pub fn lagging_nodes(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    #[test]
    fn watermark_follows_the_slowest_node() {
        let (a, b): (Name, Name) = ("a".into(), "b".into());
        let now = Instant::now();
        let mut r = Rollout::default();
        for rev in 1..=5 {
            r.committed(rev, now);
        }
        assert_eq!(
            r.realized_through(),
            5,
            "nothing changed: everything realized"
        );
        r.changed(&a, 6, d(6), now);
        r.committed(6, now);
        r.changed(&b, 7, d(7), now);
        r.committed(7, now);
        r.changed(&a, 8, d(8), now);
        r.committed(8, now);
        assert_eq!(r.realized_through(), 5);
        assert_eq!(r.acked(&a, 6, d(6), Some(d(6))), AckOutcome::Recorded);
        assert_eq!(r.realized_through(), 6, "b's change at 7 is unacked");
        assert!(!r.is_realized(7));
        // Listed by their oldest unacked change.
        let lag = r.lagging(8);
        assert_eq!(
            lag.iter().map(|l| &*l.node).collect::<Vec<_>>(),
            vec!["b", "a"]
        );
        assert_eq!(lag[1].needed_version, 8);
        r.acked(&b, 7, d(7), Some(d(7)));
        assert_eq!(r.realized_through(), 7);
        // An ack of a later version covers the earlier ones.
        r.acked(&a, 8, d(8), Some(d(8)));
        assert_eq!(r.realized_through(), 8);
        assert_eq!(r.take_realized(now).len(), 8);
    }

    #[test]
    fn a_wrong_digest_is_divergence_and_nacks_clear_on_ack() {
        let a: Name = "a".into();
        let now = Instant::now();
        let mut r = Rollout::default();
        r.changed(&a, 3, d(3), now);
        assert_eq!(
            r.acked(&a, 3, d(9), Some(d(3))),
            AckOutcome::Diverged { expected: d(3) }
        );
        assert_eq!(r.realized_through(), 2);
        assert!(r.node("a").unwrap().nack.is_some());
        assert_eq!(r.acked(&a, 4, d(4), None), AckOutcome::Unknown);
        assert_eq!(
            r.acked(&a, 3, d(3), None),
            AckOutcome::Unverified,
            "a digest nobody can check is not taken"
        );
        r.nacked(&a, 3, "no room".into());
        assert_eq!(r.lagging(3)[0].nack.as_deref(), Some("no room"));
        r.acked(&a, 3, d(3), Some(d(3)));
        assert!(r.node("a").unwrap().nack.is_none());
    }

    #[test]
    fn peers_acks_merge_by_highest_version_and_wait_for_versions_not_applied_here() {
        let a: Name = "a".into();
        let now = Instant::now();
        let mut r = Rollout::default();
        r.changed(&a, 3, d(3), now);
        r.committed(3, now);
        r.committed(4, now);
        // A peer ahead of this replica: its agent acked 5, not applied here yet.
        assert_eq!(r.acked_by_peer(&a, 5, d(5), None), PeerAck::Ahead);
        assert_eq!(r.realized_through(), 2);
        assert_eq!(r.acked_by_peer(&a, 3, d(3), Some(d(3))), PeerAck::Recorded);
        assert_eq!(r.realized_through(), 4);
        assert_eq!(
            r.node("a").unwrap().local_ack,
            None,
            "not this replica's own ack"
        );
        // An older ack from another peer changes nothing: acks only move forward.
        assert_eq!(r.acked_by_peer(&a, 3, d(3), Some(d(3))), PeerAck::Known);
        // This replica applies 5: the peer's ack is taken then.
        r.changed(&a, 5, d(5), now);
        r.committed(5, now);
        assert_eq!(r.node("a").unwrap().acked_version, 5);
        assert_eq!(r.realized_through(), 5);
        // A digest other than this replica's for that version is divergence, not an ack.
        r.changed(&a, 6, d(6), now);
        assert_eq!(r.acked_by_peer(&a, 6, d(9), Some(d(6))), PeerAck::Diverged);
        assert_eq!(r.node("a").unwrap().acked_version, 5);
        // An ahead ack whose digest differs when this replica gets there is not taken.
        assert_eq!(r.acked_by_peer(&a, 7, d(9), None), PeerAck::Ahead);
        r.changed(&a, 7, d(7), now);
        assert_eq!(r.node("a").unwrap().acked_version, 5);
    }

    #[test]
    fn nodes_only_named_by_unauthenticated_streams_are_forgotten() {
        let (a, b): (Name, Name) = ("a".into(), "b".into());
        let now = Instant::now();
        let mut r = Rollout::default();
        let agent = AgentInfo::default();
        r.connected(&a, &agent);
        r.disconnected(&a, true);
        assert!(r.node("a").is_none(), "no slice, no stream: forgotten");
        r.changed(&b, 3, d(3), now);
        r.connected(&b, &agent);
        r.disconnected(&b, true);
        assert!(r.node("b").is_some(), "a node with a slice stays");
        r.connected(&a, &agent);
        r.disconnected(&a, false);
        assert!(r.node("a").is_some(), "authenticated nodes stay");
    }
}
