//! The controller's shared state: the replicated state machine (the policy engine at the
//! applied log index, with each object's owner), the per-node update history, rollout state
//! and rejected objects, behind one lock held only for short, non-blocking sections.
//! The one writer is the apply thread (`replication::apply`): committed log entries, each at
//! its index, and snapshots installed from the leader. Readers (sync streams, introspection,
//! the leader's sources reconciling) take slices, catch-ups, owned objects and status.
//! Streams wake through a watch channel per node, so a change reaches exactly the nodes it
//! affects.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use palisade_policy::engine::{Engine, NodeUpdate};
use palisade_policy::model::Name;
use palisade_policy::Digest;
use palisade_proto::encode::{self, SharedParts};
use palisade_replica::{Batch, Machine, Refused};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::acks::{self, Peers, Table};
use crate::history::{Catchup, Entry, History, Limits};
use crate::metrics::Metrics;
use crate::rollout::{AckOutcome, AgentInfo, PeerAck, Rollout};

/// The applied state: read through [`Hub::read`], written only by the apply thread (through
/// the hub's methods).
pub struct State {
    machine: Machine,
    history: History,
    watchers: HashMap<Name, watch::Sender<u64>>,
}

/// What agents and peers say of each node: the rollout state and the peers' tables. Its own
/// lock, taken after the state's and never before it, so an ack (thousands a second at scale)
/// waits for no apply and no reader of the applied state.
pub struct Progress {
    rollout: Rollout,
    /// What the peers' streams saw (which nodes are connected where).
    peers: Peers,
    /// This replica's id.
    replica: u64,
}

impl Progress {
    /// What this replica knows of each node's rollout (desired, acked, connected).
    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// What the peers' streams saw.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The replica `node`'s agent is connected to: this one, or a peer (as of its last table).
    pub fn connected_at(&self, node: &str) -> Option<u64> {
        if self.rollout.node(node).is_some_and(|n| n.connections > 0) {
            return Some(self.replica);
        }
        self.peers.connected_at(node)
    }
}

impl State {
    /// The replicated state machine at the applied index.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The per-node update history (catch-ups).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The latest revision applied: the index of the last log entry applied (entries without
    /// commands count: they are revisions that changed nothing).
    pub fn revision(&self) -> u64 {
        self.machine.applied()
    }

    pub fn engine(&self) -> &Engine {
        self.machine.engine()
    }

    /// The digest `node`'s slice had at `version`, when this replica still knows it.
    pub fn digest_at(&self, node: &str, version: u64) -> Option<Digest> {
        let (desired, digest) = self.desired(node);
        if desired == version {
            Some(digest)
        } else {
            self.history.digest_at(node, version)
        }
    }

    /// The node's desired version and digest (0 and the empty digest for an unknown node).
    pub fn desired(&self, node: &str) -> (u64, Digest) {
        match self.engine().node(node) {
            Some(n) => (n.version, n.digest),
            None => (0, palisade_policy::NodeSlice::empty(node).digest()),
        }
    }
}

impl crate::view::NodeView for State {
    fn revision(&self) -> u64 {
        State::revision(self)
    }
    fn desired(&self, node: &str) -> (u64, Digest) {
        State::desired(self, node)
    }
    fn digest_at(&self, node: &str, version: u64) -> Option<Digest> {
        State::digest_at(self, node, version)
    }
    fn catch_up(&self, node: &str, version: u64, digest: &Digest) -> Option<Catchup> {
        self.history.catch_up(node, version, digest)
    }
    fn slice(&self, node: &str) -> palisade_policy::NodeSlice {
        self.engine().slice(node)
    }
}

pub struct Hub {
    state: Mutex<State>,
    progress: Mutex<Progress>,
    revision: watch::Sender<u64>,
    realized: watch::Sender<u64>,
    /// What this replica's own streams saw, for its peers to merge. Its own lock (taken
    /// after the state's, never before), so answering a peer never waits for the state
    /// machine: peers ask on the same async workers that carry Raft's messages.
    acks: Mutex<Table>,
    /// The sequence number of that table (peers wait on it).
    acks_seq: watch::Sender<u64>,
    pub metrics: Metrics,
}

impl Hub {
    /// The hub of replica `replica` over `machine` (restored from the log's snapshot, or new).
    pub fn new(replica: u64, machine: Machine, limits: Limits, metrics: Metrics) -> Hub {
        // A new epoch per run: peers holding an older run's table start over.
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        let applied = machine.applied();
        let hub = Hub {
            state: Mutex::new(State {
                machine: Machine::new(),
                history: History::new(limits),
                watchers: HashMap::new(),
            }),
            progress: Mutex::new(Progress {
                rollout: Rollout::default(),
                peers: Peers::default(),
                replica,
            }),
            revision: watch::channel(0).0,
            realized: watch::channel(0).0,
            acks: Mutex::new(Table::new(epoch.max(1))),
            acks_seq: watch::channel(0).0,
            metrics,
        };
        if applied > 0 {
            hub.install(machine);
        }
        hub
    }

    /// Read the applied state (a short, non-blocking section: the apply thread waits for it;
    /// nothing in `f` can await).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }

    /// Read what agents and peers said (nothing in `f` can await).
    pub fn progress<R>(&self, f: impl FnOnce(&Progress) -> R) -> R {
        f(&self.lock_progress())
    }

    /// Read the applied state and what agents and peers said of it, together (the state's
    /// lock, then the progress's).
    pub fn read_both<R>(&self, f: impl FnOnce(&State, &Progress) -> R) -> R {
        let st = self.lock();
        let p = self.lock_progress();
        f(&st, &p)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would leave the state half-updated; there is nothing
        // sensible to continue with, so propagate it.
        self.state.lock().expect("controller state lock poisoned")
    }

    fn lock_progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().expect("rollout lock poisoned")
    }

    /// The latest revision, as a watch.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The realized watermark, as a watch.
    pub fn realized(&self) -> watch::Receiver<u64> {
        self.realized.subscribe()
    }

    /// The node's latest version, as a watch that fires when its slice changes.
    pub fn watch_node(&self, node: &Name) -> watch::Receiver<u64> {
        let mut st = self.lock();
        let version = st.desired(node).0;
        st.watchers
            .entry(node.clone())
            .or_insert_with(|| watch::channel(version).0)
            .subscribe()
    }

    /// Replace the state machine (restored from a snapshot: at startup, or sent by the
    /// leader to a replica that lagged too far). Every node whose version changed is woken;
    /// their history of updates is gone (agents resuming at an older version get snapshots),
    /// the others' stays.
    pub fn install(&self, machine: Machine) {
        let started = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        st.machine = machine;
        let engine = st.machine.engine();
        st.history
            .retain_current(|node| engine.node(node).map(|n| (n.version, n.digest)));
        let now = Instant::now();
        let nodes = st.engine().nodes();
        let mut p = self.lock_progress();
        for n in &nodes {
            if p.rollout.node(&n.node).map(|r| r.desired_version) != Some(n.version) {
                p.rollout.known(&n.node, n.version, n.digest, now);
            }
        }
        for (node, w) in &st.watchers {
            w.send_replace(st.machine.engine().node(node).map_or(0, |n| n.version));
        }
        let revision = st.revision();
        p.rollout.committed(revision, now);
        let elapsed = started.elapsed();
        self.metrics.full_compile(elapsed, nodes.len());
        info!(
            revision,
            nodes = nodes.len(),
            seconds = elapsed.as_secs_f64(),
            "state machine restored from a snapshot"
        );
        self.observe_realized(&mut p);
        self.published(revision);
    }

    /// Apply committed log entries, each at its index (one revision), in order, under one
    /// lock; entries at or below the applied index are skipped. Returns the last index, and
    /// what the state machine refused of each entry (only those that refused something).
    pub fn apply(&self, entries: &[(u64, Option<Batch>)]) -> (u64, BTreeMap<u64, Refused>) {
        let mut st = self.lock();
        let st = &mut *st;
        let mut refused = BTreeMap::new();
        for (index, batch) in entries {
            let started = Instant::now();
            let kind = match batch.as_ref().map(|b| b.commands.as_slice()) {
                Some([one]) => one.kind(),
                Some([]) | None => "none",
                Some(_) => "batch",
            };
            let applied = st.machine.apply(*index, batch.as_ref());
            if !applied.refused.is_empty() {
                refused.insert(*index, applied.refused);
            }
            let updates = applied.updates;
            self.metrics.compiled(kind, started.elapsed());
            let now = Instant::now();
            let digests = record(st, &updates);
            if batch.is_some() {
                self.metrics.stage("compile", now - started);
                self.metrics.stage("encode", now.elapsed());
            }
            // The rollout's lock only around what the revision means for it: compiling and
            // encoding (above) hold up no ack.
            {
                let mut p = self.lock_progress();
                for (u, digest) in updates.iter().zip(&digests) {
                    p.rollout.changed(&u.node, u.to_version, *digest, now);
                }
                p.rollout.committed(*index, now);
            }
            // Streams woken now read the state after this apply lets go of it.
            for u in &updates {
                if let Some(w) = st.watchers.get(&u.node) {
                    w.send_replace(u.to_version);
                }
            }
            debug!(revision = index, kind, nodes = updates.len(), "applied");
        }
        self.metrics.nodes(st.engine().node_count());
        self.metrics.history_entries(st.history.updates_held());
        self.observe_realized(&mut self.lock_progress());
        let last = st.revision();
        self.published(last);
        (last, refused)
    }

    /// Apply the membership change committed at `index`: a revision that changes no slice;
    /// the machine keeps the addresses of replicas added and the ids of those removed.
    pub fn apply_change(&self, index: u64, change: Option<&palisade_replica::Change>) -> u64 {
        let mut st = self.lock();
        let st = &mut *st;
        st.machine.apply_change(index, change);
        self.lock_progress()
            .rollout
            .committed(index, Instant::now());
        if let Some(c) = change {
            info!(revision = index, replica = c.id, kind = ?c.kind, address = %c.address, "membership changed");
        }
        let last = st.revision();
        self.published(last);
        last
    }

    /// A snapshot of the state machine when `every` entries were applied since the last one:
    /// `(index, bytes)`, to store in the log (which is then compacted behind it).
    pub fn snapshot_if_due(&self, every: u64) -> Option<(u64, Vec<u8>)> {
        let mut st = self.lock();
        if !st.machine.snapshot_due(every) {
            return None;
        }
        let index = st.machine.applied();
        Some((index, st.machine.snapshot()))
    }

    fn published(&self, revision: u64) {
        if *self.revision.borrow() == revision {
            return;
        }
        self.revision.send_replace(revision);
        self.metrics.revision(revision);
    }

    /// Record an ack; returns what it did. `sent`: the digest the stream sent for this
    /// version, when it did; otherwise the node's history is asked, and an ack nobody can
    /// check is not recorded. `degraded`: what the agent said it fails closed for lack of
    /// room, and why (None: not said, as in a Hello).
    pub fn ack(
        &self,
        node: &Name,
        version: u64,
        digest: Digest,
        sent: Option<Digest>,
        degraded: Option<(Vec<String>, String)>,
    ) -> AckOutcome {
        // The applied state is asked only when the stream did not say what it sent (a Hello):
        // a version's digest never changes, so the answer holds after the lock is let go.
        let expected = sent.or_else(|| self.read(|st| st.digest_at(node, version)));
        let mut p = self.lock_progress();
        let outcome = p.rollout.acked(node, version, digest, expected);
        self.metrics.ack(matches!(outcome, AckOutcome::Recorded));
        if let (AckOutcome::Recorded, Some((failed_closed, warning))) = (&outcome, degraded) {
            p.rollout.degraded(node, failed_closed, warning);
            let (endpoints, nodes) = p.rollout.failed_closed();
            self.metrics.failed_closed(endpoints, nodes);
        }
        self.touch(&p, node);
        self.observe_realized(&mut p);
        outcome
    }

    pub fn nack(&self, node: &Name, version: u64, error: String) {
        let mut p = self.lock_progress();
        p.rollout.nacked(node, version, error);
        self.touch(&p, node);
        self.metrics.nack();
    }

    /// An agent opened a stream here.
    pub fn connected(&self, node: &Name, agent: &AgentInfo) {
        let mut p = self.lock_progress();
        p.rollout.connected(node, agent);
        self.touch(&p, node);
    }

    /// A stream of `node` ended here (`forget_unknown`: see `Rollout::disconnected`; a node
    /// a peer has connected is not forgotten).
    pub fn disconnected(&self, node: &Name, forget_unknown: bool) {
        let mut p = self.lock_progress();
        let elsewhere = p.peers.connected_at(node).is_some();
        p.rollout.disconnected(node, forget_unknown && !elsewhere);
        self.touch(&p, node);
    }

    /// Put what this replica's streams know of `node` into its table, for the peers (a
    /// tombstone when it forgot the node).
    fn touch(&self, p: &Progress, node: &Name) {
        let mut table = self.acks();
        let changed = match p.rollout.node(node) {
            Some(n) => table.set(node, n.record(n.connections > 0)),
            None => table.forget(node),
        };
        if changed {
            self.acks_seq.send_replace(table.seq());
        }
    }

    /// This replica's ack table.
    pub fn acks(&self) -> MutexGuard<'_, Table> {
        self.acks.lock().expect("ack table lock poisoned")
    }

    /// This replica's table, as a watch of its sequence number.
    pub fn acks_seq(&self) -> watch::Receiver<u64> {
        self.acks_seq.subscribe()
    }

    /// Merge what peer `peer`'s streams saw (changes since what this replica held, or its
    /// whole table), by highest version per node.
    pub fn merge_peer(&self, peer: u64, table: acks::PeerChanges) {
        let now_ms = acks::unix_ms();
        // Both locks, the state's first: a version this replica has not applied yet must be
        // held as ahead (and checked when applied), never taken unchecked because it was
        // applied between reading the digests and merging. Merges run on the blocking pool.
        let st = self.lock();
        let mut p = self.lock_progress();
        let p = &mut *p;
        if table.full {
            p.peers.unreachable(peer);
        }
        p.peers.table(peer).answered = Some((std::time::Instant::now(), table.applied));
        for (node, record) in table.nodes {
            let Some(record) = record else {
                // The peer forgot a node only a stream of it had named.
                p.peers.table(peer).connected.remove(&node);
                if p.peers.connected_at(&node).is_none() {
                    p.rollout.forget_if_unknown(&node);
                }
                continue;
            };
            // Staleness is how long a change took to arrive: a whole table (a replica
            // starting, or met again) holds records of any age.
            if !table.full {
                self.metrics
                    .peer_ack_staleness(now_ms.saturating_sub(record.changed_unix_ms));
            }
            if let Some(digest) = record.digest {
                let expected = st.digest_at(&node, record.version);
                if p.rollout
                    .acked_by_peer(&node, record.version, digest, expected)
                    == PeerAck::Diverged
                {
                    tracing::error!(%node, peer, version = record.version, %digest, expected = %expected.map_or_else(|| "none".to_string(), |d| d.to_string()), "replica {peer} recorded an ack with another digest than this replica has for that version: the replicas diverge");
                    self.metrics.peer_ack_diverged();
                }
            }
            let table = p.peers.table(peer);
            if record.connected {
                table.connected.insert(node.clone(), record.changed_unix_ms);
                p.rollout.reported_by_peer(&node, &record);
            } else {
                table.connected.remove(&node);
            }
        }
        self.observe_realized(p);
    }

    /// Peer `peer` cannot be reached: its agents are no longer counted as connected.
    pub fn peer_unreachable(&self, peer: u64) {
        self.lock_progress().peers.unreachable(peer);
    }

    fn observe_realized(&self, p: &mut Progress) {
        let now = Instant::now();
        for (_, latency) in p.rollout.take_realized(now) {
            self.metrics.realized(latency);
        }
        let through = p.rollout.realized_through();
        self.metrics
            .realized_revision(through, p.rollout.lagging_nodes());
        self.realized.send_if_modified(|v| {
            let moved = *v != through;
            *v = through;
            moved
        });
    }
}

/// Record what one revision changed in the history (each update encoded once); the digest
/// of each node's new slice, in the order of `updates`.
fn record(st: &mut State, updates: &[NodeUpdate]) -> Vec<Digest> {
    let mut shared = SharedParts::default();
    let mut digests = Vec::with_capacity(updates.len());
    for u in updates {
        let digest = u.digest();
        let from_digest = u.from_digest();
        let encoded = encode::update(
            &u.node,
            u.from_version,
            u.to_version,
            &digest,
            &u.delta,
            &mut shared,
        );
        st.history.push(
            &u.node,
            Entry {
                from: u.from_version,
                from_digest,
                to: u.to_version,
                digest,
                delta: std::sync::Arc::new(u.delta.clone()),
                encoded,
            },
        );
        digests.push(digest);
    }
    digests
}

#[cfg(test)]
mod tests;
