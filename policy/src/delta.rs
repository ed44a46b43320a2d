//! Slice deltas: what changes between two versions of one node's slice.
//!
//! A delta is canonical: [`diff`] of two slices is the only delta between them, and the engine's
//! incremental deltas equal it. [`apply`] replays it on a slice. Make-before-break order, for a
//! dataplane that applies a delta in steps:
//! 1. `sets_added`, the new members of `sets_replaced`, then the `added` half of `members`
//!    (addresses before the rules using them);
//! 2. rules added (`EndpointDelta::Add` rules, `DirDelta::added`);
//! 3. endpoint headers and isolation (`Add`, `Replace`, `Change.isolation`): an endpoint
//!    becomes isolated only once its allow rules are in place;
//! 4. endpoint removals, then rules removed (`DirDelta::removed`): rules go before addresses;
//! 5. the `removed` half of `members` (and old members of `sets_replaced`), then
//!    `sets_removed`.
//!
//! [`compose`] folds consecutive deltas into one, for an agent that fell behind.

mod apply;
mod compose;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use apply::{apply, DeltaError};
pub use compose::compose;

use crate::digest::Accumulator;
use crate::model::{Name, ObjKey};
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
    /// Whatever endpoint is at this address is replaced. Only in composed deltas (an endpoint
    /// removed and added again); `diff` never produces it.
    Replace {
        ip: Ipv4Addr,
        endpoint: Endpoint,
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
            | EndpointDelta::Replace { ip, .. }
            | EndpointDelta::Remove { ip } => *ip,
        }
    }
}

/// The change from one slice version to another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceDelta {
    /// Sets the node did not hold before, with all their members. Sorted by id.
    pub sets_added: Vec<Arc<AddressSet>>,
    /// Held sets whose whole membership is replaced. Sorted by id. Only in composed deltas
    /// (a set removed and added again); `diff` never produces it.
    pub sets_replaced: Vec<Arc<AddressSet>>,
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
            && self.sets_replaced.is_empty()
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
