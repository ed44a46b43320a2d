//! The emulated etcd: objects by resource and key, one global resourceVersion, and a bounded
//! history of changes per resource that watches replay from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

/// The resources served, as `Api::all` reaches them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Namespaces,
    Pods,
    NetworkPolicies,
}

impl Resource {
    pub const ALL: [Resource; 3] = [
        Resource::Namespaces,
        Resource::Pods,
        Resource::NetworkPolicies,
    ];

    /// The collection's path (all namespaces).
    pub fn path(self) -> &'static str {
        match self {
            Resource::Namespaces => "/api/v1/namespaces",
            Resource::Pods => "/api/v1/pods",
            Resource::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Namespaces => "Namespace",
            Resource::Pods => "Pod",
            Resource::NetworkPolicies => "NetworkPolicy",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::NetworkPolicies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One change, as a watch sends it: its resourceVersion and the encoded event line.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub line: Bytes,
}

/// One resource's objects and recent changes.
struct Collection {
    /// By `namespace/name` (a namespace's name): the object encoded, with its resourceVersion.
    objects: BTreeMap<String, (u64, Bytes)>,
    history: VecDeque<Change>,
    /// Watches from a resourceVersion below this get `410 Gone` (the history before it is gone).
    oldest: u64,
    feed: broadcast::Sender<Change>,
}

pub struct Store {
    rv: u64,
    collections: Vec<Collection>,
    /// Changes kept per resource for watches to replay.
    keep: usize,
}

/// The key of an object: `namespace/name`, or the name of a cluster-scoped one.
pub fn key_of(object: &Value) -> Option<String> {
    let meta = object.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    Some(match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    })
}

/// One watch event line (newline-terminated JSON).
pub fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&serde_json::json!({"type": kind, "object": object}))
        .expect("JSON values encode");
    line.push(b'\n');
    Bytes::from(line)
}

impl Store {
    pub fn new(keep: usize) -> Store {
        Store {
            rv: 1,
            collections: Resource::ALL
                .iter()
                .map(|_| Collection {
                    objects: BTreeMap::new(),
                    history: VecDeque::new(),
                    oldest: 0,
                    feed: broadcast::channel(1 << 16).0,
                })
                .collect(),
            keep: keep.max(1),
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn collection(&mut self, r: Resource) -> &mut Collection {
        &mut self.collections[r.index()]
    }

    fn record(&mut self, r: Resource, kind: &str, object: &Value) {
        let change = Change {
            rv: self.rv,
            line: event_line(kind, object),
        };
        let keep = self.keep;
        let c = self.collection(r);
        c.history.push_back(change.clone());
        while c.history.len() > keep {
            let gone = c.history.pop_front().expect("not empty");
            c.oldest = gone.rv;
        }
        let _ = c.feed.send(change);
    }

    /// Create or replace an object (its kind, apiVersion and resourceVersion are set).
    /// Returns its new resourceVersion.
    pub fn apply(&mut self, r: Resource, mut object: Value) -> Result<u64, String> {
        let key = key_of(&object).ok_or("the object has no metadata.name")?;
        self.rv += 1;
        let rv = self.rv;
        object["kind"] = r.kind().into();
        object["apiVersion"] = r.api_version().into();
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        if object["metadata"].get("uid").is_none() {
            object["metadata"]["uid"] = format!("uid-{rv}").into();
        }
        let encoded = Bytes::from(serde_json::to_vec(&object).expect("JSON values encode"));
        let existed = self
            .collection(r)
            .objects
            .insert(key, (rv, encoded))
            .is_some();
        self.record(r, if existed { "MODIFIED" } else { "ADDED" }, &object);
        Ok(rv)
    }

    /// Delete the object at `key`; its resourceVersion then, if it existed.
    pub fn delete(&mut self, r: Resource, key: &str) -> Option<u64> {
        let (_, encoded) = self.collection(r).objects.remove(key)?;
        self.rv += 1;
        let mut object: Value = serde_json::from_slice(&encoded).expect("stored objects decode");
        object["metadata"]["resourceVersion"] = self.rv.to_string().into();
        self.record(r, "DELETED", &object);
        Some(self.rv)
    }

    /// Forget the history of every resource: watches from any earlier resourceVersion get
    /// `410 Gone` and must list again.
    pub fn compact(&mut self) {
        let rv = self.rv;
        for c in &mut self.collections {
            c.history.clear();
            c.oldest = rv;
        }
    }

    /// Every object of `r`, as served.
    pub fn objects(&self, r: Resource) -> Vec<Value> {
        self.collections[r.index()]
            .objects
            .values()
            .map(|(_, b)| serde_json::from_slice(b).expect("stored objects decode"))
            .collect()
    }

    pub fn len(&self, r: Resource) -> usize {
        self.collections[r.index()].objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.collections.iter().all(|c| c.objects.is_empty())
    }

    /// Up to `limit` objects after `after` (exclusive), in key order.
    pub fn page(&self, r: Resource, after: Option<&str>, limit: usize) -> Vec<(String, Bytes)> {
        use std::ops::Bound;
        let c = &self.collections[r.index()];
        let start = match after {
            Some(k) => Bound::Excluded(k.to_string()),
            None => Bound::Unbounded,
        };
        c.objects
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(k, (_, b))| (k.clone(), b.clone()))
            .collect()
    }

    /// Whether changes after `rv` can still be replayed.
    pub fn replayable(&self, r: Resource, rv: u64) -> bool {
        rv >= self.collections[r.index()].oldest
    }

    /// The changes after `rv` still kept, and a subscription to later ones (taken together,
    /// so none is missed).
    pub fn watch_from(&self, r: Resource, rv: u64) -> (Vec<Change>, broadcast::Receiver<Change>) {
        let c = &self.collections[r.index()];
        let backlog = c.history.iter().filter(|ch| ch.rv > rv).cloned().collect();
        (backlog, c.feed.subscribe())
    }
}

/// The store shared by the server and the test's handle.
pub type Shared = Arc<std::sync::Mutex<Store>>;
