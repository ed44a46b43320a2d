//! The applied state and its one writer. [`State`] holds the replicated state machine (the
//! policy engine at the applied log index, with each object's owner) and the writer's copy
//! of the readers' [`View`]; it is owned by the apply thread (`replication::apply`), which
//! applies committed entries, installs the leader's snapshots and takes snapshots through
//! it, with no lock.
//!
//! After each applied revision the writer publishes its view to its [`Readers`] (the hub:
//! readers load it without a lock), then tells the rollout what changed and wakes the
//! streams of the nodes it changed. Readers needing more than a view (a slice, the engine for
//! explain or lint, owners) ask the apply thread (`Hub::ask`): it answers between revisions,
//! so no reader ever waits on a lock the writer holds, and no async worker blocks.

use std::collections::BTreeMap;
use std::time::Instant;

use palisade_policy::engine::{Engine, NodeSummary, NodeUpdate};
use palisade_policy::model::Name;
use palisade_policy::{Digest, NodeSlice};
use palisade_proto::encode::{self, SharedParts};
use palisade_replica::{Batch, Change, Machine, Refused};
use tracing::{debug, info};

use crate::history::{Entry, Limits};
use crate::metrics::Metrics;
use crate::view::View;

/// Where the writer tells readers what it applied (the [`crate::hub::Hub`]), per revision:
/// publish the view and tell the rollout what changed (together, as one step for readers),
/// then wake the changed nodes' streams.
pub trait Readers {
    fn metrics(&self) -> &Metrics;
    /// Revision `index` is applied: publish `view` and record each node's new version and
    /// digest (`changes`) in the rollout, as one step for readers, then wake those nodes.
    fn applied(&self, view: &View, index: u64, changes: &[(&Name, u64, Digest)], now: Instant);
    /// The state was replaced by a snapshot holding `nodes`: publish `view`, tell the rollout,
    /// wake every node.
    fn restored(&self, view: &View, nodes: &[NodeSummary]);
    /// Applied through `revision`: count what is realized, and say so to those waiting.
    fn settled(&self, revision: u64);
}

/// The applied state, owned by its one writer.
pub struct State {
    machine: Machine,
    /// The writer's copy of what readers see, published after each revision.
    view: View,
}

impl State {
    /// The state over `machine` (restored from the log's snapshot, or new), published to
    /// `hub`.
    pub fn new(machine: Machine, limits: Limits, hub: &impl Readers) -> State {
        let mut st = State {
            machine: Machine::new(),
            view: View::new(limits),
        };
        if machine.applied() > 0 {
            st.install(hub, machine);
        }
        st
    }

    /// The replicated state machine at the applied index.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    pub fn engine(&self) -> &Engine {
        self.machine.engine()
    }

    /// The latest revision applied: the index of the last log entry applied (entries without
    /// commands count: they are revisions that changed nothing).
    pub fn revision(&self) -> u64 {
        self.machine.applied()
    }

    /// The node's desired version and digest (0 and the empty digest for an unknown node).
    pub fn desired(&self, node: &str) -> (u64, Digest) {
        self.view.desired(node)
    }

    /// The node's whole slice, with its version and digest.
    pub fn latest(&self, node: &str) -> (u64, Digest, NodeSlice) {
        let (version, digest) = self.desired(node);
        (version, digest, self.engine().slice(node))
    }

    /// Replace the state machine (restored from a snapshot: at startup, or sent by the
    /// leader to a replica that lagged too far). Every watched node is woken (those whose
    /// version did not change find nothing to send);
    /// their history of updates is gone (agents resuming at an older version get snapshots),
    /// the others' stays.
    pub fn install(&mut self, hub: &impl Readers, machine: Machine) {
        let started = Instant::now();
        self.machine = machine;
        let nodes = self.engine().nodes();
        let engine = self.machine.engine();
        self.view
            .history_mut()
            .retain_current(|node| engine.node(node).map(|n| (n.version, n.digest)));
        self.view.reset_desired(
            nodes
                .iter()
                .map(|n| (n.node.clone(), (n.version, n.digest))),
        );
        let revision = self.revision();
        self.view.set_revision(revision);
        hub.restored(&self.view, &nodes);
        let elapsed = started.elapsed();
        hub.metrics().full_compile(elapsed, nodes.len());
        info!(
            revision,
            nodes = nodes.len(),
            seconds = elapsed.as_secs_f64(),
            "state machine restored from a snapshot"
        );
        hub.settled(revision);
    }

    /// Apply committed log entries, each at its index (one revision), in order; entries at or
    /// below the applied index are skipped. Each revision is published together with what it
    /// means for the rollout (so an ack of a version read from the view finds the rollout
    /// expecting it, and a version the rollout holds is in the view).
    /// Returns the last index, and what the state machine refused of each entry (only those
    /// that refused something).
    pub fn apply(
        &mut self,
        hub: &impl Readers,
        entries: &[(u64, Option<Batch>)],
    ) -> (u64, BTreeMap<u64, Refused>) {
        let mut refused = BTreeMap::new();
        for (index, batch) in entries {
            let started = Instant::now();
            let kind = match batch.as_ref().map(|b| b.commands.as_slice()) {
                Some([one]) => one.kind(),
                Some([]) | None => "none",
                Some(_) => "batch",
            };
            let applied = self.machine.apply(*index, batch.as_ref());
            if !applied.refused.is_empty() {
                refused.insert(*index, applied.refused);
            }
            let updates = applied.updates;
            hub.metrics().compiled(kind, started.elapsed());
            let now = Instant::now();
            let digests = self.record(&updates);
            if batch.is_some() {
                hub.metrics().stage("compile", now - started);
                hub.metrics().stage("encode", now.elapsed());
            }
            self.view.set_revision(self.machine.applied());
            let changes: Vec<_> = updates
                .iter()
                .zip(digests)
                .map(|(u, digest)| (&u.node, u.to_version, digest))
                .collect();
            hub.applied(&self.view, *index, &changes, now);
            debug!(revision = index, kind, nodes = updates.len(), "applied");
        }
        hub.metrics().nodes(self.engine().node_count());
        hub.metrics()
            .history_entries(self.view.history().updates_held());
        let last = self.revision();
        hub.settled(last);
        (last, refused)
    }

    /// Apply the membership change committed at `index`: a revision that changes no slice;
    /// the machine keeps the addresses of replicas added and the ids of those removed.
    pub fn apply_change(&mut self, hub: &impl Readers, index: u64, change: Option<&Change>) -> u64 {
        self.machine.apply_change(index, change);
        let last = self.revision();
        self.view.set_revision(last);
        hub.applied(&self.view, index, &[], Instant::now());
        if let Some(c) = change {
            info!(revision = index, replica = c.id, kind = ?c.kind, address = %c.address, "membership changed");
        }
        hub.settled(last);
        last
    }

    /// A snapshot of the state machine when `every` entries were applied since the last one:
    /// `(index, bytes)`, to store in the log (which is then compacted behind it).
    pub fn snapshot_if_due(&mut self, every: u64) -> Option<(u64, Vec<u8>)> {
        if !self.machine.snapshot_due(every) {
            return None;
        }
        let index = self.machine.applied();
        Some((index, self.machine.snapshot()))
    }

    /// Record what one revision changed in the view (each update encoded once); the digest
    /// of each node's new slice, in the order of `updates`.
    fn record(&mut self, updates: &[NodeUpdate]) -> Vec<Digest> {
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
            self.view.history_mut().push(
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
            self.view.set_desired(&u.node, u.to_version, digest);
            digests.push(digest);
        }
        digests
    }
}
