//! Metrics of every replica serving agents: how streams resume when agents move between
//! replicas, whether this replica refuses agents (cut off from its group), and how stale its
//! copy of the other replicas' acks is.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabel {
    by: &'static str,
}

pub struct Failover {
    resumes: Family<ByLabel, Counter>,
    resume_bytes: Family<ByLabel, Counter>,
    refusing: Gauge,
    shed: Counter,
    moved: Counter,
    parked: Counter,
    staleness: Histogram,
    diverged: Counter,
}

impl Failover {
    pub fn register(registry: &mut Registry) -> Failover {
        let f = Failover {
            resumes: Family::default(),
            resume_bytes: Family::default(),
            refusing: Gauge::default(),
            shed: Counter::default(),
            moved: Counter::default(),
            parked: Counter::default(),
            // 1 ms .. ~32 s
            staleness: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            diverged: Counter::default(),
        };
        registry.register(
            "sync_resumes",
            "Streams of agents that already held a version, by what brought them up to date: delta (an update from their version), current (nothing to send), snapshot",
            f.resumes.clone(),
        );
        registry.register(
            "sync_resume_bytes",
            "Bytes of the first message sent on resumed streams (what brought an agent that already held a version up to date), by how",
            f.resume_bytes.clone(),
        );
        registry.register(
            "sync_refusing_agents",
            "1 while this replica refuses agent streams because it is cut off from its group (agents move to another replica)",
            f.refusing.clone(),
        );
        registry.register(
            "sync_streams_shed",
            "Agent streams ended because this replica was cut off from its group",
            f.shed.clone(),
        );
        registry.register(
            "sync_streams_moved",
            "Agent streams ended to send the agent to another replica, because this one held more than its share of the agents",
            f.moved.clone(),
        );
        registry.register(
            "sync_streams_parked",
            "Agent streams that waited for this replica to apply the version the agent already held",
            f.parked.clone(),
        );
        registry.register(
            "rollout_peer_ack_staleness_seconds",
            "From an ack recorded on another replica to this replica merging it",
            f.staleness.clone(),
        );
        registry.register(
            "rollout_peer_ack_diverged",
            "Acks from another replica naming a digest this replica computed differently for that version (the replicas diverge)",
            f.diverged.clone(),
        );
        f
    }
}

impl super::Metrics {
    /// A stream of an agent that held a version was brought up to date `by`, with a
    /// message of `bytes`.
    pub fn resumed(&self, by: &'static str, bytes: usize) {
        self.0.failover.resumes.get_or_create(&ByLabel { by }).inc();
        self.0
            .failover
            .resume_bytes
            .get_or_create(&ByLabel { by })
            .inc_by(bytes as u64);
    }

    pub fn refusing_agents(&self, refusing: bool) {
        self.0.failover.refusing.set(i64::from(refusing));
    }

    pub fn streams_shed(&self) {
        self.0.failover.shed.inc();
    }

    pub fn stream_moved(&self) {
        self.0.failover.moved.inc();
    }

    pub fn stream_parked(&self) {
        self.0.failover.parked.inc();
    }

    pub fn peer_ack_staleness(&self, ms: u64) {
        self.0.failover.staleness.observe(ms as f64 / 1000.0);
    }

    pub fn peer_ack_diverged(&self) {
        self.0.failover.diverged.inc();
    }
}
