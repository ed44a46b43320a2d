//! A policy rule against one flow, in the policy's own terms: what each peer and port is,
//! whether it matches, and why not.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::model::{
    Direction, Labels, NetworkPolicy, ObjKey, Peer, Pod, PolicyRule, PortRef, PortSpec, Protocol,
    Selector,
};

/// A rule that allows the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    /// `namespace/name`.
    pub policy: String,
    /// `spec.ingress[0]`.
    pub rule: String,
    /// The peers (`from`/`to`) as written, `any peer` when none are.
    pub peers: String,
    /// The ports, named ones with the number they resolved to.
    pub ports: String,
}

/// A rule of an isolating policy that does not allow the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleMiss {
    pub policy: String,
    pub rule: String,
    pub peers: Part,
    pub ports: Part,
}

/// Whether one part of a rule (its peers, its ports) matches the flow, and why (not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    pub matched: bool,
    pub why: String,
}

/// The flow, with the pods at its ends.
pub(super) struct Flow<'a> {
    pub engine: &'a Engine,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub source: Option<&'a Pod>,
    pub destination: Option<&'a Pod>,
    pub protocol: Protocol,
    pub port: u16,
}

impl<'a> Flow<'a> {
    /// The other end, seen from the endpoint checking `dir`.
    fn peer(&self, dir: Direction) -> (Ipv4Addr, Option<&'a Pod>) {
        match dir {
            Direction::Ingress => (self.src, self.source),
            Direction::Egress => (self.dst, self.destination),
        }
    }

    fn rule(
        &self,
        endpoint: &ObjKey,
        policy: &str,
        dir: Direction,
        index: usize,
    ) -> Option<(&'a PolicyRule, &'a NetworkPolicy)> {
        let p = self
            .engine
            .policy(&ObjKey::new(&endpoint.namespace, policy))?;
        Some((p.rules(dir)?.get(index)?, p))
    }

    /// An allowing rule, described.
    pub fn view(&self, endpoint: &ObjKey, policy: &str, dir: Direction, index: usize) -> RuleView {
        let name = format!("{}/{policy}", endpoint.namespace);
        let rule = format!("spec.{dir}[{index}]");
        let Some((r, p)) = self.rule(endpoint, policy, dir, index) else {
            return RuleView {
                policy: name,
                rule,
                peers: "(the policy changed since)".into(),
                ports: String::new(),
            };
        };
        let peers = match &r.peers {
            None => "any peer".to_string(),
            Some(ps) => ps
                .iter()
                .map(|x| describe_peer(x, p))
                .collect::<Vec<_>>()
                .join("; "),
        };
        RuleView {
            policy: name,
            rule,
            peers,
            ports: self.ports(r, dir).why,
        }
    }

    /// Every rule of `policy` in `dir`, and what does not match.
    pub fn misses(&self, endpoint: &ObjKey, policy: &str, dir: Direction) -> Vec<RuleMiss> {
        let key = ObjKey::new(&endpoint.namespace, policy);
        let Some(p) = self.engine.policy(&key) else {
            return Vec::new();
        };
        p.rules(dir)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, r)| RuleMiss {
                policy: key.to_string(),
                rule: format!("spec.{dir}[{i}]"),
                peers: self.peers(r, p, dir),
                ports: self.ports(r, dir),
            })
            .collect()
    }

    fn peers(&self, r: &PolicyRule, policy: &NetworkPolicy, dir: Direction) -> Part {
        let Some(peers) = &r.peers else {
            return Part {
                matched: true,
                why: "any peer".into(),
            };
        };
        let field = if dir == Direction::Ingress {
            "from"
        } else {
            "to"
        };
        let (ip, pod) = self.peer(dir);
        let mut whys = Vec::new();
        for (j, peer) in peers.iter().enumerate() {
            let (matched, why) = self.peer_matches(peer, policy, ip, pod);
            let why = format!("{field}[{j}] {}: {why}", describe_peer(peer, policy));
            if matched {
                return Part { matched, why };
            }
            whys.push(why);
        }
        Part {
            matched: false,
            why: whys.join("; "),
        }
    }

    fn peer_matches(
        &self,
        peer: &Peer,
        policy: &NetworkPolicy,
        ip: Ipv4Addr,
        pod: Option<&Pod>,
    ) -> (bool, String) {
        match peer {
            Peer::IpBlock { cidr, except } => {
                if !cidr.contains(ip) {
                    return (false, format!("{ip} is outside {cidr}"));
                }
                match except.iter().enumerate().find(|(_, e)| e.contains(ip)) {
                    Some((k, e)) => (false, format!("{ip} is in except[{k}] {e}")),
                    None => (true, format!("{ip} is inside")),
                }
            }
            Peer::IpBlockV6 { .. } => (false, "an IPv6 block matches no IPv4 address".into()),
            Peer::Pods { namespaces, pods } => {
                let Some(pod) = pod.filter(|p| p.peer_ip().is_some()) else {
                    return (false, format!("{ip} is not a pod's address"));
                };
                let ns = &pod.key.namespace;
                match namespaces {
                    None if *ns != policy.key.namespace => {
                        return (
                            false,
                            format!(
                                "{} is in namespace {ns}; without a namespaceSelector only namespace {} is looked in",
                                pod.key, policy.key.namespace
                            ),
                        )
                    }
                    None => {}
                    Some(sel) => {
                        let empty = Labels::new();
                        let labels = self
                            .engine
                            .namespace_labels()
                            .find(|(n, _)| *n == ns)
                            .map_or(&empty, |(_, l)| l);
                        if !sel.matches(labels) {
                            return (
                                false,
                                format!("namespace {ns} {}", unmet(sel, labels)),
                            );
                        }
                    }
                }
                if pods.matches(&pod.labels) {
                    (true, format!("{} matches", pod.key))
                } else {
                    (false, format!("{} {}", pod.key, unmet(pods, &pod.labels)))
                }
            }
        }
    }

    /// The rule's ports against the flow's; named ports resolved on the pod receiving the
    /// traffic (the endpoint for ingress, the destination for egress: always the
    /// destination).
    fn ports(&self, r: &PolicyRule, _dir: Direction) -> Part {
        let Some(ports) = &r.ports else {
            return Part {
                matched: true,
                why: "every port and protocol".into(),
            };
        };
        let mut whys = Vec::new();
        let mut matched = false;
        for (k, p) in ports.iter().enumerate() {
            let (m, why) = self.port_matches(p);
            matched |= m;
            whys.push(format!("ports[{k}] {why}"));
        }
        Part {
            matched,
            why: whys.join("; "),
        }
    }

    fn port_matches(&self, p: &PortSpec) -> (bool, String) {
        let flow = format!("{}/{}", self.port, self.protocol);
        let proto = p.protocol;
        if proto != self.protocol {
            let written = match &p.port {
                PortRef::All => format!("all of {proto}"),
                PortRef::Range(a, b) if a == b => format!("{a}/{proto}"),
                PortRef::Range(a, b) => format!("{a}-{b}/{proto}"),
                PortRef::Named(n) => format!("'{n}'/{proto}"),
            };
            return (false, format!("{written}: the flow is {}", self.protocol));
        }
        match &p.port {
            PortRef::All => (true, format!("every {proto} port")),
            PortRef::Range(a, b) => {
                let written = if a == b {
                    format!("{a}/{proto}")
                } else {
                    format!("{a}-{b}/{proto}")
                };
                let m = (*a..=*b).contains(&self.port);
                let why = if m {
                    written
                } else {
                    format!("{written}: the flow is to {flow}")
                };
                (m, why)
            }
            PortRef::Named(name) => {
                let Some(pod) = self.destination else {
                    return (
                        false,
                        format!(
                            "'{name}'/{proto}: a named port resolves on a pod, and {} is not one",
                            self.dst
                        ),
                    );
                };
                let numbers: Vec<u16> = pod.resolve_port(name, proto).collect();
                if numbers.is_empty() {
                    return (
                        false,
                        format!(
                            "'{name}'/{proto}: {} defines no {proto} port named '{name}'",
                            pod.key
                        ),
                    );
                }
                let shown = numbers
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let m = numbers.contains(&self.port);
                let why = format!("'{name}'/{proto} = {shown} on {}", pod.key);
                if m {
                    (true, why)
                } else {
                    (false, format!("{why}: the flow is to {flow}"))
                }
            }
        }
    }
}

/// The first requirement of `sel` that `labels` do not meet, and the label they have.
fn unmet(sel: &Selector, labels: &Labels) -> String {
    match sel.requirements().iter().find(|r| !r.matches(labels)) {
        Some(r) => {
            let has = match labels.get(&r.key) {
                Some(v) => format!("{}={v}", r.key),
                None => format!("no label {}", r.key),
            };
            format!("has {has}, not {}", Selector::new([r.clone()]))
        }
        None => "matches".into(),
    }
}

/// A peer as written: `podSelector app=web`, `namespaceSelector team=a podSelector {}`,
/// `ipBlock 10.0.0.0/8 except 10.1.0.0/16`.
fn describe_peer(peer: &Peer, policy: &NetworkPolicy) -> String {
    match peer {
        Peer::Pods {
            namespaces: None,
            pods,
        } => format!("podSelector {pods} in {}", policy.key.namespace),
        Peer::Pods {
            namespaces: Some(ns),
            pods,
        } => format!("namespaceSelector {ns} podSelector {pods}"),
        Peer::IpBlock { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
        Peer::IpBlock { cidr, except } => format!(
            "ipBlock {cidr} except {}",
            except
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Peer::IpBlockV6 { cidr } => format!("ipBlock {cidr}"),
    }
}
