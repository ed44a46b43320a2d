//! The controller's shared state: the replicated state machine (the policy engine at the
//! applied log index, with each object's owner), the per-node update history, rollout state
//! and rejected objects, behind one lock held only for short, non-blocking sections.
//! The one writer is the apply thread (`replication::apply`): committed log entries, each at
//! its index, and snapshots installed from the leader. Readers (sync streams, introspection,
//! the leader's sources reconciling) take slices, catch-ups, owned objects and status.
//! Streams wake through a watch channel per node, so a change reaches exactly the nodes it
//! affects.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use palisade_policy::engine::{Engine, NodeUpdate};
use palisade_policy::model::Name;
use palisade_policy::Digest;
use palisade_proto::encode::{self, SharedParts};
use palisade_replica::{Batch, Machine};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::history::{Entry, History, Limits};
use crate::metrics::Metrics;
use crate::rollout::{AckOutcome, Rollout};
use crate::source::Rejected;

pub struct State {
    pub machine: Machine,
    pub history: History,
    pub rollout: Rollout,
    pub rejected: Vec<Rejected>,
    watchers: HashMap<Name, watch::Sender<u64>>,
    /// The one open Sync stream of each node: its number, and how to end it.
    streams: HashMap<Name, (u64, CancellationToken)>,
    next_stream: u64,
}

impl State {
    /// The latest revision applied: the index of the last log entry applied (entries without
    /// commands count: they are revisions that changed nothing).
    pub fn revision(&self) -> u64 {
        self.machine.applied()
    }

    pub fn engine(&self) -> &Engine {
        self.machine.engine()
    }

    /// The node's desired version and digest (0 and the empty digest for an unknown node).
    pub fn desired(&self, node: &str) -> (u64, Digest) {
        match self.engine().node(node) {
            Some(n) => (n.version, n.digest),
            None => (0, palisade_policy::NodeSlice::empty(node).digest()),
        }
    }
}

pub struct Hub {
    state: Mutex<State>,
    revision: watch::Sender<u64>,
    realized: watch::Sender<u64>,
    pub metrics: Metrics,
}

impl Hub {
    /// The hub over `machine` (restored from the log's snapshot, or new).
    pub fn new(machine: Machine, limits: Limits, metrics: Metrics) -> Hub {
        let applied = machine.applied();
        let hub = Hub {
            state: Mutex::new(State {
                machine: Machine::new(),
                history: History::new(limits),
                rollout: Rollout::default(),
                rejected: Vec::new(),
                watchers: HashMap::new(),
                streams: HashMap::new(),
                next_stream: 0,
            }),
            revision: watch::channel(0).0,
            realized: watch::channel(0).0,
            metrics,
        };
        if applied > 0 {
            hub.install(machine);
        }
        hub
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would leave the state half-updated; there is nothing
        // sensible to continue with, so propagate it.
        self.state.lock().expect("controller state lock poisoned")
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
    /// the history of updates before it is gone, so agents resuming here get snapshots.
    pub fn install(&self, machine: Machine) {
        let started = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        st.machine = machine;
        st.history = History::new(st.history.limits());
        let now = Instant::now();
        let nodes = st.engine().nodes();
        for n in &nodes {
            if st.rollout.node(&n.node).map(|r| r.desired_version) != Some(n.version) {
                st.rollout.known(&n.node, n.version, n.digest, now);
            }
        }
        for (node, w) in &st.watchers {
            w.send_replace(st.machine.engine().node(node).map_or(0, |n| n.version));
        }
        let revision = st.revision();
        st.rollout.committed(revision, now);
        let elapsed = started.elapsed();
        self.metrics.full_compile(elapsed, nodes.len());
        info!(
            revision,
            nodes = nodes.len(),
            seconds = elapsed.as_secs_f64(),
            "state machine restored from a snapshot"
        );
        self.observe_realized(st);
        self.published(revision);
    }

    /// Apply committed log entries, each at its index (one revision), in order, under one
    /// lock; entries at or below the applied index are skipped. Returns the last index.
    pub fn apply(&self, entries: &[(u64, Option<Batch>)]) -> u64 {
        let mut st = self.lock();
        let st = &mut *st;
        for (index, batch) in entries {
            let started = Instant::now();
            let kind = match batch.as_ref().map(|b| b.commands.as_slice()) {
                Some([one]) => one.kind(),
                Some([]) | None => "none",
                Some(_) => "batch",
            };
            let updates = st.machine.apply(*index, batch.as_ref());
            self.metrics.compiled(kind, started.elapsed());
            let now = Instant::now();
            record(st, &updates, now);
            st.rollout.committed(*index, now);
            debug!(revision = index, kind, nodes = updates.len(), "applied");
        }
        self.metrics.nodes(st.engine().node_count());
        self.metrics.history_entries(st.history.updates_held());
        self.observe_realized(st);
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

    /// A new Sync stream of `node`: its number, and a token cancelled when a newer stream of
    /// the same node replaces it (one stream per node).
    pub fn open_stream(&self, node: &Name) -> (u64, CancellationToken) {
        let mut st = self.lock();
        st.next_stream += 1;
        let id = st.next_stream;
        let token = CancellationToken::new();
        if let Some((_, older)) = st.streams.insert(node.clone(), (id, token.clone())) {
            older.cancel();
        }
        (id, token)
    }

    /// Stream `id` of `node` ended.
    pub fn close_stream(&self, node: &Name, id: u64) {
        let mut st = self.lock();
        if st
            .streams
            .get(node)
            .is_some_and(|(current, _)| *current == id)
        {
            st.streams.remove(node);
        }
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
        let mut st = self.lock();
        let expected = sent.or_else(|| {
            let (desired, desired_digest) = st.desired(node);
            if desired == version {
                Some(desired_digest)
            } else {
                st.history.digest_at(node, version)
            }
        });
        let outcome = st.rollout.acked(node, version, digest, expected);
        self.metrics.ack(matches!(outcome, AckOutcome::Recorded));
        if let (AckOutcome::Recorded, Some((failed_closed, warning))) = (&outcome, degraded) {
            st.rollout.degraded(node, failed_closed, warning);
            let (endpoints, nodes) = st.rollout.failed_closed();
            self.metrics.failed_closed(endpoints, nodes);
        }
        self.observe_realized(&mut st);
        outcome
    }

    pub fn nack(&self, node: &Name, version: u64, error: String) {
        self.lock().rollout.nacked(node, version, error);
        self.metrics.nack();
    }

    fn observe_realized(&self, st: &mut State) {
        let now = Instant::now();
        for (_, latency) in st.rollout.take_realized(now) {
            self.metrics.realized(latency);
        }
        let through = st.rollout.realized_through();
        self.metrics
            .realized_revision(through, st.rollout.lagging_nodes());
        self.realized.send_if_modified(|v| {
            let moved = *v != through;
            *v = through;
            moved
        });
    }

    pub fn set_rejected(&self, rejected: Vec<Rejected>) {
        self.metrics.rejected(rejected.len());
        self.lock().rejected = rejected;
    }
}

/// Record what one revision changed: history, rollout, and the nodes' watches.
fn record(st: &mut State, updates: &[NodeUpdate], now: Instant) {
    let mut shared = SharedParts::default();
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
        st.rollout.changed(&u.node, u.to_version, digest, now);
        if let Some(w) = st.watchers.get(&u.node) {
            w.send_replace(u.to_version);
        }
    }
}
