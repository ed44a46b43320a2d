//! What the controller's parts share: the applied state as readers see it (a [`View`]
//! per revision, published by the apply thread and loaded without a lock), a way to ask
//! the apply thread for more ([`Hub::ask`]: slices, the engine, owners), each node's watch
//! (streams wake on a change of their node only), and what agents and peers say of each
//! node ([`Progress`]: the rollout and the peers' tables, its own lock, never held by the
//! writer of the applied state while it applies).
//! The writer is [`crate::applied::State`], owned by the apply thread; nothing here holds
//! it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use palisade_policy::engine::NodeSummary;
use palisade_policy::model::Name;
use palisade_policy::Digest;
use tokio::sync::watch;

use crate::acks::{self, Peers, Table};
use crate::applied::{Readers, State};
use crate::metrics::Metrics;
use crate::rollout::{AckOutcome, AgentInfo, PeerAck, Rollout};
use crate::view::View;

/// A question for the apply thread, answered between revisions with the applied state.
pub type Read = Box<dyn FnOnce(&State) + Send>;

/// The apply thread did not answer: it is gone (the replica is shutting down), or the
/// question panicked (a bug, logged there).
#[derive(Debug, thiserror::Error)]
#[error("the applied state could not answer (the replica is shutting down, or the question failed: its log says which)")]
pub struct Gone;

impl From<Gone> for tonic::Status {
    fn from(g: Gone) -> tonic::Status {
        tonic::Status::unavailable(g.to_string())
    }
}

/// What agents and peers say of each node: the rollout state and the peers' tables. Its own
/// lock, so an ack (thousands a second at scale) waits for no apply and no reader.
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

pub struct Hub {
    /// The applied state as of the last revision published (swapped, never locked).
    view: ArcSwap<View>,
    /// Questions for the apply thread.
    reads: crossbeam_channel::Sender<Read>,
    /// Each watched node's latest version (streams wait on it). Sent to by the writer after
    /// it published the revision; its own lock, held only to subscribe or send.
    watchers: Mutex<HashMap<Name, watch::Sender<u64>>>,
    progress: Mutex<Progress>,
    revision: watch::Sender<u64>,
    realized: watch::Sender<u64>,
    /// What this replica's own streams saw, for its peers to merge. Its own lock (taken
    /// after the progress's, never before), so answering a peer waits for no apply: peers
    /// ask on the same async workers that carry Raft's messages.
    acks: Mutex<Table>,
    /// The sequence number of that table (peers wait on it).
    acks_seq: watch::Sender<u64>,
    pub metrics: Metrics,
}

/// Where the apply thread hears questions ([`Hub::ask`]); whoever owns the [`State`]
/// answers them with [`Reads::answer`].
pub struct Reads(crossbeam_channel::Receiver<Read>);

impl Reads {
    /// The channel questions arrive on (to wait on it with others).
    pub fn receiver(&self) -> &crossbeam_channel::Receiver<Read> {
        &self.0
    }

    /// Answer every question waiting, from `state`.
    pub fn answer(&self, state: &State) {
        while let Ok(read) = self.0.try_recv() {
            answer(read, state);
        }
    }
}

/// Answer one question from `state`. A question that panics (a bug in a reader) is answered
/// with nothing (its asker hears [`Gone`]) and takes nothing else down: the state is only
/// read, so it stays whole.
pub fn answer(read: Read, state: &State) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(state))).is_err() {
        tracing::error!("a reader of the applied state panicked (a bug); it got no answer");
    }
}

impl Hub {
    /// The hub of replica `replica`, and where its questions for the owner of the applied
    /// state arrive. The view is empty until [`State::new`] publishes one.
    pub fn new(replica: u64, metrics: Metrics) -> (Hub, Reads) {
        // A new epoch per run: peers holding an older run's table start over.
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        let (reads, questions) = crossbeam_channel::unbounded();
        let hub = Hub {
            view: ArcSwap::from_pointee(View::new(crate::history::Limits::default())),
            reads,
            watchers: Mutex::new(HashMap::new()),
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
        (hub, Reads(questions))
    }

    /// The applied state as of the latest revision published: immutable, whatever is applied
    /// after (load it again for a newer one).
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Ask the apply thread: `f` runs there between two revisions, with the applied state,
    /// and its answer comes back here. For what a [`View`] does not hold (slices, the engine,
    /// owners); it waits behind the revision being applied, never on a lock.
    pub async fn ask<R: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> R + Send + 'static,
    ) -> Result<R, Gone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reads
            .send(Box::new(move |st: &State| {
                let _ = tx.send(f(st));
            }))
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// [`Hub::ask`], waiting on this thread: for threads that may block (the blocking pool,
    /// tests), never an async worker.
    pub fn ask_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> R + Send + 'static,
    ) -> Result<R, Gone> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.reads
            .send(Box::new(move |st: &State| {
                let _ = tx.send(f(st));
            }))
            .map_err(|_| Gone)?;
        rx.recv().map_err(|_| Gone)
    }

    /// Read what agents and peers said (nothing in `f` can await).
    pub fn progress<R>(&self, f: impl FnOnce(&Progress) -> R) -> R {
        f(&self.lock_progress())
    }

    fn lock_progress(&self) -> MutexGuard<'_, Progress> {
        // A panic while holding the lock would leave the rollout half-updated; there is
        // nothing sensible to continue with, so propagate it.
        self.progress.lock().expect("rollout lock poisoned")
    }

    fn lock_watchers(&self) -> MutexGuard<'_, HashMap<Name, watch::Sender<u64>>> {
        self.watchers.lock().expect("node watch lock poisoned")
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
        let mut watchers = self.lock_watchers();
        // Read under the watchers' lock: the writer publishes before it sends, so a change
        // published after this read is sent to the watch made here.
        let version = self.view.load().desired(node).0;
        watchers
            .entry(node.clone())
            .or_insert_with(|| watch::channel(version).0)
            .subscribe()
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
        // The view is asked only when the stream did not say what it sent (a Hello): a
        // version's digest never changes, so any view that knows it will do.
        let mut p = self.lock_progress();
        let expected = sent.or_else(|| self.view.load().digest_at(node, version));
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
        // The view is loaded under the progress's lock: a version this replica has not
        // applied yet must be held as ahead (and checked when applied), never taken
        // unchecked because it was applied between reading the digests and merging. The
        // writer publishes a revision before it tells the rollout, so a version the rollout
        // holds as desired is in this view. Merges run on the blocking pool.
        let mut p = self.lock_progress();
        let p = &mut *p;
        let st = self.view.load();
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

/// What the writer ([`State`]) tells the readers, per revision: publish the view and tell the
/// rollout (in one section of the progress lock), then wake the nodes' streams.
impl Readers for Hub {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn applied(&self, view: &View, index: u64, changes: &[(&Name, u64, Digest)], now: Instant) {
        {
            // Published under the progress lock, with the rollout told in the same section:
            // whoever takes the lock sees both or neither. An agent acks only what a stream
            // planned from a view, so its ack (taken under this lock) never finds a version
            // the rollout has not heard of yet; and a merge that loads the view under it
            // finds every version the rollout holds as desired.
            let mut p = self.lock_progress();
            self.view.store(Arc::new(view.clone()));
            for (node, version, digest) in changes {
                p.rollout.changed(node, *version, *digest, now);
            }
            p.rollout.committed(index, now);
        }
        let watchers = self.lock_watchers();
        for (node, version, _) in changes {
            if let Some(w) = watchers.get(*node) {
                w.send_replace(*version);
            }
        }
    }

    fn restored(&self, view: &View, nodes: &[NodeSummary]) {
        let now = Instant::now();
        {
            // As in `applied`: the view and the rollout change in one section.
            let mut p = self.lock_progress();
            self.view.store(Arc::new(view.clone()));
            for n in nodes {
                if p.rollout.node(&n.node).map(|r| r.desired_version) != Some(n.version) {
                    p.rollout.known(&n.node, n.version, n.digest, now);
                }
            }
            p.rollout.committed(view.revision(), now);
        }
        for (node, w) in self.lock_watchers().iter() {
            w.send_replace(view.desired(node).0);
        }
    }

    fn settled(&self, revision: u64) {
        self.observe_realized(&mut self.lock_progress());
        if *self.revision.borrow() == revision {
            return;
        }
        self.revision.send_replace(revision);
        self.metrics.revision(revision);
    }
}

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;
