//! The address-set registry: every set some policy references, its members (counted, since
//! two pods may share an address), and indexes from a namespace to the sets a pod of that
//! namespace might belong to, so a pod change looks only at candidate sets.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};

use super::groups::Groups;
use crate::digest::Accumulator;
use crate::model::{Labels, Name, Pod};
use crate::slice::set::{member_hash, set_hash};
use crate::slice::{AddressSet, Member, NsScope, SetDef, SetId};

/// Which pods a set draws members from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    /// No pods (an ipBlock).
    Static,
    /// Pods of one namespace.
    Exact(Name),
    /// Pods of namespaces matching a selector (the group's index).
    Group(usize),
    /// Pods of every namespace.
    All,
}

pub(crate) struct SetEntry {
    pub def: SetDef,
    scope: Scope,
    /// Compiled policies referencing the set; at 0 it is dropped at the end of the revision.
    pub policy_refs: u32,
    /// Member → number of pods contributing it (ipBlock members count 1).
    pub members: BTreeMap<Member, u32>,
    /// Digest part of the set as a slice holds it (definition plus present members).
    pub acc: Accumulator,
    /// Nodes holding the set.
    pub node_refs: FxHashSet<u32>,
}

impl SetEntry {
    pub fn snapshot(&self, id: SetId) -> AddressSet {
        AddressSet {
            id,
            def: self.def.clone(),
            members: self.members.keys().copied().collect(),
        }
    }
}

/// Presence of each changed member before the revision began.
pub(crate) type MemberLog = FxHashMap<SetId, BTreeMap<Member, bool>>;

#[derive(Default)]
pub(crate) struct Sets {
    pub entries: FxHashMap<SetId, SetEntry>,
    by_ns: FxHashMap<Name, Vec<SetId>>,
    groups: Groups,
    global: Vec<SetId>,
    /// Reused buffers for a pod's contributions before and after a change.
    scratch: (Vec<Member>, Vec<Member>),
}

/// Read access to the cluster objects a set's members come from.
pub(crate) struct World<'a> {
    pub namespaces: &'a FxHashMap<Name, Labels>,
    pub pods: &'a FxHashMap<Name, BTreeMap<Name, Pod>>,
}

impl World<'_> {
    fn ns_pods(&self, ns: &str) -> impl Iterator<Item = &Pod> {
        self.pods.get(ns).into_iter().flat_map(|m| m.values())
    }
}

/// The members `pod` gives a set, assuming the set's namespace scope takes the pod's namespace
/// (callers only ask sets whose scope does: see `pod_changed`).
fn contribution(def: &SetDef, pod: &Pod, out: &mut Vec<Member>) {
    let Some(ip) = pod.peer_ip() else { return };
    if !def.admits(ip, &pod.labels) {
        return;
    }
    match def {
        SetDef::Pods { .. } => out.push(Member::host(ip)),
        SetDef::NamedPort { protocol, name, .. } => {
            out.extend(
                pod.resolve_port(name, *protocol)
                    .map(|p| Member::Port(ip, p)),
            );
        }
        SetDef::IpBlock { .. } => {}
    }
}

fn adjust(id: SetId, e: &mut SetEntry, m: Member, up: bool, log: Option<&mut MemberLog>) {
    let present_before = e.members.contains_key(&m);
    if up {
        *e.members.entry(m).or_insert(0) += 1;
    } else {
        let Some(c) = e.members.get_mut(&m) else {
            debug_assert!(false, "removing absent member {m} of {id}");
            return;
        };
        *c -= 1;
        if *c == 0 {
            e.members.remove(&m);
        }
    }
    let present_after = e.members.contains_key(&m);
    if present_before != present_after {
        let h = member_hash(id, &m);
        if present_after {
            e.acc.add(h);
        } else {
            e.acc.sub(h);
        }
        if let Some(log) = log {
            log.entry(id)
                .or_default()
                .entry(m)
                .or_insert(present_before);
        }
    }
}

impl Sets {
    /// Take a reference on set `id` (defined by `def`), creating it (with its members) if
    /// new. Returns whether it was created.
    pub fn register(&mut self, id: SetId, def: &SetDef, world: &World) -> bool {
        debug_assert_eq!(id, def.id());
        if let Some(e) = self.entries.get_mut(&id) {
            e.policy_refs += 1;
            return false;
        }
        let scope = self.scope_for(def, world.namespaces, id);
        let mut members: BTreeMap<Member, u32> =
            def.static_members().into_iter().map(|m| (m, 1)).collect();
        let mut buf = Vec::new();
        let mut add_pods = |pods: &mut dyn Iterator<Item = &Pod>| {
            for pod in pods {
                buf.clear();
                contribution(def, pod, &mut buf);
                for m in &buf {
                    *members.entry(*m).or_insert(0) += 1;
                }
            }
        };
        match &scope {
            Scope::Static => {}
            Scope::Exact(ns) => add_pods(&mut world.ns_pods(ns)),
            Scope::Group(g) => {
                let group = self.groups.get(*g);
                let mut matching: Vec<&Name> = group.matching.iter().collect();
                matching.sort();
                for ns in matching {
                    add_pods(&mut world.ns_pods(ns));
                }
            }
            Scope::All => add_pods(&mut world.pods.values().flat_map(|m| m.values())),
        }
        let acc = set_hash(id, def).plus(members.keys().map(|m| member_hash(id, m)).sum());
        self.entries.insert(
            id,
            SetEntry {
                def: def.clone(),
                scope,
                policy_refs: 1,
                members,
                acc,
                node_refs: FxHashSet::default(),
            },
        );
        true
    }

    fn scope_for(
        &mut self,
        def: &SetDef,
        namespaces: &FxHashMap<Name, Labels>,
        id: SetId,
    ) -> Scope {
        let ns_scope = match def {
            SetDef::IpBlock { .. } => return Scope::Static,
            SetDef::Pods { namespaces: ns, .. } => ns,
            SetDef::NamedPort { within, .. } => match within.as_deref() {
                Some(SetDef::Pods { namespaces: ns, .. }) => ns,
                _ => {
                    self.global.push(id);
                    return Scope::All;
                }
            },
        };
        match ns_scope {
            NsScope::Name(n) => {
                self.by_ns.entry(n.clone()).or_default().push(id);
                Scope::Exact(n.clone())
            }
            NsScope::Selector(sel) => Scope::Group(self.groups.join(sel, id, namespaces)),
        }
    }

    /// Drop a reference; true when the set is now unreferenced by policies.
    pub fn release(&mut self, id: SetId) -> bool {
        let e = self.entries.get_mut(&id).expect("released set exists");
        e.policy_refs -= 1;
        e.policy_refs == 0
    }

    /// Remove a set no policy references (and no node holds).
    pub fn remove(&mut self, id: SetId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        debug_assert!(
            e.node_refs.is_empty(),
            "set {id} removed while nodes hold it"
        );
        let drop_id = |v: &mut Vec<SetId>| v.retain(|s| *s != id);
        match e.scope {
            Scope::Static => {}
            Scope::Exact(n) => {
                if let Some(v) = self.by_ns.get_mut(&n) {
                    drop_id(v);
                    if v.is_empty() {
                        self.by_ns.remove(&n);
                    }
                }
            }
            Scope::All => drop_id(&mut self.global),
            Scope::Group(g) => self.groups.leave(g, id),
        }
    }

    /// A pod of namespace `ns` changed from `old` to `new`: update the sets it may belong to.
    pub fn pod_changed(
        &mut self,
        ns: &Name,
        old: Option<&Pod>,
        new: Option<&Pod>,
        mut log: Option<&mut MemberLog>,
    ) {
        let Sets {
            entries,
            by_ns,
            groups,
            global,
            scratch: (before, after),
        } = self;
        let same_ns = by_ns.get(ns).map_or(&[][..], Vec::as_slice);
        let grouped = groups
            .matching(ns)
            .iter()
            .flat_map(|g| &groups.get(*g).sets);
        for &id in same_ns.iter().chain(grouped).chain(global.iter()) {
            let e = entries.get_mut(&id).expect("indexed set exists");
            before.clear();
            after.clear();
            if let Some(p) = old {
                contribution(&e.def, p, before);
            }
            if let Some(p) = new {
                contribution(&e.def, p, after);
            }
            apply_change(id, e, before, after, log.as_deref_mut());
        }
    }

    /// Namespace `ns` changed from `old` to `new` labels (`None`: not known). Groups whose
    /// match changed gain or lose the namespace's pods.
    pub fn namespace_changed(
        &mut self,
        ns: &Name,
        old: Option<&Labels>,
        new: Option<&Labels>,
        world: &World,
        mut log: Option<&mut MemberLog>,
    ) {
        let mut buf = Vec::new();
        for (g, now) in self.groups.namespace_changed(ns, old, new) {
            for &id in &self.groups.get(g).sets {
                let e = self.entries.get_mut(&id).expect("grouped set exists");
                for pod in world.ns_pods(ns) {
                    buf.clear();
                    contribution(&e.def, pod, &mut buf);
                    let (before, after) = if now {
                        (&[][..], &buf[..])
                    } else {
                        (&buf[..], &[][..])
                    };
                    apply_change(id, e, before, after, log.as_deref_mut());
                }
            }
        }
    }
}

fn apply_change(
    id: SetId,
    e: &mut SetEntry,
    before: &[Member],
    after: &[Member],
    mut log: Option<&mut MemberLog>,
) {
    if before == after {
        return;
    }
    for m in before {
        adjust(id, e, *m, false, log.as_deref_mut());
    }
    for m in after {
        adjust(id, e, *m, true, log.as_deref_mut());
    }
}
