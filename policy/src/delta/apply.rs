//! Replaying a delta on a slice, checking that it fits.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{DirDelta, EndpointDelta, IsolationChange, SliceDelta};
use crate::digest::Accumulator;
use crate::model::Direction;
use crate::slice::{AddressSet, DirPolicy, Endpoint, Member, NodeSlice, SetId};

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
    for set in &d.sets_replaced {
        let old = s
            .sets
            .get_mut(&set.id)
            .ok_or(DeltaError::SetMissing(set.id))?;
        acc.sub(old.digest_part());
        *old = AddressSet::clone(set);
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
        EndpointDelta::Replace { ip, endpoint } => {
            let old = eps.get_mut(ip).ok_or(DeltaError::EndpointMissing(*ip))?;
            let before = old.digest_part(*ip);
            *old = endpoint.clone();
            Ok(endpoint.digest_part(*ip).minus(before))
        }
        EndpointDelta::Remove { ip } => {
            let old = eps.remove(ip).ok_or(DeltaError::EndpointMissing(*ip))?;
            Ok(Accumulator::default().minus(old.digest_part(*ip)))
        }
        change @ EndpointDelta::Change { ip, .. } => {
            let ep = eps.get_mut(ip).ok_or(DeltaError::EndpointMissing(*ip))?;
            let before = ep.digest_part(*ip);
            apply_endpoint_value(ep, change)?;
            Ok(ep.digest_part(*ip).minus(before))
        }
    }
}

/// Apply an `EndpointDelta::Change` to an endpoint value (other variants are ignored).
pub(super) fn apply_endpoint_value(
    ep: &mut Endpoint,
    change: &EndpointDelta,
) -> Result<(), DeltaError> {
    let EndpointDelta::Change {
        ip,
        pod,
        ingress,
        egress,
    } = change
    else {
        return Ok(());
    };
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
    Ok(())
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
        // Idempotent: a composed delta may release a direction that was not isolated at its
        // start (isolated, then released, within the composed span).
        IsolationChange::Released => {}
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
