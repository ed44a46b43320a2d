//! Prometheus metrics of the controller, served as OpenMetrics text on `--metrics-listen`
//! (`/metrics`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod failover;
mod kube;

pub use kube::STATES as KUBE_STATES;
mod lint;
mod raft;
mod stages;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabel {
    command: &'static str,
}

struct Inner {
    registry: Registry,
    streams: Gauge,
    sent_messages: Family<KindLabel, Counter>,
    sent_bytes: Family<KindLabel, Counter>,
    acks: Counter,
    acks_diverged: Counter,
    nacks: Counter,
    refused_streams: Counter,
    realization: Histogram,
    compile: Family<CommandLabel, Histogram>,
    full_compile: Gauge<f64, std::sync::atomic::AtomicU64>,
    revision: Gauge,
    realized: Gauge,
    lagging: Gauge,
    nodes: Gauge,
    rejected: Gauge,
    narrowed: Gauge,
    history: Gauge,
    failed_closed: Gauge,
    degraded: Gauge,
    source_healthy: Gauge,
    source_failures: Counter,
    files_parsed: Counter,
    source_waiting: Gauge,
    connections: Gauge,
    insecure: Gauge,
    connections_evicted: Counter,
    connections_refused: Counter,
    connections_idle_closed: Counter,
    handshake_failures: Family<ReasonLabel, Counter>,
    raft: raft::Raft,
    failover: failover::Failover,
    stages: stages::Stages,
    lint: lint::Lint,
    kube: kube::Kube,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Cheap to clone; every clone updates the same metrics.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("palisade");
        let inner = Inner {
            streams: Gauge::default(),
            sent_messages: Family::default(),
            sent_bytes: Family::default(),
            acks: Counter::default(),
            acks_diverged: Counter::default(),
            nacks: Counter::default(),
            refused_streams: Counter::default(),
            // 1 ms .. ~65 s
            realization: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 µs .. ~65 ms
            compile: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-6, 2.0, 17))
            }),
            full_compile: Gauge::default(),
            revision: Gauge::default(),
            realized: Gauge::default(),
            lagging: Gauge::default(),
            nodes: Gauge::default(),
            rejected: Gauge::default(),
            narrowed: Gauge::default(),
            history: Gauge::default(),
            failed_closed: Gauge::default(),
            degraded: Gauge::default(),
            source_healthy: Gauge::default(),
            source_failures: Counter::default(),
            files_parsed: Counter::default(),
            source_waiting: Gauge::default(),
            connections: Gauge::default(),
            insecure: Gauge::default(),
            connections_evicted: Counter::default(),
            connections_refused: Counter::default(),
            connections_idle_closed: Counter::default(),
            handshake_failures: Family::default(),
            raft: raft::Raft::register(&mut registry),
            failover: failover::Failover::register(&mut registry),
            stages: stages::Stages::register(&mut registry),
            lint: lint::Lint::register(&mut registry),
            kube: kube::Kube::register(&mut registry),
            registry: Registry::default(),
        };
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The controller's version (always 1)",
            build_info,
        );
        registry.register(
            "connections",
            "Open connections on the gRPC listener (handshaking or established)",
            inner.connections.clone(),
        );
        registry.register(
            "connections_evicted",
            "Connections still in their TLS handshake dropped to make room for newer ones",
            inner.connections_evicted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at a connection limit with no handshake to evict",
            inner.connections_refused.clone(),
        );
        registry.register(
            "connections_idle_closed",
            "Connections closed after --idle-timeout without a request or stream in flight",
            inner.connections_idle_closed.clone(),
        );
        registry.register(
            "connection_failures",
            "Connections dropped before serving, by reason (timeout, evicted, handshake, refused, accept)",
            inner.handshake_failures.clone(),
        );
        inner.source_healthy.set(1);
        registry.register(
            "source_healthy",
            "1 while the manifest source records and applies changes; 0 while it cannot (changes are retried, enforcement stays)",
            inner.source_healthy.clone(),
        );
        registry.register(
            "source_failures",
            "Times the manifest source could not record or apply changes",
            inner.source_failures.clone(),
        );
        registry.register(
            "manifest_files_parsed",
            "Manifest files read and parsed (content whose bytes were parsed last time is not parsed again)",
            inner.files_parsed.clone(),
        );
        registry.register(
            "source_waiting_files",
            "Manifest files changed and not applied yet (being written, or holding removals)",
            inner.source_waiting.clone(),
        );
        registry.register(
            "sync_streams",
            "Agent sync streams connected to this replica",
            inner.streams.clone(),
        );
        registry.register(
            "sync_messages_sent",
            "Messages sent to agents, by kind (snapshot, update, keepalive)",
            inner.sent_messages.clone(),
        );
        registry.register(
            "sync_bytes_sent",
            "Encoded bytes sent to agents, by kind",
            inner.sent_bytes.clone(),
        );
        registry.register("acks", "Acknowledgements recorded", inner.acks.clone());
        registry.register(
            "acks_diverged",
            "Acks whose digest disagreed with what was sent (answered with a snapshot)",
            inner.acks_diverged.clone(),
        );
        registry.register(
            "nacks",
            "Versions agents could not apply",
            inner.nacks.clone(),
        );
        registry.register(
            "sync_streams_refused",
            "Sync streams refused (bad Hello, wrong node for the certificate)",
            inner.refused_streams.clone(),
        );
        registry.register(
            "revision_realization_seconds",
            "Time from a revision's commit to every affected node acking it",
            inner.realization.clone(),
        );
        registry.register(
            "compile_seconds",
            "Time to apply one command to the policy engine, by command",
            inner.compile.clone(),
        );
        registry.register(
            "full_compile_seconds",
            "Duration of the last full compile",
            inner.full_compile.clone(),
        );
        registry.register(
            "revision",
            "Latest committed revision",
            inner.revision.clone(),
        );
        registry.register(
            "insecure",
            "1 while this controller serves plaintext without authentication (--insecure): anyone reaching its port may apply policies",
            inner.insecure.clone(),
        );
        registry.register(
            "realized_revision",
            "Every revision up to this one is realized",
            inner.realized.clone(),
        );
        registry.register(
            "nodes_lagging",
            "Nodes with unacknowledged versions",
            inner.lagging.clone(),
        );
        registry.register(
            "nodes",
            "Nodes known to the controller",
            inner.nodes.clone(),
        );
        registry.register(
            "rejected_objects",
            "Objects rejected as invalid",
            inner.rejected.clone(),
        );
        registry.register(
            "narrowed_objects",
            "Objects in force that hold fields Palisade's schema lacks (a newer Kubernetes'), \
             narrowed or ignored as `palisadectl rejected` shows",
            inner.narrowed.clone(),
        );
        registry.register(
            "history_updates",
            "Updates held in the per-node histories",
            inner.history.clone(),
        );
        registry.register(
            "failed_closed_endpoints",
            "Endpoints whose node's dataplane fails them closed because the slice does not fit its maps",
            inner.failed_closed.clone(),
        );
        registry.register(
            "nodes_degraded",
            "Nodes failing some endpoints closed for lack of map capacity",
            inner.degraded.clone(),
        );
        Metrics(Arc::new(Inner { registry, ..inner }))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.0.registry)
            .expect("writing to a String");
        out
    }

    /// Say whether authentication is off (`--insecure`).
    pub fn set_insecure(&self, insecure: bool) {
        self.0.insecure.set(i64::from(insecure));
    }

    pub fn stream_opened(&self) {
        self.0.streams.inc();
    }

    pub fn stream_closed(&self) {
        self.0.streams.dec();
    }

    pub fn stream_refused(&self) {
        self.0.refused_streams.inc();
    }

    pub fn sent(&self, kind: &'static str, bytes: usize) {
        self.0
            .sent_messages
            .get_or_create(&KindLabel { kind })
            .inc();
        self.0
            .sent_bytes
            .get_or_create(&KindLabel { kind })
            .inc_by(bytes as u64);
    }

    pub fn ack(&self, recorded: bool) {
        if recorded {
            self.0.acks.inc();
        } else {
            self.0.acks_diverged.inc();
        }
    }

    pub fn nack(&self) {
        self.0.nacks.inc();
    }

    pub fn realized(&self, latency: Duration) {
        self.0.realization.observe(latency.as_secs_f64());
    }

    pub fn realized_revision(&self, through: u64, lagging: usize) {
        self.0.realized.set(through as i64);
        self.0.lagging.set(lagging as i64);
    }

    pub fn compiled(&self, command: &'static str, took: Duration) {
        self.0
            .compile
            .get_or_create(&CommandLabel { command })
            .observe(took.as_secs_f64());
    }

    pub fn full_compile(&self, took: Duration, nodes: usize) {
        self.0.full_compile.set(took.as_secs_f64());
        self.0.nodes.set(nodes as i64);
    }

    pub fn nodes(&self, nodes: usize) {
        self.0.nodes.set(nodes as i64);
    }

    pub fn revision(&self, revision: u64) {
        self.0.revision.set(revision as i64);
    }

    pub fn rejected(&self, n: usize) {
        self.0.rejected.set(n as i64);
    }

    pub fn narrowed(&self, n: usize) {
        self.0.narrowed.set(n as i64);
    }

    pub fn failed_closed(&self, endpoints: usize, nodes: usize) {
        self.0.failed_closed.set(endpoints as i64);
        self.0.degraded.set(nodes as i64);
    }

    pub fn connections(&self, open: usize) {
        self.0.connections.set(open as i64);
    }

    pub fn connection_evicted(&self) {
        self.0.connections_evicted.inc();
    }

    pub fn connection_refused(&self) {
        self.0.connections_refused.inc();
    }

    pub fn connection_idle_closed(&self) {
        self.0.connections_idle_closed.inc();
    }

    pub fn tls_failure(&self, reason: &'static str) {
        self.0
            .handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn source_healthy(&self, healthy: bool) {
        self.0.source_healthy.set(i64::from(healthy));
    }

    /// Manifest files parsed since the last call said (a file whose bytes did not change
    /// is not parsed again).
    pub fn files_parsed(&self, n: u64) {
        self.0.files_parsed.inc_by(n);
    }

    pub fn source_failure(&self) {
        self.0.source_failures.inc();
    }

    pub fn source_waiting(&self, files: usize) {
        self.0.source_waiting.set(files as i64);
    }

    pub fn history_entries(&self, n: usize) {
        self.0.history.set(n as i64);
    }
}
