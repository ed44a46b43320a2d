//! What the sources report besides what they propose: the objects each could not take
//! (`palisadectl rejected`, the `palisade_rejected_objects` gauge) and where each watch of
//! the Kubernetes source stands (`palisadectl replicas`). Written by the sources on the
//! leader, read by introspection and the Raft service's status; each its own lock, a leaf
//! (nothing else is taken while one is held). Owned here so that neither the applied state
//! nor the replication layer depends on a source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;

pub mod watches;

pub use watches::Board;

/// An object or path a source could not take, as introspection reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub source: String,
    pub kind: String,
    pub object: String,
    pub errors: Vec<String>,
    /// True: the object is in force, narrowed as `errors` says (it holds fields Palisade's
    /// schema lacks); false: rejected, its last valid version stays.
    pub applied: bool,
}

pub struct Reports {
    /// What each source (`manifests`, `kubernetes`) could not take, by source.
    rejected: Mutex<BTreeMap<&'static str, Vec<Rejected>>>,
    /// The Kubernetes source's watches, while this replica runs them.
    pub kube: Arc<Board>,
    metrics: Metrics,
}

impl Reports {
    pub fn new(metrics: Metrics) -> Reports {
        Reports {
            rejected: Mutex::default(),
            kube: Arc::default(),
            metrics,
        }
    }

    /// What `source` cannot take now (replacing what it said before).
    pub fn set_rejected(&self, source: &'static str, rejected: Vec<Rejected>) {
        let mut all = self.rejected.lock().expect("rejected lock poisoned");
        all.insert(source, rejected);
        let count = all.values().map(Vec::len).sum::<usize>();
        let narrowed = all.values().flatten().filter(|r| r.applied).count();
        self.metrics.rejected(count - narrowed);
        self.metrics.narrowed(narrowed);
    }

    /// What `source` said it cannot take, last (`None`: it has said nothing).
    pub fn rejected_by(&self, source: &str) -> Option<Vec<Rejected>> {
        let all = self.rejected.lock().expect("rejected lock poisoned");
        all.get(source).cloned()
    }

    /// What every source cannot take now, by source.
    pub fn rejected(&self) -> Vec<Rejected> {
        let all = self.rejected.lock().expect("rejected lock poisoned");
        all.values().flatten().cloned().collect()
    }
}
