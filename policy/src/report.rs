//! One flow's explanation as a user reads it, the same offline (`palisadectl evaluate --from
//! --to`) and online (`palisadectl explain`, the controller's `ExplainFlow`): one schema,
//! serialised as JSON by both.
//!
//! The verdict comes from the compiled slices ([`crate::cluster`]), exactly as the datapath
//! reaches it; this module only explains it in the policies' own terms: which rules allowed
//! the flow, and for a denied direction every rule of the isolating policies with what did
//! not match it (the peer, the port or protocol, an `except`), named ports with the number
//! they resolved to, policy names qualified by namespace.

mod rules;

use std::borrow::Cow;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cluster::{FlowExplanation, NodeCheck, PodInfo};
use crate::engine::Engine;
use crate::eval::DirVerdict;
use crate::model::{Direction, ObjKey, Protocol};
use crate::slice::NodeSlice;

pub use rules::{Part, RuleMiss, RuleView};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowReport {
    pub from: Side,
    pub to: Side,
    pub protocol: Protocol,
    pub port: u16,
    pub allowed: bool,
    pub self_traffic: bool,
    pub egress: Check,
    pub ingress: Check,
}

/// One end of the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    pub ip: Ipv4Addr,
    /// `namespace/name` when the address is a pod's.
    pub pod: Option<String>,
    pub node: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// No node checks this direction here (`reason` says why).
    NotChecked,
    NotIsolated,
    Allowed,
    Denied,
}

/// One direction's check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub result: Outcome,
    /// The node that checks it.
    pub node: Option<String>,
    /// The pod whose direction it is.
    pub endpoint: Option<String>,
    /// Why the direction is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policies isolating the endpoint in this direction, `namespace/name`.
    pub policies: Vec<String>,
    /// Allowed: the rules that allow the flow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_by: Vec<RuleView>,
    /// Denied: every rule of the isolating policies, and what did not match it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_matched: Vec<RuleMiss>,
}

impl Check {
    fn not_checked(reason: String) -> Check {
        Check {
            result: Outcome::NotChecked,
            node: None,
            endpoint: None,
            reason: Some(reason),
            policies: Vec::new(),
            allowed_by: Vec::new(),
            not_matched: Vec::new(),
        }
    }
}

/// The report of `e` (a verdict from slices), in `engine`'s terms. `slice_of` gives the
/// slice of a node named by a check. With `only_node`, the explanation was asked against
/// that node alone: a side elsewhere is said to be checked elsewhere.
pub fn report<'a>(
    engine: &Engine,
    e: &FlowExplanation,
    protocol: Protocol,
    only_node: Option<&str>,
    slice_of: impl Fn(&str) -> Option<Cow<'a, NodeSlice>>,
) -> FlowReport {
    let side = |p: &Option<PodInfo>, ip: Ipv4Addr| Side {
        ip,
        pod: p.as_ref().map(|p| p.key.to_string()),
        node: p
            .as_ref()
            .and_then(|p| p.node.as_ref())
            .map(|n| n.to_string()),
    };
    let ctx = rules::Flow {
        engine,
        src: e.flow.src,
        dst: e.flow.dst,
        source: e.source.as_ref().and_then(|p| engine.pod(&p.key)),
        destination: e.destination.as_ref().and_then(|p| engine.pod(&p.key)),
        protocol,
        port: e.flow.port,
    };
    let direction = |dir: Direction, c: &Option<NodeCheck>, pod: &Option<PodInfo>| match c {
        Some(c) => check(&ctx, dir, c, slice_of(&c.node)),
        None => Check::not_checked(not_checked(dir, pod, only_node)),
    };
    FlowReport {
        from: side(&e.source, e.flow.src),
        to: side(&e.destination, e.flow.dst),
        protocol,
        port: e.flow.port,
        allowed: e.allowed,
        self_traffic: e.self_traffic,
        egress: direction(Direction::Egress, &e.egress, &e.source),
        ingress: direction(Direction::Ingress, &e.ingress, &e.destination),
    }
}

/// Why nothing checks `dir` of the side `pod`.
fn not_checked(dir: Direction, pod: &Option<PodInfo>, only_node: Option<&str>) -> String {
    let what = match dir {
        Direction::Egress => "source",
        Direction::Ingress => "destination",
    };
    match (pod, only_node) {
        (None, _) => format!("the {what} is not a pod, so no node checks its {dir}"),
        (Some(p), Some(node)) => match &p.node {
            Some(n) if **n != *node => {
                format!(
                    "{} is on node {n}, not on {node}: {n} checks its {dir}",
                    p.key
                )
            }
            _ => format!("{} is not on node {node}", p.key),
        },
        (Some(p), None) => format!("{} is not scheduled, so no node checks its {dir}", p.key),
    }
}

fn check(ctx: &rules::Flow, dir: Direction, c: &NodeCheck, slice: Option<Cow<NodeSlice>>) -> Check {
    let qualified = |endpoint: &ObjKey, names: &mut dyn Iterator<Item = String>| {
        names
            .map(|n| format!("{}/{n}", endpoint.namespace))
            .collect::<Vec<_>>()
    };
    let mut out = Check {
        result: Outcome::NotIsolated,
        node: Some(c.node.to_string()),
        endpoint: None,
        reason: None,
        policies: Vec::new(),
        allowed_by: Vec::new(),
        not_matched: Vec::new(),
    };
    match &c.verdict {
        DirVerdict::NotIsolated { endpoint } => out.endpoint = Some(endpoint.to_string()),
        DirVerdict::Allowed { endpoint, rules } => {
            out.result = Outcome::Allowed;
            out.endpoint = Some(endpoint.to_string());
            out.policies = slice
                .as_deref()
                .and_then(|s| s.endpoints.values().find(|e| &e.pod == endpoint))
                .and_then(|e| e.dir(dir))
                .map(|d| qualified(endpoint, &mut d.policies.iter().map(|p| p.to_string())))
                .unwrap_or_default();
            let mut seen = std::collections::BTreeSet::new();
            for r in rules {
                // A rule compiled into several slice rules (one per port) is shown once.
                if seen.insert((r.policy.clone(), r.index)) {
                    out.allowed_by
                        .push(ctx.view(endpoint, &r.policy, dir, r.index as usize));
                }
            }
        }
        DirVerdict::Denied { endpoint, policies } => {
            out.result = Outcome::Denied;
            out.endpoint = Some(endpoint.to_string());
            out.policies = qualified(endpoint, &mut policies.iter().map(|p| p.to_string()));
            for p in policies {
                out.not_matched.extend(ctx.misses(endpoint, p, dir));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
