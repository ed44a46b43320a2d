//! The map operations that take a dataplane from one image to another, in make-before-break
//! order: a flow that both the old and the new image allow is allowed at every step between
//! them (property-tested in `policy/tests/lowering.rs`).
//!
//! 1. Rules added. They only allow more, for identity numbers that either no address has yet
//!    or that keep their membership (see [`super::Identities`]).
//! 2. Endpoints relaxed: an endpoint is isolated in a direction only if both images isolate it
//!    there (an endpoint the new image drops is deleted here).
//! 3. Identities set, longest prefixes first, so an address always resolves to its old
//!    identity or to its final new one, never to a shorter prefix's new identity on the way.
//! 4. Identities deleted: addresses under a dropped prefix fall to their final new identity.
//! 5. Endpoints set to their new isolation (tightening, and new endpoints).
//! 6. Rules deleted.
//!
//! At every step an address has its old identity while its endpoint's isolation is no wider
//! than the old one (old rules present), or its new identity (new rules present, isolation no
//! wider than the new one). A flow that neither image allows can pass for the moments of an
//! update that changes both an address's membership and the rules for a membership it keeps:
//! maps are not a transaction, and this order prefers that to dropping allowed traffic.

use super::{EndpointFlags, MapImage, RuleKey};
use crate::net::Prefix;
use std::net::Ipv4Addr;

/// One write to a dataplane's maps.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    AddRule(RuleKey),
    SetIdentity(Prefix, u32),
    SetEndpoint(Ipv4Addr, EndpointFlags),
    DeleteEndpoint(Ipv4Addr),
    DeleteIdentity(Prefix),
    DeleteRule(RuleKey),
}

/// For logs and errors: what the write does, in words.
impl std::fmt::Display for MapOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapOp::AddRule(_) => f.write_str("add a rule entry"),
            MapOp::SetIdentity(p, id) => write!(f, "set the identity of {p} to {id}"),
            MapOp::SetEndpoint(ip, _) => write!(f, "set endpoint {ip}"),
            MapOp::DeleteEndpoint(ip) => write!(f, "delete endpoint {ip}"),
            MapOp::DeleteIdentity(p) => write!(f, "delete the identity of {p}"),
            MapOp::DeleteRule(_) => f.write_str("delete a rule entry"),
        }
    }
}

impl MapOp {
    /// The operation that undoes this one, given the image it was applied to.
    pub fn undo(&self, before: &MapImage) -> Option<MapOp> {
        Some(match *self {
            MapOp::AddRule(k) if !before.rules.contains(&k) => MapOp::DeleteRule(k),
            MapOp::DeleteRule(k) if before.rules.contains(&k) => MapOp::AddRule(k),
            MapOp::SetIdentity(p, _) | MapOp::DeleteIdentity(p) => {
                match before.identities.get(&p) {
                    Some(id) => MapOp::SetIdentity(p, *id),
                    None => MapOp::DeleteIdentity(p),
                }
            }
            MapOp::SetEndpoint(ip, _) | MapOp::DeleteEndpoint(ip) => {
                match before.endpoints.get(&ip) {
                    Some(f) => MapOp::SetEndpoint(ip, *f),
                    None => MapOp::DeleteEndpoint(ip),
                }
            }
            _ => return None,
        })
    }
}

impl MapImage {
    pub fn apply(&mut self, op: &MapOp) {
        match *op {
            MapOp::AddRule(k) => {
                self.rules.insert(k);
            }
            MapOp::DeleteRule(k) => {
                self.rules.remove(&k);
            }
            MapOp::SetIdentity(p, id) => {
                self.identities.insert(p, id);
            }
            MapOp::DeleteIdentity(p) => {
                self.identities.remove(&p);
            }
            MapOp::SetEndpoint(ip, f) => {
                self.endpoints.insert(ip, f);
            }
            MapOp::DeleteEndpoint(ip) => {
                self.endpoints.remove(&ip);
            }
        }
    }
}

/// The operations taking `old` to `new`, in make-before-break order. Empty when they are equal.
pub fn plan(old: &MapImage, new: &MapImage) -> Vec<MapOp> {
    let mut ops: Vec<MapOp> = new
        .rules
        .difference(&old.rules)
        .map(|k| MapOp::AddRule(*k))
        .collect();
    for (ip, was) in &old.endpoints {
        match new.endpoints.get(ip) {
            None => ops.push(MapOp::DeleteEndpoint(*ip)),
            Some(will) if relaxed(was, will) != *was => {
                ops.push(MapOp::SetEndpoint(*ip, relaxed(was, will)))
            }
            Some(_) => {}
        }
    }
    let mut set: Vec<(Prefix, u32)> = new
        .identities
        .iter()
        .filter(|(p, id)| old.identities.get(p) != Some(id))
        .map(|(p, id)| (*p, *id))
        .collect();
    set.sort_by_key(|(p, _)| std::cmp::Reverse(p.prefix_len()));
    ops.extend(set.into_iter().map(|(p, id)| MapOp::SetIdentity(p, id)));
    ops.extend(
        old.identities
            .keys()
            .filter(|p| !new.identities.contains_key(p))
            .map(|p| MapOp::DeleteIdentity(*p)),
    );
    for (ip, will) in &new.endpoints {
        let now = old.endpoints.get(ip).map(|was| relaxed(was, will));
        if now != Some(*will) {
            ops.push(MapOp::SetEndpoint(*ip, *will));
        }
    }
    ops.extend(
        old.rules
            .difference(&new.rules)
            .map(|k| MapOp::DeleteRule(*k)),
    );
    ops
}

/// Isolated (and failed closed) only where both are.
fn relaxed(was: &EndpointFlags, will: &EndpointFlags) -> EndpointFlags {
    EndpointFlags {
        ingress_isolated: was.ingress_isolated && will.ingress_isolated,
        egress_isolated: was.egress_isolated && will.egress_isolated,
        fail_closed: was.fail_closed && will.fail_closed,
    }
}
