//! Where each watch of the Kubernetes source stands, for `palisadectl replicas` (through
//! `ReplicaStatus.watches`) and the metrics. Written by the watch tasks, read by
//! introspection; its own lock, never held across I/O.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use palisade_policy::k8s::Kind;
use palisade_proto::v1::WatchStatus;

use crate::metrics::Metrics;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum State {
    Listing,
    Watching,
    BackingOff {
        until: Instant,
    },
    /// A back-off ended and the watch resumes; the API server has not answered yet.
    Reconnecting,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Listing => "listing",
            State::Watching => "watching",
            State::BackingOff { .. } => "backing-off",
            State::Reconnecting => "reconnecting",
        }
    }

    fn metric(self) -> &'static str {
        match self {
            State::Listing => "listing",
            State::Watching => "watching",
            State::BackingOff { .. } => "backing_off",
            State::Reconnecting => "reconnecting",
        }
    }
}

#[derive(Clone, Debug)]
struct Watch {
    state: State,
    since: Instant,
    last_event: Option<Instant>,
    error: Option<String>,
    objects: u64,
    rejected: u64,
    relists: u64,
}

/// Every watch's state; empty while this replica does not run the source.
#[derive(Default)]
pub struct Board(Mutex<BTreeMap<Kind, Watch>>);

impl Board {
    fn with(&self, kind: Kind, f: impl FnOnce(&mut Watch)) {
        let mut b = self.0.lock().expect("watch board lock");
        let w = b.entry(kind).or_insert_with(|| Watch {
            state: State::Listing,
            since: Instant::now(),
            last_event: None,
            error: None,
            objects: 0,
            rejected: 0,
            relists: 0,
        });
        f(w);
    }

    /// `kind`'s watch is now in `state` (an error says why, when backing off or listing again).
    pub fn set(&self, metrics: &Metrics, kind: Kind, state: State, error: Option<String>) {
        metrics.kube_state(kind, state.metric());
        self.with(kind, |w| {
            if w.state.name() != state.name() {
                w.since = Instant::now();
            }
            w.state = state;
            if error.is_some() || state == State::Watching {
                w.error = error;
            }
        });
    }

    /// The API server answered for `kind`: a watch reconnecting is watching (whether it was).
    pub fn answered(&self, metrics: &Metrics, kind: Kind) -> bool {
        // Looked at and changed under one lock: a watch that failed again meanwhile stays
        // backing off.
        let mut b = self.0.lock().expect("watch board lock");
        let Some(w) = b.get_mut(&kind).filter(|w| w.state == State::Reconnecting) else {
            return false;
        };
        w.state = State::Watching;
        w.since = Instant::now();
        w.error = None;
        metrics.kube_state(kind, State::Watching.metric());
        true
    }

    /// Something of `kind` arrived.
    pub fn event(&self, kind: Kind) {
        self.with(kind, |w| w.last_event = Some(Instant::now()));
    }

    /// A complete list of `kind` (`relist`: not the first since this replica began leading).
    pub fn listed(&self, kind: Kind, objects: usize, rejected: usize, relist: bool) {
        self.with(kind, |w| {
            w.objects = objects as u64;
            w.rejected = rejected as u64;
            w.relists += u64::from(relist);
        });
    }

    pub fn counts(&self, kind: Kind, objects: usize, rejected: usize) {
        self.with(kind, |w| {
            w.objects = objects as u64;
            w.rejected = rejected as u64;
        });
    }

    /// This replica stopped running the source.
    pub fn clear(&self, metrics: &Metrics) {
        let mut b = self.0.lock().expect("watch board lock");
        for kind in b.keys() {
            metrics.kube_state(*kind, "stopped");
        }
        b.clear();
    }

    pub fn to_pb(&self) -> Vec<WatchStatus> {
        let now = Instant::now();
        let ms = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        self.0
            .lock()
            .expect("watch board lock")
            .iter()
            .map(|(kind, w)| WatchStatus {
                kind: kind.to_string(),
                state: w.state.name().to_string(),
                since_ms: ms(w.since),
                last_event_ms: w.last_event.map(ms),
                error: w.error.clone().unwrap_or_default(),
                retry_in_ms: match w.state {
                    State::BackingOff { until } => {
                        until.saturating_duration_since(now).as_millis() as u64
                    }
                    _ => 0,
                },
                objects: w.objects,
                rejected: w.rejected,
                relists: w.relists,
            })
            .collect()
    }
}
