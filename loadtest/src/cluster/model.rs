//! The checker's model of the store: every change the store acknowledged, replayed in the
//! order of its revisions through a policy engine of its own (the same pure code the
//! replicas run, but fed only by what the load test sent and was told). It knows the
//! objects that must be in the final state, and for every node the digest its slice must
//! have at every version, so an agent's acks can be checked one by one.

use std::collections::{BTreeSet, HashMap};

use palisade_policy::engine::Engine;
use palisade_policy::k8s::Kind;
use palisade_policy::manifest::{command_key, Key, Object};
use palisade_policy::model::{Command, Namespace, NetworkPolicy, ObjKey, Pod};
use palisade_policy::Digest;

use crate::synth::Rng;

/// Objects of one kind, with random picks in constant time.
pub struct Bag<K, V> {
    items: Vec<(K, V)>,
    index: HashMap<K, usize>,
}

impl<K: Clone + Eq + std::hash::Hash, V> Default for Bag<K, V> {
    fn default() -> Self {
        Bag {
            items: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash, V> Bag<K, V> {
    pub fn put(&mut self, k: K, v: V) {
        match self.index.get(&k) {
            Some(i) => self.items[*i].1 = v,
            None => {
                self.index.insert(k.clone(), self.items.len());
                self.items.push((k, v));
            }
        }
    }

    pub fn remove(&mut self, k: &K) {
        if let Some(i) = self.index.remove(k) {
            self.items.swap_remove(i);
            if let Some((moved, _)) = self.items.get(i) {
                self.index.insert(moved.clone(), i);
            }
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.index.get(k).map(|i| &self.items[*i].1)
    }

    pub fn pick(&self, rng: &mut Rng) -> Option<&V> {
        (!self.items.is_empty()).then(|| &self.items[rng.below(self.items.len())].1)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.items.iter().map(|(_, v)| v)
    }
}

/// A node's slice changed to `digest` at a revision in `(after, at]` (a single revision
/// when `after + 1 == at`; wider when an apply's answer was lost and its retry found it
/// done).
#[derive(Clone, Copy, Debug)]
pub struct Version {
    pub after: u64,
    pub at: u64,
    pub digest: Digest,
}

#[derive(Default)]
pub struct Model {
    engine: Engine,
    pub namespaces: Bag<String, Namespace>,
    pub pods: Bag<ObjKey, Pod>,
    pub policies: Bag<ObjKey, NetworkPolicy>,
    /// Objects deleted and not created again (the final state must not hold them).
    pub deleted: BTreeSet<Key>,
    versions: HashMap<String, Vec<Version>>,
    /// The highest revision applied.
    pub revision: u64,
}

impl Model {
    /// Apply `commands`, committed at a revision in `(after, at]`; the nodes whose slice
    /// changed.
    pub fn apply(&mut self, after: u64, at: u64, commands: Vec<Command>) -> Vec<String> {
        for c in &commands {
            match c {
                Command::UpsertNamespace(n) => self.namespaces.put(n.name.to_string(), n.clone()),
                Command::DeleteNamespace(n) => self.namespaces.remove(&n.to_string()),
                Command::UpsertPod(p) => self.pods.put(p.key.clone(), p.clone()),
                Command::DeletePod(k) => self.pods.remove(k),
                Command::UpsertPolicy(p) => self.policies.put(p.key.clone(), p.clone()),
                Command::DeletePolicy(k) => self.policies.remove(k),
            }
            let key = command_key(c);
            if matches!(
                c,
                Command::DeleteNamespace(_) | Command::DeletePod(_) | Command::DeletePolicy(_)
            ) {
                self.deleted.insert(key);
            } else {
                self.deleted.remove(&key);
            }
        }
        let at = at.max(self.revision);
        self.revision = at;
        let updates = self.engine.apply_batch(at, commands);
        updates
            .into_iter()
            .map(|u| {
                let node = u.node.to_string();
                self.versions
                    .entry(node.clone())
                    .or_default()
                    .push(Version {
                        after,
                        at,
                        digest: u.digest(),
                    });
                node
            })
            .collect()
    }

    /// The digest `node`'s slice must have at `version`; `None` when its slice did not
    /// change at that version.
    pub fn expected(&self, node: &str, version: u64) -> Option<Digest> {
        if version == 0 {
            return Some(Engine::new().slice(node).digest());
        }
        self.versions
            .get(node)?
            .iter()
            .rev()
            .find(|v| v.after < version && version <= v.at)
            .map(|v| v.digest)
    }

    /// The digest of `node`'s slice now.
    pub fn current(&self, node: &str) -> Digest {
        match self.versions.get(node).and_then(|v| v.last()) {
            Some(v) => v.digest,
            None => Engine::new().slice(node).digest(),
        }
    }

    /// What a snapshot of `node`'s slice weighs on the wire now.
    pub fn snapshot_bytes(&self, node: &str) -> u64 {
        palisade_proto::encode::snapshot(&self.engine.slice(node)).len() as u64
    }

    /// The object `key` names, as the model holds it now.
    pub fn object(&self, key: &Key) -> Option<Object> {
        match key.0 {
            Kind::Namespace => self.namespaces.get(&key.1).cloned().map(Object::Namespace),
            Kind::Pod => {
                let pod = self.pods.get(&key.1.parse().ok()?)?;
                Some(Object::Pod(pod.clone()))
            }
            Kind::NetworkPolicy => {
                let policy = self.policies.get(&key.1.parse().ok()?)?;
                Some(Object::NetworkPolicy(policy.clone()))
            }
        }
    }

    /// Every object that must be in the final state, as commands.
    pub fn objects(&self) -> Vec<Command> {
        let mut out: Vec<Command> = self
            .namespaces
            .values()
            .cloned()
            .map(Command::UpsertNamespace)
            .collect();
        out.extend(self.policies.values().cloned().map(Command::UpsertPolicy));
        out.extend(self.pods.values().cloned().map(Command::UpsertPod));
        out
    }
}
