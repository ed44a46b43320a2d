//! The replica's metrics: where the Raft group stands and how fast proposals apply.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub struct Raft {
    term: Gauge,
    commit: Gauge,
    applied: Gauge,
    leader_changes: Counter,
    proposal_applied: Histogram,
    snapshot_bytes: Gauge,
    snapshots: Counter,
    sent: Counter,
    dropped: Counter,
}

impl Raft {
    pub fn register(registry: &mut Registry) -> Raft {
        let r = Raft {
            term: Gauge::default(),
            commit: Gauge::default(),
            applied: Gauge::default(),
            leader_changes: Counter::default(),
            // 0.5 ms .. ~16 s
            proposal_applied: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            snapshot_bytes: Gauge::default(),
            snapshots: Counter::default(),
            sent: Counter::default(),
            dropped: Counter::default(),
        };
        registry.register("raft_term", "This replica's Raft term", r.term.clone());
        registry.register(
            "raft_commit_index",
            "The highest log index known committed",
            r.commit.clone(),
        );
        registry.register(
            "raft_applied_index",
            "The last log index applied to the state machine here (the latest revision served)",
            r.applied.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Times this replica became or stopped being the leader",
            r.leader_changes.clone(),
        );
        registry.register(
            "raft_proposal_applied_seconds",
            "From a proposal on the leader to its entry applied on the leader",
            r.proposal_applied.clone(),
        );
        registry.register(
            "raft_snapshot_bytes",
            "Size of the latest state-machine snapshot stored",
            r.snapshot_bytes.clone(),
        );
        registry.register(
            "raft_snapshots",
            "State-machine snapshots stored (the log compacted behind each)",
            r.snapshots.clone(),
        );
        registry.register(
            "raft_messages_sent",
            "Raft messages delivered to peers",
            r.sent.clone(),
        );
        registry.register(
            "raft_messages_dropped",
            "Raft messages not delivered (peer unreachable or queue full); Raft resends what matters",
            r.dropped.clone(),
        );
        r
    }
}

impl super::Metrics {
    pub fn raft(&self, term: u64, commit: u64) {
        self.0.raft.term.set(term as i64);
        self.0.raft.commit.set(commit as i64);
    }

    pub fn raft_applied(&self, index: u64) {
        self.0.raft.applied.set(index as i64);
    }

    pub fn leader_change(&self) {
        self.0.raft.leader_changes.inc();
    }

    pub fn proposal_applied(&self, took: Duration) {
        self.0.raft.proposal_applied.observe(took.as_secs_f64());
    }

    pub fn raft_snapshot(&self, bytes: usize) {
        self.0.raft.snapshots.inc();
        self.0.raft.snapshot_bytes.set(bytes as i64);
    }

    pub fn raft_sent(&self, n: usize) {
        self.0.raft.sent.inc_by(n as u64);
    }

    pub fn raft_dropped(&self) {
        self.raft_dropped_n(1);
    }

    pub fn raft_dropped_n(&self, n: usize) {
        self.0.raft.dropped.inc_by(n as u64);
    }
}
