//! Namespace-selector groups: for each distinct `namespaceSelector` in use, the known
//! namespaces it matches, kept current as namespaces come, go and change labels.
//!
//! Two label indexes keep this proportional to what changes: namespaces by label (a new
//! selector with an `In` requirement looks only at namespaces carrying one of its values), and
//! groups by the first `In` requirement of their selector (a changed namespace looks only at
//! groups one of its labels could satisfy, plus the few selectors without an `In`).

use std::collections::BTreeSet;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::model::{Labels, Name, Operator, Selector};
use crate::slice::SetId;

pub(crate) struct Group {
    pub selector: Selector,
    /// Sets whose namespace scope is this selector.
    pub sets: Vec<SetId>,
    /// Known namespaces the selector matches.
    pub matching: FxHashSet<Name>,
}

/// key → value → items.
type LabelIndex<T> = FxHashMap<String, FxHashMap<String, T>>;

#[derive(Default)]
pub(crate) struct Groups {
    groups: Vec<Option<Group>>,
    by_selector: FxHashMap<Selector, usize>,
    /// Groups matching each namespace.
    of_ns: FxHashMap<Name, Vec<usize>>,
    /// Groups by the first `In` requirement of their selector.
    by_label: LabelIndex<Vec<usize>>,
    /// Groups whose selector has no `In` requirement: checked against every namespace change.
    scan: Vec<usize>,
    /// Known namespaces by label.
    ns_by_label: LabelIndex<FxHashSet<Name>>,
}

/// The first `In` requirement of a selector: an index key that any match must carry.
fn index_key(sel: &Selector) -> Option<(&str, &BTreeSet<String>)> {
    sel.requirements().iter().find_map(|r| match &r.op {
        Operator::In(values) => Some((r.key.as_str(), values)),
        _ => None,
    })
}

impl Groups {
    pub fn get(&self, g: usize) -> &Group {
        self.groups[g].as_ref().expect("live group")
    }

    /// Groups matching namespace `ns`.
    pub fn matching(&self, ns: &str) -> &[usize] {
        self.of_ns.get(ns).map_or(&[], Vec::as_slice)
    }

    /// The group of `sel`, created (with its matching namespaces) if new; `set` joins it.
    pub fn join(
        &mut self,
        sel: &Selector,
        set: SetId,
        namespaces: &FxHashMap<Name, Labels>,
    ) -> usize {
        let g = match self.by_selector.get(sel) {
            Some(g) => *g,
            None => self.create(sel, namespaces),
        };
        self.groups[g].as_mut().expect("live group").sets.push(set);
        g
    }

    fn create(&mut self, sel: &Selector, namespaces: &FxHashMap<Name, Labels>) -> usize {
        let matches = |n: &Name| namespaces.get(n).is_some_and(|l| sel.matches(l));
        let matching: FxHashSet<Name> = match index_key(sel) {
            Some((key, values)) => {
                let by_value = self.ns_by_label.get(key);
                values
                    .iter()
                    .filter_map(|v| by_value?.get(v))
                    .flatten()
                    .filter(|n| matches(n))
                    .cloned()
                    .collect()
            }
            None => namespaces.keys().filter(|n| matches(n)).cloned().collect(),
        };
        let g = match self.groups.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.groups.push(None);
                self.groups.len() - 1
            }
        };
        for ns in &matching {
            self.of_ns.entry(ns.clone()).or_default().push(g);
        }
        match index_key(sel) {
            Some((key, values)) => {
                for v in values {
                    let slot = self.by_label.entry(key.to_string()).or_default();
                    slot.entry(v.clone()).or_default().push(g);
                }
            }
            None => self.scan.push(g),
        }
        self.groups[g] = Some(Group {
            selector: sel.clone(),
            sets: Vec::new(),
            matching,
        });
        self.by_selector.insert(sel.clone(), g);
        g
    }

    /// `set` leaves group `g`; the group goes when it has no sets left.
    pub fn leave(&mut self, g: usize, set: SetId) {
        let group = self.groups[g].as_mut().expect("live group");
        group.sets.retain(|s| *s != set);
        if !group.sets.is_empty() {
            return;
        }
        let group = self.groups[g].take().expect("live group");
        self.by_selector.remove(&group.selector);
        for ns in &group.matching {
            if let Some(v) = self.of_ns.get_mut(ns) {
                v.retain(|x| *x != g);
            }
        }
        match index_key(&group.selector) {
            Some((key, values)) => {
                for v in values {
                    if let Some(gs) = self.by_label.get_mut(key).and_then(|m| m.get_mut(v)) {
                        gs.retain(|x| *x != g);
                    }
                }
            }
            None => self.scan.retain(|x| *x != g),
        }
    }

    /// Namespace `ns` changed from `old` to `new` labels (`None`: unknown). Returns the groups
    /// whose match changed, with whether they match now, in ascending order.
    pub fn namespace_changed(
        &mut self,
        ns: &Name,
        old: Option<&Labels>,
        new: Option<&Labels>,
    ) -> Vec<(usize, bool)> {
        for (k, v) in old.into_iter().flatten() {
            if let Some(set) = self.ns_by_label.get_mut(k).and_then(|m| m.get_mut(v)) {
                set.remove(ns);
            }
        }
        for (k, v) in new.into_iter().flatten() {
            let slot = self.ns_by_label.entry(k.clone()).or_default();
            slot.entry(v.clone()).or_default().insert(ns.clone());
        }
        let mut candidates: BTreeSet<usize> = self.matching(ns).iter().copied().collect();
        candidates.extend(&self.scan);
        for (k, v) in new.into_iter().flatten() {
            if let Some(gs) = self.by_label.get(k).and_then(|m| m.get(v)) {
                candidates.extend(gs);
            }
        }
        let mut flipped = Vec::new();
        for g in candidates {
            let group = self.groups[g].as_mut().expect("indexed group is live");
            let now = new.is_some_and(|l| group.selector.matches(l));
            if now == group.matching.contains(ns) {
                continue;
            }
            if now {
                group.matching.insert(ns.clone());
                self.of_ns.entry(ns.clone()).or_default().push(g);
            } else {
                group.matching.remove(ns);
                if let Some(v) = self.of_ns.get_mut(ns) {
                    v.retain(|x| *x != g);
                }
            }
            flipped.push((g, now));
        }
        if new.is_none() {
            self.of_ns.remove(ns);
        }
        flipped
    }
}
