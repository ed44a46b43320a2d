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
//! * an object holding fields Palisade's schema lacks arrives narrowed (see
//!   `palisade_policy::k8s::unknown`), and is reported with what was done about each;
//! * an update that changes nothing Palisade uses (a pod's status conditions, annotations,
//!   managed fields) proposes nothing.

use std::collections::{BTreeMap, BTreeSet};

use palisade_policy::k8s::{FieldError, Kind, Rejection};
use palisade_policy::manifest::{Key, Object};
use palisade_policy::model::{Command, ObjKey};

/// The kinds the source watches, in the order an upsert batch lists them.
pub const KINDS: [Kind; 3] = [Kind::Namespace, Kind::NetworkPolicy, Kind::Pod];

/// One object as received: projected, or why Palisade rejects it; with what was done about
/// each field it holds that Palisade's schema lacks.
#[derive(Clone, Debug)]
pub struct Received {
    pub object: Result<Object, Rejection>,
    pub unknown: Vec<FieldError>,
}

impl From<Result<Object, Rejection>> for Received {
    fn from(object: Result<Object, Rejection>) -> Received {
        Received {
            object,
            unknown: Vec::new(),
        }
    }
}

impl Received {
    /// The projected object (tests).
    pub fn unwrap(self) -> Object {
        self.object.expect("a valid object")
    }
}

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

/// What a projected object is, for comparison: a 128-bit hash of its canonical encoding
/// (the mirror keeps these, not the objects, so a large cluster costs a few tens of bytes per
/// object here).
type Print = u128;

fn print(o: &Object) -> Print {
    xxhash_rust::xxh3::xxh3_128(&serde_json::to_vec(o).expect("model objects encode"))
}

/// The command deleting the object at `key` (`namespace/name`, or a namespace's name).
fn delete(key: &Key) -> Command {
    let obj = || {
        let (ns, name) = key.1.split_once('/').unwrap_or(("", &key.1));
        ObjKey::new(ns, name)
    };
    match key.0 {
        Kind::Namespace => Command::DeleteNamespace(key.1.as_str().into()),
        Kind::Pod => Command::DeletePod(obj()),
        Kind::NetworkPolicy => Command::DeletePolicy(obj()),
    }
}

#[derive(Default)]
pub struct Mirror {
    /// Kinds being listed, with what the list gave so far.
    listing: BTreeMap<Kind, BTreeMap<String, Received>>,
    /// Kinds listed completely since this replica began leading.
    listed: BTreeSet<Kind>,
    /// The API server's objects as Palisade uses them (for a kind not listed yet: what the
    /// replicated state holds).
    seen: BTreeMap<Key, Print>,
    /// What the replicated state holds from this source.
    applied: BTreeMap<Key, Print>,
    /// The objects seen that differ from what is applied: the upserts to propose.
    objects: BTreeMap<Key, Object>,
    /// Objects Palisade rejects, with why.
    rejected: BTreeMap<Key, Rejection>,
    /// Objects in force holding fields Palisade's schema lacks, with what was done about each
    /// (for a rejected object: its last valid version's).
    unknown: BTreeMap<Key, Vec<FieldError>>,
    /// Objects another source holds, with that source: not taken from the API server while
    /// it does (the caller looks again, and starts over once one is free).
    parked: BTreeMap<Key, String>,
    /// Bumped at every change to `rejected`, `unknown` or `parked` (so what is shown can
    /// follow).
    generation: u64,
    /// Objects of each kind in `seen`.
    counts: BTreeMap<Kind, usize>,
    /// Objects whose `seen` may differ from `applied`.
    dirty: BTreeSet<Key>,
    /// The changes of the batch being proposed.
    proposing: Option<Vec<(Key, Option<Print>)>>,
}

impl Mirror {
    /// A mirror for a replica that just began leading: `applied` is what the replicated state
    /// holds from this source. (A batch that may not have been committed is never retried
    /// from memory: the caller starts again with a new mirror over the replicated state.)
    pub fn new(applied: BTreeMap<Key, Object>) -> Mirror {
        let applied: BTreeMap<Key, Print> =
            applied.iter().map(|(k, o)| (k.clone(), print(o))).collect();
        let mut counts = BTreeMap::new();
        for k in applied.keys() {
            *counts.entry(k.0).or_default() += 1;
        }
        Mirror {
            seen: applied.clone(),
            applied,
            counts,
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
    /// many objects it changed, and how many it deleted.
    pub fn list_done(&mut self, kind: Kind) -> (usize, usize) {
        // Only a list that was seen beginning is complete.
        let Some(list) = self.listing.remove(&kind) else {
            return (0, 0);
        };
        self.listed.insert(kind);
        let before: Vec<Key> = self.seen.keys().filter(|k| k.0 == kind).cloned().collect();
        let mut changed = 0;
        let mut deleted = 0;
        for k in before {
            if !list.contains_key(&k.1) {
                self.forget(k);
                deleted += 1;
            }
        }
        let shown = self.rejected.len() + self.unknown.len();
        self.rejected
            .retain(|k, _| k.0 != kind || list.contains_key(&k.1));
        self.unknown
            .retain(|k, _| k.0 != kind || list.contains_key(&k.1));
        if self.rejected.len() + self.unknown.len() != shown {
            self.generation += 1;
        }
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

    fn receive(&mut self, key: Key, received: Received) -> Effect {
        match received.object {
            Ok(o) => {
                if self.rejected.remove(&key).is_some() {
                    self.generation += 1;
                }
                let unknown = received.unknown;
                if self.unknown.get(&key).map_or(&[][..], Vec::as_slice) != unknown.as_slice() {
                    self.generation += 1;
                    if unknown.is_empty() {
                        self.unknown.remove(&key);
                    } else {
                        self.unknown.insert(key.clone(), unknown);
                    }
                }
                let p = print(&o);
                if self.seen.get(&key) == Some(&p) {
                    return Effect::Ignored;
                }
                if self.seen.insert(key.clone(), p).is_none() {
                    *self.counts.entry(key.0).or_default() += 1;
                }
                // Kept even when it equals what is applied: a batch in flight may change
                // what is applied before this is compared (a change undone meanwhile).
                self.objects.insert(key.clone(), o);
                self.dirty.insert(key);
                Effect::Changed
            }
            Err(why) => {
                if self.rejected.get(&key) != Some(&why) {
                    self.generation += 1;
                    self.rejected.insert(key, why);
                }
                Effect::Rejected
            }
        }
    }

    fn forget(&mut self, key: Key) {
        if self.unknown.remove(&key).is_some() {
            self.generation += 1;
        }
        self.objects.remove(&key);
        if self.seen.remove(&key).is_some() {
            if let Some(n) = self.counts.get_mut(&key.0) {
                *n = n.saturating_sub(1);
            }
            self.dirty.insert(key);
        }
    }

    /// An object was deleted.
    pub fn delete(&mut self, kind: Kind, name: String) {
        let key = (kind, name);
        if self.rejected.remove(&key).is_some() {
            self.generation += 1;
        }
        self.forget(key);
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
    /// order (a large batch spans several revisions): pod deletes first (a pod gone frees its
    /// address for a new one, and never widens what is allowed), then upserts (namespaces,
    /// policies, pods), then policy and namespace deletes. `None` while not synced, while a batch is being proposed, or when nothing
    /// differs. The objects move into the commands (the mirror keeps their prints); the batch
    /// is in flight until [`Mirror::committed`]; if it fails, the caller starts over with a
    /// new mirror.
    pub fn batch(&mut self) -> Option<Vec<Command>> {
        if !self.synced() || self.proposing.is_some() {
            return None;
        }
        let mut changes: Vec<(Key, Option<Print>, Option<Object>)> =
            std::mem::take(&mut self.dirty)
                .into_iter()
                .filter_map(|k| {
                    let now = self.seen.get(&k).copied();
                    // Another source holds a parked object: proposing its changes would only
                    // be refused again (the source starts over once it is let go).
                    if now == self.applied.get(&k).copied() || self.parked.contains_key(&k) {
                        self.objects.remove(&k);
                        return None;
                    }
                    match now {
                        // The object of an upsert (absent only for one another source owns,
                        // refused before: it comes back with its next change).
                        Some(_) => {
                            let o = self.objects.remove(&k)?;
                            Some((k, now, Some(o)))
                        }
                        None => Some((k, None, None)),
                    }
                })
                .collect();
        if changes.is_empty() {
            return None;
        }
        let rank = |k: &Kind| KINDS.iter().position(|x| x == k).unwrap_or(0);
        changes.sort_by_key(|(k, p, _)| match (p, k.0) {
            (None, Kind::Pod) => (0, 0),
            (Some(_), kind) => (1, rank(&kind)),
            (None, kind) => (2, KINDS.len() - rank(&kind)),
        });
        let mut commands = Vec::with_capacity(changes.len());
        let mut proposing = Vec::with_capacity(changes.len());
        for (k, p, o) in changes {
            commands.push(match o {
                Some(o) => o.upsert(),
                None => delete(&k),
            });
            proposing.push((k, p));
        }
        self.proposing = Some(proposing);
        Some(commands)
    }

    /// The batch in flight is committed and applied, except for `not_ours`: objects another
    /// source held when it was applied (the state machine's answer names them), parked.
    pub fn committed(&mut self, not_ours: BTreeMap<Key, String>) {
        for (k, p) in self.proposing.take().unwrap_or_default() {
            if not_ours.contains_key(&k) {
                continue;
            }
            match p {
                Some(p) => self.applied.insert(k, p),
                None => self.applied.remove(&k),
            };
        }
        self.park(not_ours);
    }

    /// Objects another source holds, with that source: taken out of the batch in flight and
    /// parked until it lets them go.
    fn park(&mut self, keys: BTreeMap<Key, String>) {
        if keys.is_empty() {
            return;
        }
        if let Some(p) = &mut self.proposing {
            p.retain(|(k, _)| !keys.contains_key(k));
        }
        self.generation += 1;
        self.parked.extend(keys);
    }

    /// Objects another source holds, with that source.
    pub fn parked(&self) -> &BTreeMap<Key, String> {
        &self.parked
    }

    /// Changes whenever the rejected, narrowed or parked objects change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many objects of `kind` the API server holds, as far as this mirror knows.
    pub fn count(&self, kind: Kind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Objects Palisade rejects now.
    pub fn rejected(&self) -> impl Iterator<Item = (&Key, &Rejection)> {
        self.rejected.iter()
    }

    /// Objects in force holding fields Palisade's schema lacks, with what was done about each.
    pub fn unknown(&self) -> impl Iterator<Item = (&Key, &Vec<FieldError>)> {
        self.unknown.iter()
    }
}

#[cfg(test)]
mod tests;
