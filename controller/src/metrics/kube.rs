//! Metrics of the Kubernetes source: where each watch stands, what it received, what it
//! ignored (updates that change nothing Palisade uses), and how long a change takes from the
//! API server's event to its revision being committed and applied.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    kind: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    kind: &'static str,
    r#type: &'static str,
}

/// The states a watch can be in (one of them is 1 per kind).
pub const STATES: [&str; 5] = [
    "listing",
    "watching",
    "backing_off",
    "reconnecting",
    "stopped",
];

pub struct Kube {
    state: Family<StateLabel, Gauge>,
    events: Family<EventLabel, Counter>,
    ignored: Family<KindLabel, Counter>,
    errors: Family<KindLabel, Counter>,
    relists: Family<KindLabel, Counter>,
    objects: Family<KindLabel, Gauge>,
    last_event: Family<KindLabel, Gauge>,
    batches: Counter,
    commit: Histogram,
}

impl Kube {
    pub fn register(registry: &mut Registry) -> Kube {
        let k = Kube {
            state: Family::default(),
            events: Family::default(),
            ignored: Family::default(),
            errors: Family::default(),
            relists: Family::default(),
            objects: Family::default(),
            last_event: Family::default(),
            batches: Counter::default(),
            // 1 ms .. ~65 s
            commit: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        };
        registry.register(
            "kube_watch_state",
            "1 for the state each Kubernetes watch is in (listing, watching, backing_off, reconnecting: a back-off ended and the API server has not answered yet, stopped: this replica does not lead)",
            k.state.clone(),
        );
        registry.register(
            "kube_events",
            "Objects received from the Kubernetes API server, by kind and type (listed: in a complete list; applied: created or changed; deleted)",
            k.events.clone(),
        );
        registry.register(
            "kube_updates_ignored",
            "Updates from the Kubernetes API server that changed nothing Palisade uses (status conditions, annotations): nothing proposed",
            k.ignored.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Errors listing or watching (each is followed by a back-off)",
            k.errors.clone(),
        );
        registry.register(
            "kube_relists",
            "Complete lists of a kind after the first since this replica began leading (after 410 Gone or a watch that could not resume)",
            k.relists.clone(),
        );
        registry.register(
            "kube_objects",
            "Objects of each kind the API server holds, as the source last saw them",
            k.objects.clone(),
        );
        registry.register(
            "kube_last_event_timestamp_seconds",
            "When the last object of each kind was received, or its last complete list (Unix time)",
            k.last_event.clone(),
        );
        registry.register(
            "kube_batches",
            "Batches of changes from the Kubernetes source committed and applied",
            k.batches.clone(),
        );
        registry.register(
            "kube_event_to_commit_seconds",
            "From the first change of a batch received from the API server to its revision applied here (includes the batching delay)",
            k.commit.clone(),
        );
        k
    }
}

fn name(kind: palisade_policy::k8s::Kind) -> &'static str {
    use palisade_policy::k8s::Kind;
    match kind {
        Kind::Namespace => "Namespace",
        Kind::Pod => "Pod",
        Kind::NetworkPolicy => "NetworkPolicy",
    }
}

impl super::Metrics {
    /// Watch of `kind` is now in `state` (one of [`STATES`]).
    pub fn kube_state(&self, kind: palisade_policy::k8s::Kind, state: &'static str) {
        for s in STATES {
            self.0
                .kube
                .state
                .get_or_create(&StateLabel {
                    kind: name(kind),
                    state: s,
                })
                .set(i64::from(s == state));
        }
    }

    pub fn kube_event(&self, kind: palisade_policy::k8s::Kind, r#type: &'static str, n: u64) {
        let kind = name(kind);
        self.0
            .kube
            .events
            .get_or_create(&EventLabel { kind, r#type })
            .inc_by(n);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.0
            .kube
            .last_event
            .get_or_create(&KindLabel { kind })
            .set(now);
    }

    pub fn kube_ignored(&self, kind: palisade_policy::k8s::Kind) {
        let kind = name(kind);
        self.0.kube.ignored.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn kube_error(&self, kind: palisade_policy::k8s::Kind) {
        let kind = name(kind);
        self.0.kube.errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn kube_relisted(&self, kind: palisade_policy::k8s::Kind, objects: usize) {
        let kind = name(kind);
        self.0.kube.relists.get_or_create(&KindLabel { kind }).inc();
        self.kube_objects_of(kind, objects);
    }

    pub fn kube_objects(&self, kind: palisade_policy::k8s::Kind, objects: usize) {
        self.kube_objects_of(name(kind), objects);
    }

    fn kube_objects_of(&self, kind: &'static str, objects: usize) {
        self.0
            .kube
            .objects
            .get_or_create(&KindLabel { kind })
            .set(objects as i64);
    }

    /// A batch was committed and applied, `seconds` after its first change arrived.
    pub fn kube_batch(&self, seconds: f64) {
        self.0.kube.batches.inc();
        self.0.kube.commit.observe(seconds);
    }
}
