//! Slice deltas: what changes between two versions of one node's slice.
//!
//! A delta is canonical: [`diff`] of two slices is the only delta between them, and the engine's
//! incremental deltas equal it. [`apply`] replays it on a slice. Make-before-break order, for a
//! dataplane that applies a delta in steps:
//! 1. `sets_added`, then the `added` half of `members` (addresses before the rules using them);
//! 2. rules added (`EndpointDelta::Add` rules, `DirDelta::added`);
//! 3. endpoint headers and isolation (`Add`, `Change.isolation`): an endpoint becomes isolated
//!    only once its allow rules are in place;
//! 4. endpoint removals, then rules removed (`DirDelta::removed`): rules go before addresses;
//! 5. the `removed` half of `members`, then `sets_removed`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::Accumulator;
use crate::model::{Direction, Name, ObjKey};
use crate::slice::set::member_hash;
use crate::slice::{AddressSet, DirPolicy, Endpoint, Member, NodeSlice, Rule, SetId};

/// Members added to and removed from one address set. Shared (by `Arc`) between every node
/// delta of the same revision that carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    pub set: SetId,
    pub added: Vec<Member>,
    pub removed: Vec<Member>,
}

impl MemberChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// Digest change of a slice holding the set when this change applies.
    pub fn digest_part(&self) -> Accumulator {
        let added: Accumulator = self.added.iter().map(|m| member_hash(self.set, m)).sum();
        let removed: Accumulator = self.removed.iter().map(|m| member_hash(self.set, m)).sum();
        added.minus(removed)
    }
}

/// How an endpoint's isolation in one direction changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IsolationChange {
    Unchanged,
    /// Isolated (now, or still) by these policies.
    IsolatedBy(BTreeSet<Name>),
    /// No longer isolated.
    Released,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirDelta {
    pub isolation: IsolationChange,
    pub added: Vec<Rule>,
    pub removed: Vec<Rule>,
}

impl DirDelta {
    fn is_empty(&self) -> bool {
        self.isolation == IsolationChange::Unchanged
            && self.added.is_empty()
            && self.removed.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointDelta {
    Add {
        ip: Ipv4Addr,
        endpoint: Endpoint,
    },
    Change {
        ip: Ipv4Addr,
        /// The pod now at this address, when it is another pod than before.
        pod: Option<ObjKey>,
        ingress: DirDelta,
        egress: DirDelta,
    },
    Remove {
        ip: Ipv4Addr,
    },
}

impl EndpointDelta {
    pub fn ip(&self) -> Ipv4Addr {
        match self {
            EndpointDelta::Add { ip, .. }
            | EndpointDelta::Change { ip, .. }
            | EndpointDelta::Remove { ip } => *ip,
        }
    }
}

/// The change from one slice version to another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceDelta {
    /// Sets the node did not hold before, with all their members. Sorted by id.
    pub sets_added: Vec<Arc<AddressSet>>,
    /// Member changes of sets held before and after. Sorted by set id.
    pub members: Vec<Arc<MemberChange>>,
    /// Sorted by address.
    pub endpoints: Vec<EndpointDelta>,
    /// Sets the node no longer holds. Sorted.
    pub sets_removed: Vec<SetId>,
}

impl SliceDelta {
    pub fn is_empty(&self) -> bool {
        self.sets_added.is_empty()
            && self.members.is_empty()
            && self.endpoints.is_empty()
            && self.sets_removed.is_empty()
    }
}

/// Endpoint change between `old` and `new` at `ip`, if any.
pub fn diff_endpoint(
    ip: Ipv4Addr,
    old: Option<&Endpoint>,
    new: Option<&Endpoint>,
) -> Option<EndpointDelta> {
    match (old, new) {
        (None, None) => None,
        (Some(_), None) => Some(EndpointDelta::Remove { ip }),
        (None, Some(e)) => Some(EndpointDelta::Add {
            ip,
            endpoint: e.clone(),
        }),
        (Some(a), Some(b)) => {
            let ingress = diff_dir(a.ingress.as_deref(), b.ingress.as_deref());
            let egress = diff_dir(a.egress.as_deref(), b.egress.as_deref());
            let pod = (a.pod != b.pod).then(|| b.pod.clone());
            if pod.is_none() && ingress.is_empty() && egress.is_empty() {
                None
            } else {
                Some(EndpointDelta::Change {
                    ip,
                    pod,
                    ingress,
                    egress,
                })
            }
        }
    }
}

fn diff_dir(a: Option<&DirPolicy>, b: Option<&DirPolicy>) -> DirDelta {
    let empty = BTreeSet::new();
    let rules = |d: Option<&DirPolicy>| d.map(|d| &d.rules).unwrap_or(&empty).clone();
    let (ra, rb) = (rules(a), rules(b));
    let isolation = match (a, b) {
        (None, None) => IsolationChange::Unchanged,
        (Some(_), None) => IsolationChange::Released,
        (None, Some(b)) => IsolationChange::IsolatedBy(b.policies.clone()),
        (Some(a), Some(b)) if a.policies == b.policies => IsolationChange::Unchanged,
        (Some(_), Some(b)) => IsolationChange::IsolatedBy(b.policies.clone()),
    };
    DirDelta {
        isolation,
        added: rb.difference(&ra).cloned().collect(),
        removed: ra.difference(&rb).cloned().collect(),
    }
}

/// Members of a set held before (`a`) and after (`b`).
pub fn diff_members(
    set: SetId,
    a: &BTreeSet<Member>,
    b: &BTreeSet<Member>,
) -> Option<MemberChange> {
    let change = MemberChange {
        set,
        added: b.difference(a).copied().collect(),
        removed: a.difference(b).copied().collect(),
    };
    (!change.is_empty()).then_some(change)
}

/// The canonical delta taking `a` to `b` (node and version are not compared).
pub fn diff(a: &NodeSlice, b: &NodeSlice) -> SliceDelta {
    let mut d = SliceDelta::default();
    for (id, set) in &b.sets {
        match a.sets.get(id) {
            None => d.sets_added.push(Arc::new(set.clone())),
            Some(old) => {
                if let Some(c) = diff_members(*id, &old.members, &set.members) {
                    d.members.push(Arc::new(c));
                }
            }
        }
    }
    d.sets_removed = a
        .sets
        .keys()
        .filter(|id| !b.sets.contains_key(id))
        .copied()
        .collect();
    let ips: BTreeSet<&Ipv4Addr> = a.endpoints.keys().chain(b.endpoints.keys()).collect();
    d.endpoints = ips
        .into_iter()
        .filter_map(|ip| diff_endpoint(*ip, a.endpoints.get(ip), b.endpoints.get(ip)))
        .collect();
    d
}

/// A delta that does not fit the slice it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("address set {0} is added but already present")]
    SetExists(SetId),
    #[error("address set {0} is changed or removed but not present")]
    SetMissing(SetId),
    #[error("member {1} of set {0} is added but already present")]
    MemberExists(SetId, Member),
    #[error("member {1} of set {0} is removed but not present")]
    MemberMissing(SetId, Member),
    #[error("endpoint {0} is added but already present")]
    EndpointExists(Ipv4Addr),
    #[error("endpoint {0} is changed or removed but not present")]
    EndpointMissing(Ipv4Addr),
    #[error("endpoint {0} {1}: rule change does not fit ({2})")]
    Rules(Ipv4Addr, Direction, &'static str),
}

/// Apply `d` to `s`, checking that it fits; returns the change of the slice's digest
/// accumulator. On error `s` may be partly changed: callers apply to a copy or discard.
pub fn apply(s: &mut NodeSlice, d: &SliceDelta) -> Result<Accumulator, DeltaError> {
    let mut acc = Accumulator::default();
    for set in &d.sets_added {
        if s.sets.insert(set.id, AddressSet::clone(set)).is_some() {
            return Err(DeltaError::SetExists(set.id));
        }
        acc.add(set.digest_part());
    }
    for c in &d.members {
        let set = s
            .sets
            .get_mut(&c.set)
            .ok_or(DeltaError::SetMissing(c.set))?;
        for m in &c.added {
            if !set.members.insert(*m) {
                return Err(DeltaError::MemberExists(c.set, *m));
            }
        }
        for m in &c.removed {
            if !set.members.remove(m) {
                return Err(DeltaError::MemberMissing(c.set, *m));
            }
        }
        acc.add(c.digest_part());
    }
    for e in &d.endpoints {
        acc.add(apply_endpoint(&mut s.endpoints, e)?);
    }
    for id in &d.sets_removed {
        let set = s.sets.remove(id).ok_or(DeltaError::SetMissing(*id))?;
        acc.sub(set.digest_part());
    }
    Ok(acc)
}

fn apply_endpoint(
    eps: &mut BTreeMap<Ipv4Addr, Endpoint>,
    e: &EndpointDelta,
) -> Result<Accumulator, DeltaError> {
    match e {
        EndpointDelta::Add { ip, endpoint } => {
            if eps.insert(*ip, endpoint.clone()).is_some() {
                return Err(DeltaError::EndpointExists(*ip));
            }
            Ok(endpoint.digest_part(*ip))
        }
        EndpointDelta::Remove { ip } => {
            let old = eps.remove(ip).ok_or(DeltaError::EndpointMissing(*ip))?;
            Ok(Accumulator::default().minus(old.digest_part(*ip)))
        }
        EndpointDelta::Change {
            ip,
            pod,
            ingress,
            egress,
        } => {
            let ep = eps.get_mut(ip).ok_or(DeltaError::EndpointMissing(*ip))?;
            let before = ep.digest_part(*ip);
            if let Some(pod) = pod {
                ep.pod = pod.clone();
            }
            for (dir, dd) in [(Direction::Ingress, ingress), (Direction::Egress, egress)] {
                apply_dir(*ip, dir, ep.dir_mut(dir), dd)?;
            }
            if ep.ingress.is_none() && ep.egress.is_none() {
                return Err(DeltaError::Rules(
                    *ip,
                    Direction::Ingress,
                    "endpoint left with no isolation",
                ));
            }
            Ok(ep.digest_part(*ip).minus(before))
        }
    }
}

fn apply_dir(
    ip: Ipv4Addr,
    dir: Direction,
    slot: &mut Option<Arc<DirPolicy>>,
    dd: &DirDelta,
) -> Result<(), DeltaError> {
    let err = |what| DeltaError::Rules(ip, dir, what);
    match &dd.isolation {
        IsolationChange::Unchanged => {}
        IsolationChange::IsolatedBy(policies) => {
            Arc::make_mut(slot.get_or_insert_with(Default::default)).policies = policies.clone();
        }
        IsolationChange::Released => {
            if slot.is_none() {
                return Err(err("released but not isolated"));
            }
        }
    }
    if !dd.added.is_empty() || !dd.removed.is_empty() {
        let dp = Arc::make_mut(slot.as_mut().ok_or(err("rules changed but not isolated"))?);
        for r in &dd.removed {
            if !dp.rules.remove(r) {
                return Err(err("removed rule not present"));
            }
        }
        for r in &dd.added {
            if !dp.rules.insert(r.clone()) {
                return Err(err("added rule already present"));
            }
        }
    }
    if dd.isolation == IsolationChange::Released {
        if slot.as_ref().is_some_and(|d| !d.rules.is_empty()) {
            return Err(err("released with rules left"));
        }
        *slot = None;
    }
    Ok(())
}
