//! Folding consecutive deltas into one: `apply(compose(d1, d2), s) == apply(d2, apply(d1, s))`.
//!
//! Composition is closed thanks to the two *replace* operations: a set removed and added again
//! becomes `sets_replaced` (its old members are not known here), and an endpoint removed and
//! added again becomes `EndpointDelta::Replace`. Everything else folds element by element:
//! member and rule changes as presence flips, isolation as the last word.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{
    apply::apply_endpoint_value, DeltaError, DirDelta, EndpointDelta, IsolationChange,
    MemberChange, SliceDelta,
};
use crate::slice::{AddressSet, Member, Rule, SetId};

/// What a composed delta does to one set.
enum SetOp {
    Add(AddressSet),
    Replace(AddressSet),
    Members(BTreeSet<Member>, BTreeSet<Member>),
    Remove,
}

fn flip<T: Ord + Clone>(
    a1: &BTreeSet<T>,
    r1: &BTreeSet<T>,
    a2: &[T],
    r2: &[T],
) -> (BTreeSet<T>, BTreeSet<T>) {
    let a2: BTreeSet<T> = a2.iter().cloned().collect();
    let r2: BTreeSet<T> = r2.iter().cloned().collect();
    let added = a1
        .difference(&r2)
        .chain(a2.difference(r1))
        .cloned()
        .collect();
    let removed = r1
        .difference(&a2)
        .chain(r2.difference(a1))
        .cloned()
        .collect();
    (added, removed)
}

fn apply_members(set: &mut AddressSet, added: &[Member], removed: &[Member]) {
    for m in removed {
        set.members.remove(m);
    }
    set.members.extend(added.iter().copied());
}

/// `d1` then `d2` as one delta. Errors when `d2` cannot follow `d1` (it was computed against
/// another slice).
pub fn compose(d1: &SliceDelta, d2: &SliceDelta) -> Result<SliceDelta, DeltaError> {
    let mut sets: BTreeMap<SetId, SetOp> = BTreeMap::new();
    for s in &d1.sets_added {
        sets.insert(s.id, SetOp::Add(AddressSet::clone(s)));
    }
    for s in &d1.sets_replaced {
        sets.insert(s.id, SetOp::Replace(AddressSet::clone(s)));
    }
    for c in &d1.members {
        let op = SetOp::Members(
            c.added.iter().copied().collect(),
            c.removed.iter().copied().collect(),
        );
        sets.insert(c.set, op);
    }
    for id in &d1.sets_removed {
        sets.insert(*id, SetOp::Remove);
    }
    for s in d2.sets_added.iter() {
        let op = match sets.remove(&s.id) {
            None => SetOp::Add(AddressSet::clone(s)),
            Some(SetOp::Remove) => SetOp::Replace(AddressSet::clone(s)),
            Some(_) => return Err(DeltaError::SetExists(s.id)),
        };
        sets.insert(s.id, op);
    }
    for s in d2.sets_replaced.iter() {
        let op = match sets.remove(&s.id) {
            Some(SetOp::Add(_)) => SetOp::Add(AddressSet::clone(s)),
            Some(SetOp::Remove) => return Err(DeltaError::SetMissing(s.id)),
            _ => SetOp::Replace(AddressSet::clone(s)),
        };
        sets.insert(s.id, op);
    }
    for c in &d2.members {
        let op = match sets.remove(&c.set) {
            None => SetOp::Members(
                c.added.iter().copied().collect(),
                c.removed.iter().copied().collect(),
            ),
            Some(SetOp::Add(mut s)) => {
                apply_members(&mut s, &c.added, &c.removed);
                SetOp::Add(s)
            }
            Some(SetOp::Replace(mut s)) => {
                apply_members(&mut s, &c.added, &c.removed);
                SetOp::Replace(s)
            }
            Some(SetOp::Members(a1, r1)) => {
                let (a, r) = flip(&a1, &r1, &c.added, &c.removed);
                SetOp::Members(a, r)
            }
            Some(SetOp::Remove) => return Err(DeltaError::SetMissing(c.set)),
        };
        sets.insert(c.set, op);
    }
    for id in &d2.sets_removed {
        match sets.remove(id) {
            Some(SetOp::Add(_)) => {} // added and removed: nothing
            Some(SetOp::Remove) => return Err(DeltaError::SetMissing(*id)),
            _ => {
                sets.insert(*id, SetOp::Remove);
            }
        }
    }

    let mut eps: BTreeMap<Ipv4Addr, EndpointDelta> =
        d1.endpoints.iter().map(|e| (e.ip(), e.clone())).collect();
    for e2 in &d2.endpoints {
        let ip = e2.ip();
        let next = match eps.remove(&ip) {
            None => Some(e2.clone()),
            Some(e1) => compose_endpoint(e1, e2)?,
        };
        if let Some(e) = next {
            eps.insert(ip, e);
        }
    }

    let mut out = SliceDelta::default();
    for (id, op) in sets {
        match op {
            SetOp::Add(s) => out.sets_added.push(Arc::new(s)),
            SetOp::Replace(s) => out.sets_replaced.push(Arc::new(s)),
            SetOp::Members(a, r) => {
                if !a.is_empty() || !r.is_empty() {
                    out.members.push(Arc::new(MemberChange {
                        set: id,
                        added: a.into_iter().collect(),
                        removed: r.into_iter().collect(),
                    }));
                }
            }
            SetOp::Remove => out.sets_removed.push(id),
        }
    }
    out.endpoints = eps.into_values().collect();
    Ok(out)
}

/// One endpoint's change `e1` then `e2`; `None` when they cancel out.
fn compose_endpoint(
    e1: EndpointDelta,
    e2: &EndpointDelta,
) -> Result<Option<EndpointDelta>, DeltaError> {
    use EndpointDelta::*;
    let ip = e1.ip();
    Ok(match (e1, e2) {
        (Add { .. } | Replace { .. } | Change { .. }, Add { .. }) => {
            return Err(DeltaError::EndpointExists(ip))
        }
        (Remove { .. }, Change { .. } | Replace { .. } | Remove { .. }) => {
            return Err(DeltaError::EndpointMissing(ip))
        }
        (Remove { .. }, Add { endpoint, .. }) => Some(Replace {
            ip,
            endpoint: endpoint.clone(),
        }),
        (Add { .. }, Remove { .. }) => None,
        (_, Remove { .. }) => Some(Remove { ip }),
        (Add { .. }, Replace { endpoint, .. }) => Some(Add {
            ip,
            endpoint: endpoint.clone(),
        }),
        (_, Replace { endpoint, .. }) => Some(Replace {
            ip,
            endpoint: endpoint.clone(),
        }),
        (Add { mut endpoint, .. }, change @ Change { .. }) => {
            apply_endpoint_value(&mut endpoint, change)?;
            Some(Add { ip, endpoint })
        }
        (Replace { mut endpoint, .. }, change @ Change { .. }) => {
            apply_endpoint_value(&mut endpoint, change)?;
            Some(Replace { ip, endpoint })
        }
        (
            Change {
                pod: p1,
                ingress: i1,
                egress: g1,
                ..
            },
            Change {
                pod: p2,
                ingress: i2,
                egress: g2,
                ..
            },
        ) => {
            let ingress = compose_dir(i1, i2);
            let egress = compose_dir(g1, g2);
            let pod = p2.clone().or(p1);
            let empty = pod.is_none() && ingress.is_empty() && egress.is_empty();
            (!empty).then_some(Change {
                ip,
                pod,
                ingress,
                egress,
            })
        }
    })
}

fn compose_dir(d1: DirDelta, d2: &DirDelta) -> DirDelta {
    let isolation = match &d2.isolation {
        IsolationChange::Unchanged => d1.isolation,
        later => later.clone(),
    };
    let a1: BTreeSet<Rule> = d1.added.into_iter().collect();
    let r1: BTreeSet<Rule> = d1.removed.into_iter().collect();
    let (added, removed) = flip(&a1, &r1, &d2.added, &d2.removed);
    DirDelta {
        isolation,
        added: added.into_iter().collect(),
        removed: removed.into_iter().collect(),
    }
}
