//! What the API server holds, as Palisade uses it, against what the replicated state holds
//! from this source: the sans-I/O core of the Kubernetes source. Watch events go in
//! (projected to model objects as they arrive); batches of commands come out, only for what
//! differs. Fail closed:
//! * a list is taken only once complete (`InitDone`): a list that breaks half-way is
//!   discarded and nothing it held is proposed;
//! * after a complete list, what vanished is deleted and what is unchanged proposes nothing
//!   (the same path serves the first sync, a relist after `410 Gone`, and a new leader);
//! * nothing is proposed until every kind has been listed once since this replica began
//!   leading, so the first revision holds all three, and a kind that cannot be listed (the
//!   API server unreachable, access denied) keeps everything as it was;
//! * an object the API server accepted but Palisade rejects keeps its last valid version in
//!   force, and is reported;
//! * an update that changes nothing Palisade uses (a pod's status conditions, annotations,
//!   managed fields) proposes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use palisade_policy::k8s::{Kind, Rejection};
use palisade_policy::manifest::{Key, Object};
use palisade_policy::model::Command;

/// The kinds the source watches, in the order an upsert batch lists them.
pub const KINDS: [Kind; 3] = [Kind::Namespace, Kind::NetworkPolicy, Kind::Pod];

/// One object as received: projected, or why Palisade rejects it.
pub type Received = Result<Object, Rejection>;

/// What a change did to the mirror.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Something Palisade uses changed: it will be proposed.
    Changed,
    /// Nothing Palisade uses changed: nothing is proposed.
    Ignored,
    /// Palisade rejects the object: its last valid version stays.
    Rejected,
}

#[derive(Default)]
pub struct Mirror {
    /// Kinds being listed, with what the list gave so far.
    listing: BTreeMap<Kind, BTreeMap<String, Received>>,
    /// Kinds listed completely since this replica began leading.
    listed: BTreeSet<Kind>,
    /// The API server's objects as Palisade uses them (for a kind not listed yet: what the
    /// replicated state holds). Shared with `applied` where they agree (most of the time:
    /// one copy of a large cluster, not two).
    seen: BTreeMap<Key, Arc<Object>>,
    /// What the replicated state holds from this source.
    applied: BTreeMap<Key, Arc<Object>>,
    /// Objects Palisade rejects, with why.
    rejected: BTreeMap<Key, Rejection>,
    /// Objects whose `seen` may differ from `applied`.
    dirty: BTreeSet<Key>,
    /// The changes of the batch being proposed.
    proposing: Option<Vec<(Key, Option<Arc<Object>>)>>,
}

impl Mirror {
    /// A mirror for a replica that just began leading: `applied` is what the replicated state
    /// holds from this source.
    pub fn new(applied: BTreeMap<Key, Object>) -> Mirror {
        let applied = shared(applied);
        Mirror {
            seen: applied.clone(),
            applied,
            ..Mirror::default()
        }
    }

    /// A list of `kind` begins (a partial one before it is void).
    pub fn list_started(&mut self, kind: Kind) {
        self.listing.insert(kind, BTreeMap::new());
    }

    /// One object of the list of its kind.
    pub fn listed(&mut self, kind: Kind, name: String, object: Received) {
        self.listing.entry(kind).or_default().insert(name, object);
    }

    /// The list of `kind` is complete: it replaces what was seen of that kind. Returns how
    /// many objects it changed, deleted, and how many are rejected.
    pub fn list_done(&mut self, kind: Kind) -> (usize, usize) {
        let list = self.listing.remove(&kind).unwrap_or_default();
        self.listed.insert(kind);
        let before: Vec<Key> = self.seen.keys().filter(|k| k.0 == kind).cloned().collect();
        let mut changed = 0;
        let mut deleted = 0;
        for k in before {
            if !list.contains_key(&k.1) {
                self.seen.remove(&k);
                self.dirty.insert(k);
                deleted += 1;
            }
        }
        self.rejected
            .retain(|k, _| k.0 != kind || list.contains_key(&k.1));
        for (name, object) in list {
            if self.receive((kind, name), object) == Effect::Changed {
                changed += 1;
            }
        }
        (changed, deleted)
    }

    /// An object was created or changed (after the list).
    pub fn apply(&mut self, kind: Kind, name: String, object: Received) -> Effect {
        self.receive((kind, name), object)
    }

    fn receive(&mut self, key: Key, object: Received) -> Effect {
        match object {
            Ok(o) => {
                self.rejected.remove(&key);
                if self.seen.get(&key).is_some_and(|s| **s == o) {
                    return Effect::Ignored;
                }
                // The applied version, if this is it again (a change undone before it was
                // proposed): shared, not copied.
                let o = match self.applied.get(&key) {
                    Some(a) if **a == o => a.clone(),
                    _ => Arc::new(o),
                };
                self.seen.insert(key.clone(), o);
                self.dirty.insert(key);
                Effect::Changed
            }
            Err(why) => {
                self.rejected.insert(key, why);
                Effect::Rejected
            }
        }
    }

    /// An object was deleted.
    pub fn delete(&mut self, kind: Kind, name: String) {
        let key = (kind, name);
        self.rejected.remove(&key);
        if self.seen.remove(&key).is_some() {
            self.dirty.insert(key);
        }
    }

    /// Whether every kind was listed since this replica began leading (before, nothing is
    /// proposed).
    pub fn synced(&self) -> bool {
        KINDS.iter().all(|k| self.listed.contains(k))
    }

    /// Whether `kind` was listed completely since this replica began leading.
    pub fn synced_kind(&self, kind: Kind) -> bool {
        self.listed.contains(&kind)
    }

    /// Whether a batch is being proposed.
    pub fn proposing(&self) -> bool {
        self.proposing.is_some()
    }

    /// Whether changes wait to be proposed.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The commands bringing the replicated state to what the API server holds, in a safe
    /// order: upserts (namespaces, policies, pods) before deletes (pods, policies,
    /// namespaces). `None` while not synced, while a batch is being proposed, or when nothing
    /// differs. The batch is in flight until [`Mirror::committed`] or [`Mirror::failed`].
    pub fn batch(&mut self) -> Option<Vec<Command>> {
        if !self.synced() || self.proposing.is_some() {
            return None;
        }
        let mut changes: Vec<(Key, Option<Arc<Object>>)> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|k| {
                let now = self.seen.get(&k);
                (now != self.applied.get(&k)).then(|| (k, now.cloned()))
            })
            .collect();
        if changes.is_empty() {
            return None;
        }
        let rank = |k: &Kind| KINDS.iter().position(|x| x == k).unwrap_or(0);
        changes.sort_by_key(|(k, o)| match o {
            Some(_) => (0, rank(&k.0)),
            None => (1, KINDS.len() - rank(&k.0)),
        });
        let commands = changes
            .iter()
            .map(|(k, o)| match o {
                Some(o) => Object::clone(o).upsert(),
                None => Object::clone(&self.applied[k]).delete(),
            })
            .collect();
        self.proposing = Some(changes);
        Some(commands)
    }

    /// The batch in flight is committed and applied.
    pub fn committed(&mut self) {
        for (k, o) in self.proposing.take().unwrap_or_default() {
            match o {
                Some(o) => self.applied.insert(k, o),
                None => self.applied.remove(&k),
            };
        }
    }

    /// The batch in flight was not committed (or may not have been): what the replicated
    /// state holds is `applied` now, and everything is compared again.
    pub fn failed(&mut self, applied: BTreeMap<Key, Object>) {
        self.proposing = None;
        self.applied = shared(applied);
        self.dirty.extend(self.seen.keys().cloned());
        self.dirty.extend(self.applied.keys().cloned());
    }

    /// Changes in the batch in flight that another source owns: dropped from it (compared
    /// again at their next change or a new leadership).
    pub fn not_ours(&mut self, keys: &BTreeSet<Key>) {
        if let Some(p) = &mut self.proposing {
            p.retain(|(k, _)| !keys.contains(k));
        }
    }

    /// How many objects of `kind` the API server holds, as far as this mirror knows.
    pub fn count(&self, kind: Kind) -> usize {
        self.seen.keys().filter(|k| k.0 == kind).count()
    }

    /// Objects Palisade rejects now.
    pub fn rejected(&self) -> impl Iterator<Item = (&Key, &Rejection)> {
        self.rejected.iter()
    }
}

fn shared(objects: BTreeMap<Key, Object>) -> BTreeMap<Key, Arc<Object>> {
    objects.into_iter().map(|(k, o)| (k, Arc::new(o))).collect()
}

#[cfg(test)]
mod tests;
