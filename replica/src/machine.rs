//! The replicated state machine: the policy engine at the index of the last applied entry,
//! and who owns each object. A committed entry is one revision: its commands are applied
//! together at its index, so node versions, slices and digests are the same on every replica
//! at the same index. The machine is driven by whoever applies committed entries (the
//! controller's apply thread, the test harness), not by the [`Replica`](crate::Replica),
//! so compiling never delays Raft's heartbeats.

use std::collections::{BTreeMap, BTreeSet};

use palisade_policy::engine::{Engine, NodeUpdate};
use palisade_policy::k8s::Kind;
use palisade_policy::manifest::{command_key, Key, Object};
use palisade_policy::model::{Command, Name};
use palisade_policy::Digest;
use serde::{Deserialize, Serialize};

use crate::entry::Batch;
use crate::membership::{self, Change};

/// Commands refused because another source owns their object: by key, that source.
pub type Refused = BTreeMap<Key, String>;

/// What applying one entry did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The nodes whose slices changed.
    pub updates: Vec<NodeUpdate>,
    /// The commands not applied because another source owns their object: by key, that
    /// source.
    pub refused: Refused,
}

#[derive(Default)]
pub struct Machine {
    engine: Engine,
    applied: u64,
    /// The source that last created or replaced each object.
    owners: BTreeMap<Key, String>,
    /// The index of the last snapshot taken or restored.
    last_snapshot: u64,
    /// Replicas added through membership changes: where each is reached.
    addresses: BTreeMap<u64, String>,
    /// Replicas removed: their ids are never used again.
    retired: BTreeSet<u64>,
}

/// A snapshot's content: the objects, their owners and each node's version, at an index.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    v: u32,
    index: u64,
    objects: Vec<Command>,
    owners: Vec<(Key, String)>,
    versions: BTreeMap<Name, u64>,
    /// Absent until the membership first changes (snapshots of groups that never changed
    /// keep their bytes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    addresses: BTreeMap<u64, String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    retired: BTreeSet<u64>,
}

const VERSION: u32 = 2;

impl Machine {
    pub fn new() -> Machine {
        Machine::default()
    }

    /// The index of the last entry applied (the latest revision).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Apply the entry at `index`: its commands (`None` for an entry that carries none, such
    /// as a new leader's empty entry) all at revision `index`. Returns the nodes whose slices
    /// changed and the commands refused. An index at or below the applied one is not applied
    /// again.
    ///
    /// Ownership is decided here, once, the same on every replica: a command whose object
    /// another source owns is not applied, and the answer says so, so the proposer learns it
    /// from the revision itself (a source may look before proposing, to propose less, but
    /// only this decides).
    pub fn apply(&mut self, index: u64, batch: Option<&Batch>) -> Applied {
        let mut applied = Applied::default();
        if index <= self.applied {
            return applied;
        }
        self.applied = index;
        let Some(b) = batch else {
            return applied;
        };
        let mut commands = Vec::with_capacity(b.commands.len());
        for c in &b.commands {
            let key = command_key(c);
            if let Some(other) = self.owners.get(&key).filter(|o| **o != b.owner) {
                applied.refused.insert(key, other.clone());
                continue;
            }
            match c {
                Command::UpsertNamespace(_) | Command::UpsertPod(_) | Command::UpsertPolicy(_) => {
                    self.owners.insert(key, b.owner.clone());
                }
                _ => {
                    self.owners.remove(&key);
                }
            }
            commands.push(c.clone());
        }
        if !commands.is_empty() {
            applied.updates = self.engine.apply_batch(index, commands);
        }
        applied
    }

    /// Apply the membership change committed at `index` (Raft applied it to the
    /// configuration already): the machine keeps the addresses of replicas added and the ids
    /// of those removed, so every replica knows them, also from a snapshot.
    pub fn apply_change(&mut self, index: u64, change: Option<&Change>) {
        if index <= self.applied {
            return;
        }
        self.applied = index;
        let Some(c) = change else { return };
        match c.kind {
            membership::Kind::AddLearner => {
                self.addresses.insert(c.id, c.address.clone());
            }
            membership::Kind::Promote => {}
            membership::Kind::Remove => {
                self.addresses.remove(&c.id);
                self.retired.insert(c.id);
            }
        }
    }

    /// Where each replica added through a membership change is reached.
    pub fn addresses(&self) -> &BTreeMap<u64, String> {
        &self.addresses
    }

    /// The ids of replicas removed from the group.
    pub fn retired(&self) -> &BTreeSet<u64> {
        &self.retired
    }

    /// The object `key` names, as applied.
    pub fn object(&self, key: &Key) -> Option<Object> {
        let e = &self.engine;
        match key.0 {
            Kind::Namespace => e.declared_namespace(&key.1).map(Object::Namespace),
            Kind::Pod => e.pod(&key.1.parse().ok()?).map(|p| Object::Pod(p.clone())),
            Kind::NetworkPolicy => e
                .policy(&key.1.parse().ok()?)
                .map(|p| Object::NetworkPolicy(p.clone())),
        }
    }

    /// Who owns the object `key` (`None`: no such object).
    pub fn owner(&self, key: &Key) -> Option<&str> {
        self.owners.get(key).map(String::as_str)
    }

    /// The objects `owner` created or replaced last, by key: what a source reconciles its
    /// desired objects against.
    pub fn owned_by(&self, owner: &str) -> BTreeMap<Key, Object> {
        self.engine
            .objects()
            .into_iter()
            .filter_map(Object::from_command)
            .filter(|o| self.owners.get(&o.key()).is_some_and(|w| w == owner))
            .map(|o| (o.key(), o))
            .collect()
    }

    /// Whether `every` entries were applied since the last snapshot.
    pub fn snapshot_due(&self, every: u64) -> bool {
        self.applied >= self.last_snapshot + every.max(1)
    }

    /// The state at the applied index, canonically encoded (the same bytes on every replica at
    /// the same index); it counts as the latest snapshot.
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.last_snapshot = self.applied;
        self.encode()
    }

    /// The state at the applied index, canonically encoded (what a snapshot holds).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Snapshot {
            v: VERSION,
            index: self.applied,
            objects: self.engine.objects(),
            owners: self
                .owners
                .iter()
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect(),
            versions: self.engine.node_versions(),
            addresses: self.addresses.clone(),
            retired: self.retired.clone(),
        })
        .expect("the policy model serialises")
    }

    /// The machine a snapshot holds.
    pub fn restore(bytes: &[u8]) -> Result<Machine, String> {
        let s: Snapshot =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable snapshot: {e}"))?;
        if s.v != VERSION {
            return Err(format!(
                "snapshot format {} (this replica reads {VERSION})",
                s.v
            ));
        }
        let engine = Engine::restore(s.index, s.objects, &s.versions)?;
        Ok(Machine {
            engine,
            applied: s.index,
            owners: s.owners.into_iter().collect(),
            last_snapshot: s.index,
            addresses: s.addresses,
            retired: s.retired,
        })
    }

    /// Every node's version and digest (what replicas compare).
    pub fn digests(&self) -> BTreeMap<Name, (u64, Digest)> {
        self.engine
            .nodes()
            .into_iter()
            .map(|n| (n.node, (n.version, n.digest)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ProposalId;
    use palisade_policy::model::Namespace;

    fn batch(owner: &str, commands: Vec<Command>) -> Batch {
        Batch {
            id: ProposalId {
                replica: 1,
                term: 1,
                seq: 1,
            },
            owner: owner.into(),
            commands,
        }
    }

    fn ns(name: &str) -> Namespace {
        Namespace {
            name: Name::from(name),
            labels: Default::default(),
        }
    }

    #[test]
    fn one_owner_cannot_change_anothers_objects_and_owners_survive_a_snapshot() {
        let mut m = Machine::new();
        m.apply(
            1,
            Some(&batch("manifests", vec![Command::UpsertNamespace(ns("a"))])),
        );
        let second = m.apply(
            2,
            Some(&batch(
                "apply",
                vec![
                    Command::UpsertNamespace(ns("b")),
                    Command::DeleteNamespace(Name::from("a")),
                ],
            )),
        );
        // "apply" could not delete what "manifests" owns, and is told; it created "b"
        // (nobody's before), which "manifests" cannot take over either.
        assert_eq!(
            second.refused,
            BTreeMap::from([((Kind::Namespace, "a".to_string()), "manifests".to_string())])
        );
        let third = m.apply(
            3,
            Some(&batch("manifests", vec![Command::UpsertNamespace(ns("b"))])),
        );
        assert_eq!(
            third.refused,
            BTreeMap::from([((Kind::Namespace, "b".to_string()), "apply".to_string())])
        );
        assert!(third.updates.is_empty());
        assert_eq!(
            m.owner(&(Kind::Namespace, "a".to_string())),
            Some("manifests")
        );
        m.apply(4, None);
        assert_eq!(
            m.applied(),
            4,
            "an entry without commands advances the index"
        );
        let key = (Kind::Namespace, "b".to_string());
        assert_eq!(m.owner(&key), Some("apply"));
        assert!(matches!(m.object(&key), Some(Object::Namespace(n)) if n.name == Name::from("b")));
        assert_eq!(
            m.owned_by("manifests").keys().cloned().collect::<Vec<_>>(),
            vec![(Kind::Namespace, "a".to_string())]
        );
        let restored = Machine::restore(&m.snapshot()).unwrap();
        assert_eq!(restored.owner(&key), Some("apply"));
        assert_eq!(restored.applied(), 4);
        assert!(!restored.snapshot_due(1));
        m.apply(
            5,
            Some(&batch(
                "apply",
                vec![Command::DeleteNamespace(Name::from("b"))],
            )),
        );
        assert_eq!(m.owner(&key), None);
        assert!(m.owned_by("apply").is_empty());
    }

    #[test]
    fn membership_changes_are_kept_and_survive_a_snapshot() {
        let mut m = Machine::new();
        let plain = m.encode();
        assert!(
            !String::from_utf8_lossy(&plain).contains("addresses"),
            "a group that never changed keeps its snapshot's bytes"
        );
        let add = Change {
            kind: membership::Kind::AddLearner,
            id: 4,
            address: "10.0.0.4:7443".into(),
            request: 1,
        };
        m.apply_change(1, Some(&add));
        m.apply_change(1, None);
        assert_eq!(m.applied(), 1);
        let remove = |id| Change {
            kind: membership::Kind::Remove,
            id,
            address: String::new(),
            request: 0,
        };
        m.apply_change(2, Some(&remove(2)));
        let restored = Machine::restore(&m.snapshot()).unwrap();
        assert_eq!(
            restored.addresses().get(&4).map(String::as_str),
            Some("10.0.0.4:7443")
        );
        assert!(restored.retired().contains(&2));
        assert_eq!(restored.applied(), 2);
        m.apply_change(3, Some(&remove(4)));
        assert!(m.addresses().is_empty());
        assert_eq!(m.retired().len(), 2);
    }
}
