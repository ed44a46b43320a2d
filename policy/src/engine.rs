//! The incremental compiler. It holds the cluster's namespaces, pods and policies and every
//! node's slice, applies one [`Command`] (or a batch) at a revision, and returns exactly the
//! nodes whose slice changed, each with its [`SliceDelta`] (equal to `diff(old, new)`).
//!
//! Work per command is proportional to what it can affect: a pod change looks at the policies
//! of its namespace and the address sets whose scope takes its namespace; a policy change at
//! the pods of its namespace; a namespace label change at the namespace-selector groups.

mod commit;
mod compile;
mod groups;
mod nodes;
mod sets;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::model::{Command, Labels, Name, Namespace, NetworkPolicy, ObjKey, Pod};
use crate::slice::{NodeSlice, SetId};
use compile::CompiledPolicy;
use nodes::Nodes;
pub use nodes::{NodeSummary, NodeUpdate};
use sets::{MemberLog, Sets, World};

/// Revisions touching at least this many endpoints compute them in parallel.
const PARALLEL_MIN: usize = 512;

/// The compiler's whole state.
#[derive(Default)]
pub struct Engine {
    revision: u64,
    /// Effective labels of every known namespace (declared, or implied by a pod or policy).
    namespaces: FxHashMap<Name, Labels>,
    declared: FxHashSet<Name>,
    pods: FxHashMap<Name, BTreeMap<Name, Pod>>,
    policies: FxHashMap<Name, BTreeMap<Name, CompiledPolicy>>,
    sets: Sets,
    nodes: Nodes,
}

/// A command, with its policy compiled ahead when batches are compiled in parallel.
enum Prepared {
    Policy(CompiledPolicy),
    Other(Command),
}

impl From<Command> for Prepared {
    fn from(c: Command) -> Prepared {
        match c {
            Command::UpsertPolicy(p) => Prepared::Policy(CompiledPolicy::new(p)),
            other => Prepared::Other(other),
        }
    }
}

/// Bookkeeping of one revision.
struct Tx {
    /// Present when deltas are built.
    log: Option<MemberLog>,
    created: FxHashSet<SetId>,
    released: Vec<SetId>,
    touched: FxHashSet<(u32, Ipv4Addr)>,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// A fresh engine holding `commands` applied at `revision`, without building deltas: the
    /// full compile.
    pub fn load(revision: u64, commands: impl IntoIterator<Item = Command>) -> Engine {
        let mut e = Engine::new();
        e.run(revision, commands, false);
        e
    }

    /// The revision of the last command applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Apply one command at `revision`; returns the nodes whose slice changed, sorted by name.
    pub fn apply(&mut self, revision: u64, command: Command) -> Vec<NodeUpdate> {
        self.run(revision, [command], true)
    }

    /// Apply several commands as one revision.
    pub fn apply_batch(
        &mut self,
        revision: u64,
        commands: impl IntoIterator<Item = Command>,
    ) -> Vec<NodeUpdate> {
        self.run(revision, commands, true)
    }

    fn run(
        &mut self,
        revision: u64,
        commands: impl IntoIterator<Item = Command>,
        deltas: bool,
    ) -> Vec<NodeUpdate> {
        debug_assert!(revision >= self.revision, "revisions go forward");
        let mut tx = Tx {
            log: deltas.then(MemberLog::default),
            created: FxHashSet::default(),
            released: Vec::new(),
            touched: FxHashSet::default(),
        };
        let commands: Vec<Command> = commands.into_iter().collect();
        let policies = commands
            .iter()
            .filter(|c| matches!(c, Command::UpsertPolicy(_)))
            .count();
        if policies >= PARALLEL_MIN {
            // Compiling a policy is pure: do it on every core, apply in order.
            let prepared: Vec<Prepared> = commands.into_par_iter().map(Prepared::from).collect();
            for p in prepared {
                self.command(p, &mut tx);
            }
        } else {
            for c in commands {
                self.command(Prepared::Other(c), &mut tx);
            }
        }
        self.commit(revision, tx)
    }

    fn command(&mut self, c: Prepared, tx: &mut Tx) {
        let c = match c {
            Prepared::Policy(p) => return self.upsert_policy(p, tx),
            Prepared::Other(c) => c,
        };
        match c {
            Command::UpsertNamespace(ns) => self.upsert_namespace(ns, tx),
            Command::DeleteNamespace(name) => self.delete_namespace(&name, tx),
            Command::UpsertPod(p) => self.upsert_pod(p, tx),
            Command::DeletePod(key) => self.delete_pod(&key, tx),
            Command::UpsertPolicy(p) => self.upsert_policy(CompiledPolicy::new(p), tx),
            Command::DeletePolicy(key) => self.delete_policy(&key, tx),
        }
    }

    /// Namespace `name` now has `labels`, or is forgotten (`None`).
    fn set_namespace_labels(&mut self, name: &Name, labels: Option<Labels>, tx: &mut Tx) {
        if self.namespaces.get(name) == labels.as_ref() {
            return;
        }
        let old = match labels {
            Some(l) => self.namespaces.insert(name.clone(), l),
            None => self.namespaces.remove(name),
        };
        let world = World {
            namespaces: &self.namespaces,
            pods: &self.pods,
        };
        let new = self.namespaces.get(name);
        self.sets
            .namespace_changed(name, old.as_ref(), new, &world, tx.log.as_mut());
    }

    fn ensure_namespace(&mut self, name: &Name, tx: &mut Tx) {
        if !self.namespaces.contains_key(name) {
            self.set_namespace_labels(name, Some(Namespace::implicit(name).labels), tx);
        }
    }

    fn upsert_namespace(&mut self, ns: Namespace, tx: &mut Tx) {
        self.declared.insert(ns.name.clone());
        self.set_namespace_labels(&ns.name, Some(ns.labels), tx);
    }

    fn delete_namespace(&mut self, name: &Name, tx: &mut Tx) {
        if !self.declared.remove(name) {
            return;
        }
        let in_use = self.pods.contains_key(name) || self.policies.contains_key(name);
        if in_use {
            // Objects remain: the namespace is still known by name, with only its name label.
            self.set_namespace_labels(name, Some(Namespace::implicit(name).labels), tx);
        } else {
            self.set_namespace_labels(name, None, tx);
        }
    }

    fn upsert_pod(&mut self, pod: Pod, tx: &mut Tx) {
        let ns = pod.key.namespace.clone();
        self.ensure_namespace(&ns, tx);
        let name = pod.key.name.clone();
        let slot = self.pods.entry(ns.clone()).or_default();
        if slot.get(&name) == Some(&pod) {
            return;
        }
        let old = slot.insert(name.clone(), pod);
        let new = &self.pods[&ns][&name];
        if let Some(o) = &old {
            unclaim(&mut self.nodes, o, tx);
        }
        claim(&mut self.nodes, new, tx);
        self.sets
            .pod_changed(&ns, old.as_ref(), Some(new), tx.log.as_mut());
    }

    fn delete_pod(&mut self, key: &ObjKey, tx: &mut Tx) {
        let Some(old) = take(&mut self.pods, key) else {
            return;
        };
        unclaim(&mut self.nodes, &old, tx);
        self.sets
            .pod_changed(&key.namespace, Some(&old), None, tx.log.as_mut());
    }

    fn upsert_policy(&mut self, compiled: CompiledPolicy, tx: &mut Tx) {
        let ns = compiled.source.key.namespace.clone();
        self.ensure_namespace(&ns, tx);
        let existing = self
            .policies
            .get(&ns)
            .and_then(|m| m.get(&compiled.source.key.name));
        if existing.is_some_and(|c| c.source == compiled.source) {
            return;
        }
        let world = World {
            namespaces: &self.namespaces,
            pods: &self.pods,
        };
        for (id, def) in &compiled.sets {
            let created = self.sets.register(*id, def, &world);
            if created {
                tx.created.insert(*id);
            }
        }
        let name = compiled.source.key.name.clone();
        self.touch_selected(&compiled, tx);
        let old = self.policies.entry(ns).or_default().insert(name, compiled);
        if let Some(old) = old {
            self.retire_policy(&old, tx);
        }
    }

    fn delete_policy(&mut self, key: &ObjKey, tx: &mut Tx) {
        let Some(old) = take(&mut self.policies, key) else {
            return;
        };
        self.retire_policy(&old, tx);
    }

    /// A policy version leaves: its pods are recomputed and its sets released.
    fn retire_policy(&mut self, old: &CompiledPolicy, tx: &mut Tx) {
        self.touch_selected(old, tx);
        for (id, _) in &old.sets {
            if self.sets.release(*id) {
                tx.released.push(*id);
            }
        }
    }

    /// Mark every enforceable pod `p` selects for recomputation.
    fn touch_selected(&self, p: &CompiledPolicy, tx: &mut Tx) {
        let Some(pods) = self.pods.get(&p.source.key.namespace) else {
            return;
        };
        for pod in pods.values().filter(|pod| p.selects(pod)) {
            if let Some((node, ip)) = pod.endpoint() {
                let n = self.nodes.index[node];
                tx.touched.insert((n, ip));
            }
        }
    }

    /// The node's current slice; empty for a node the engine has never seen.
    pub fn slice(&self, node: &str) -> NodeSlice {
        let Some(state) = self.nodes.get(node) else {
            return NodeSlice::empty(node);
        };
        NodeSlice {
            node: state.name.clone(),
            version: state.version,
            endpoints: state
                .endpoints
                .iter()
                .map(|(ip, (e, _))| (*ip, e.clone()))
                .collect(),
            sets: state
                .set_refs
                .keys()
                .map(|id| (*id, self.sets.entries[id].snapshot(*id)))
                // (collected into a BTreeMap: sorted by id whatever the hash order)
                .collect(),
        }
    }

    /// Every node that has (or had) a pod scheduled on it, sorted by name.
    /// How many nodes have a slice.
    pub fn node_count(&self) -> usize {
        self.nodes.list.len()
    }

    pub fn nodes(&self) -> Vec<NodeSummary> {
        let mut out: Vec<NodeSummary> = self.nodes.list.iter().map(|n| n.summary()).collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    pub fn node(&self, name: &str) -> Option<NodeSummary> {
        self.nodes.get(name).map(|n| n.summary())
    }

    pub fn pod(&self, key: &ObjKey) -> Option<&Pod> {
        self.pods.get(&key.namespace)?.get(&key.name)
    }

    pub fn policy(&self, key: &ObjKey) -> Option<&NetworkPolicy> {
        self.policies
            .get(&key.namespace)?
            .get(&key.name)
            .map(|c| &c.source)
    }

    /// A namespace declared as an object (not only implied by its pods), as declared.
    pub fn declared_namespace(&self, name: &str) -> Option<Namespace> {
        let (name, labels) = self.namespaces.get_key_value(name)?;
        self.declared.contains(name).then(|| Namespace {
            name: name.clone(),
            labels: labels.clone(),
        })
    }

    /// The pods of one namespace, sorted by name.
    pub fn pods_in(&self, namespace: &str) -> impl Iterator<Item = &Pod> {
        self.pods
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// True when the namespace is declared as an object or holds a pod (so it exists in a
    /// cluster), not only named by a policy.
    pub fn namespace_exists(&self, name: &str) -> bool {
        self.declared.contains(name) || self.pods.get(name).is_some_and(|m| !m.is_empty())
    }

    /// Every pod, sorted by namespace and name.
    pub fn pods(&self) -> Vec<&Pod> {
        let mut out: Vec<&Pod> = self.pods.values().flat_map(|m| m.values()).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Every policy, sorted by namespace and name.
    pub fn policies(&self) -> Vec<&NetworkPolicy> {
        let mut out: Vec<&NetworkPolicy> = self
            .policies
            .values()
            .flat_map(|m| m.values().map(|c| &c.source))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Known namespaces with their effective labels, borrowed, in no order.
    pub fn namespace_labels(&self) -> impl Iterator<Item = (&Name, &Labels)> {
        self.namespaces.iter()
    }

    /// Known namespaces with their effective labels, sorted.
    pub fn namespaces(&self) -> BTreeMap<Name, Labels> {
        self.namespaces
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The objects the engine holds, as the commands that recreate them (declared namespaces,
    /// then pods, then policies, each sorted): `Engine::load(r, e.objects())` compiles the
    /// same slices as `e`.
    pub fn objects(&self) -> Vec<Command> {
        let mut declared: Vec<&Name> = self.declared.iter().collect();
        declared.sort();
        let namespaces = declared.into_iter().map(|n| {
            Command::UpsertNamespace(Namespace {
                name: n.clone(),
                labels: self.namespaces[n].clone(),
            })
        });
        let pods = self
            .pods()
            .into_iter()
            .map(|p| Command::UpsertPod(p.clone()));
        let policies = self
            .policies()
            .into_iter()
            .map(|p| Command::UpsertPolicy(p.clone()));
        namespaces.chain(pods).chain(policies).collect()
    }

    /// The version of every node whose slice has ever changed (a node never changed is at 0).
    pub fn node_versions(&self) -> BTreeMap<Name, u64> {
        self.nodes
            .list
            .iter()
            .filter(|n| n.version > 0)
            .map(|n| (n.name.clone(), n.version))
            .collect()
    }

    /// An engine equal to one that reached `revision` through its history, from what a
    /// snapshot keeps: the objects (`objects()`) and the nodes' versions (`node_versions()`).
    /// [`Engine::load`] alone would stamp every node with `revision`; here each keeps the
    /// version its slice last changed at, so slices, digests and versions are the same as the
    /// original's. Fails when the versions do not fit the objects (a node with content but no
    /// version, or a version after `revision`).
    pub fn restore(
        revision: u64,
        objects: impl IntoIterator<Item = Command>,
        versions: &BTreeMap<Name, u64>,
    ) -> Result<Engine, String> {
        let mut e = Engine::load(revision, objects);
        if let Some(n) = e
            .nodes
            .list
            .iter()
            .find(|n| n.version > 0 && !versions.contains_key(&n.name))
        {
            return Err(format!("node {} has a slice but no version", n.name));
        }
        for (name, v) in versions {
            if *v > revision {
                return Err(format!(
                    "node {name} is at version {v}, after the snapshot's revision {revision}"
                ));
            }
            // A node whose slice emptied still has the version it emptied at.
            let i = e.nodes.get_or_create(name);
            e.nodes.list[i as usize].version = *v;
        }
        e.revision = revision;
        Ok(e)
    }

    /// Ids of every address set some policy references.
    pub fn set_ids(&self) -> BTreeSet<SetId> {
        self.sets.entries.keys().copied().collect()
    }
}

/// Remove `key` from a by-namespace map, dropping the namespace's entry when it empties.
fn take<V>(map: &mut FxHashMap<Name, BTreeMap<Name, V>>, key: &ObjKey) -> Option<V> {
    let slot = map.get_mut(&key.namespace)?;
    let v = slot.remove(&key.name)?;
    if slot.is_empty() {
        map.remove(&key.namespace);
    }
    Some(v)
}

fn unclaim(nodes: &mut Nodes, pod: &Pod, tx: &mut Tx) {
    let Some((node, ip)) = pod.endpoint() else {
        return;
    };
    let Some(&n) = nodes.index.get(node) else {
        return;
    };
    let state = &mut nodes.list[n as usize];
    if let Some(claim) = state.claims.get_mut(&ip) {
        claim.retain(|k| k != &pod.key);
        if claim.is_empty() {
            state.claims.remove(&ip);
        }
    }
    tx.touched.insert((n, ip));
}

fn claim(nodes: &mut Nodes, pod: &Pod, tx: &mut Tx) {
    let Some((node, ip)) = pod.endpoint() else {
        return;
    };
    let n = nodes.get_or_create(node);
    let state = &mut nodes.list[n as usize];
    let claim = state.claims.entry(ip).or_default();
    if let Err(at) = claim.binary_search(&pod.key) {
        claim.insert(at, pod.key.clone());
    }
    tx.touched.insert((n, ip));
}
