//! `evaluate(slice, flow)`: the verdict one node's slice gives a new connection (contracts.md
//! §4). This is the datapath's specification: the eBPF programs and the lowered map
//! image ([`crate::lower`]) must agree with it on every packet.
//!
//! A node checks a flow's egress when the source is one of its isolated endpoints, and its
//! ingress when the destination is; a flow between two nodes is allowed when the source
//! node's egress check and the destination node's ingress check both pass
//! ([`crate::cluster`]). Traffic from a pod to itself is always allowed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::model::{Direction, Name, ObjKey};
use crate::slice::{NodeSlice, PeerRef, PortMatch, Rule};

/// A new connection's first packet, as the datapath sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP…).
    pub protocol: u8,
    /// Destination port; 0 for protocols without ports.
    pub port: u16,
}

/// One direction's check on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum DirVerdict {
    /// The endpoint is not isolated in this direction: everything passes.
    NotIsolated { endpoint: ObjKey },
    /// Isolated, and these rules allow the flow.
    Allowed { endpoint: ObjKey, rules: Vec<Rule> },
    /// Isolated by these policies and no rule of theirs allows the flow.
    Denied {
        endpoint: ObjKey,
        policies: BTreeSet<Name>,
    },
}

impl DirVerdict {
    pub fn passes(&self) -> bool {
        !matches!(self, DirVerdict::Denied { .. })
    }
}

/// What a node's slice says about a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Source and destination are the same address.
    pub self_traffic: bool,
    /// `None` when the source is not an endpoint of this slice.
    pub egress: Option<DirVerdict>,
    /// `None` when the destination is not an endpoint of this slice.
    pub ingress: Option<DirVerdict>,
}

impl Explanation {
    pub fn verdict(&self) -> Verdict {
        if self.self_traffic {
            return Verdict::Allow;
        }
        for (dir, v) in [
            (Direction::Egress, &self.egress),
            (Direction::Ingress, &self.ingress),
        ] {
            if let Some(DirVerdict::Denied { endpoint, policies }) = v {
                return Verdict::Deny(Denial {
                    direction: dir,
                    endpoint: endpoint.clone(),
                    policies: policies.clone(),
                });
            }
        }
        Verdict::Allow
    }
}

/// Why a flow is denied: the first direction (egress, then ingress) that denies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub direction: Direction,
    pub endpoint: ObjKey,
    /// The policies isolating `endpoint` in `direction`.
    pub policies: BTreeSet<Name>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Allow,
    Deny(Denial),
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

/// The verdict `slice` gives `flow`.
pub fn evaluate(slice: &NodeSlice, flow: &Flow) -> Verdict {
    explain(slice, flow).verdict()
}

/// The verdict with its reasons: the direction checks and every rule that allows the flow.
pub fn explain(slice: &NodeSlice, flow: &Flow) -> Explanation {
    Explanation {
        self_traffic: flow.src == flow.dst,
        egress: check(slice, flow, Direction::Egress),
        ingress: check(slice, flow, Direction::Ingress),
    }
}

/// One direction of `flow` against `slice`, if the local side is an endpoint here.
pub fn check(slice: &NodeSlice, flow: &Flow, dir: Direction) -> Option<DirVerdict> {
    let (local, peer) = match dir {
        Direction::Egress => (flow.src, flow.dst),
        Direction::Ingress => (flow.dst, flow.src),
    };
    let ep = slice.endpoints.get(&local)?;
    let endpoint = ep.pod.clone();
    let Some(dp) = ep.dir(dir) else {
        return Some(DirVerdict::NotIsolated { endpoint });
    };
    let rules: Vec<Rule> = dp
        .rules
        .iter()
        .filter(|r| rule_matches(slice, r, peer, flow.protocol, flow.port))
        .cloned()
        .collect();
    Some(if rules.is_empty() {
        DirVerdict::Denied {
            endpoint,
            policies: dp.policies.clone(),
        }
    } else {
        DirVerdict::Allowed { endpoint, rules }
    })
}

/// Does `rule` allow traffic with `peer` on `protocol`/`port`?
pub fn rule_matches(
    slice: &NodeSlice,
    rule: &Rule,
    peer: Ipv4Addr,
    protocol: u8,
    port: u16,
) -> bool {
    let set = match rule.peer {
        PeerRef::Any => None,
        // A rule naming a set the slice lacks matches nothing (fail closed).
        PeerRef::Set(id) => match slice.sets.get(&id) {
            Some(s) => Some(s),
            None => return false,
        },
    };
    let peer_in = || set.is_none_or(|s| s.contains(peer));
    match &rule.ports {
        PortMatch::Any => peer_in(),
        PortMatch::Range {
            protocol: p,
            from,
            to,
        } => p.number() == protocol && (*from..=*to).contains(&port) && peer_in(),
        PortMatch::Named { protocol: p } => {
            p.number() == protocol && set.is_some_and(|s| s.ports_of(peer).any(|n| n == port))
        }
    }
}
