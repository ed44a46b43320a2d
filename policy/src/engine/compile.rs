//! Policies compiled into rule items over address-set ids, and endpoints computed from them.
//!
//! An endpoint depends only on its own pod (labels, named ports) and the policies of its
//! namespace; never on other pods. Other pods enter a slice only as members of address sets.

use std::collections::BTreeSet;

use crate::model::{Direction, Name, NetworkPolicy, Peer, Pod, PolicyRule, PortRef, Protocol};
use crate::slice::{DirPolicy, Endpoint, NsScope, PeerRef, PortMatch, Rule, SetDef};

/// One (peer, port) pair of a policy rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Fixed {
        peer: PeerRef,
        ports: PortMatch,
    },
    /// An ingress named port, resolved against the receiving (local) pod.
    NamedIngress {
        peer: PeerRef,
        protocol: Protocol,
        name: Name,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompiledRule {
    pub index: u32,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CompiledPolicy {
    pub source: NetworkPolicy,
    pub ingress: Option<Vec<CompiledRule>>,
    pub egress: Option<Vec<CompiledRule>>,
    /// Every address-set definition the rules reference, deduplicated.
    pub sets: Vec<SetDef>,
}

impl CompiledPolicy {
    pub fn new(source: NetworkPolicy) -> CompiledPolicy {
        let mut sets = BTreeSet::new();
        let ns = source.key.namespace.clone();
        let mut dir = |rules: Option<&[PolicyRule]>, d| {
            rules.map(|rules| {
                (0u32..)
                    .zip(rules)
                    .map(|(index, r)| CompiledRule {
                        index,
                        items: items(r, d, &ns, &mut sets),
                    })
                    .collect()
            })
        };
        let ingress = dir(source.ingress.as_deref(), Direction::Ingress);
        let egress = dir(source.egress.as_deref(), Direction::Egress);
        CompiledPolicy {
            source,
            ingress,
            egress,
            sets: sets.into_iter().collect(),
        }
    }

    pub fn selects(&self, pod: &Pod) -> bool {
        self.source.pod_selector.matches(&pod.labels)
    }

    fn rules(&self, d: Direction) -> Option<&[CompiledRule]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

fn peer_def(p: &Peer, ns: &Name) -> Option<SetDef> {
    match p {
        Peer::Pods { namespaces, pods } => Some(SetDef::Pods {
            namespaces: match namespaces {
                None => NsScope::Name(ns.clone()),
                Some(sel) => NsScope::Selector(sel.clone()),
            },
            pods: pods.clone(),
        }),
        Peer::IpBlock { cidr, except } => Some(SetDef::IpBlock {
            cidr: *cidr,
            except: except.clone(),
        }),
        // IPv6 blocks match no IPv4 address: the peer contributes nothing.
        Peer::IpBlockV6 { .. } => None,
    }
}

fn items(r: &PolicyRule, d: Direction, ns: &Name, sets: &mut BTreeSet<SetDef>) -> Vec<Item> {
    // `None` stands for "any peer".
    let peers: Vec<Option<SetDef>> = match &r.peers {
        None => vec![None],
        Some(ps) => ps
            .iter()
            .filter_map(|p| peer_def(p, ns))
            .map(Some)
            .collect(),
    };
    let mut out = Vec::new();
    for peer in &peers {
        let peer_ref = |sets: &mut BTreeSet<SetDef>, def: &SetDef| {
            sets.insert(def.clone());
            PeerRef::Set(def.id())
        };
        let plain = match peer {
            None => PeerRef::Any,
            Some(def) => peer_ref(sets, def),
        };
        let Some(ports) = &r.ports else {
            out.push(Item::Fixed {
                peer: plain,
                ports: PortMatch::Any,
            });
            continue;
        };
        for spec in ports {
            let protocol = spec.protocol;
            let item = match (&spec.port, d) {
                (PortRef::All, _) => Item::Fixed {
                    peer: plain.clone(),
                    ports: PortMatch::Range {
                        protocol,
                        from: 0,
                        to: u16::MAX,
                    },
                },
                (PortRef::Range(from, to), _) => Item::Fixed {
                    peer: plain.clone(),
                    ports: PortMatch::Range {
                        protocol,
                        from: *from,
                        to: *to,
                    },
                },
                (PortRef::Named(name), Direction::Ingress) => Item::NamedIngress {
                    peer: plain.clone(),
                    protocol,
                    name: name.clone(),
                },
                (PortRef::Named(name), Direction::Egress) => {
                    let def = SetDef::NamedPort {
                        within: peer.clone().map(Box::new),
                        protocol,
                        name: name.clone(),
                    };
                    Item::Fixed {
                        peer: peer_ref(sets, &def),
                        ports: PortMatch::Named { protocol },
                    }
                }
            };
            out.push(item);
        }
    }
    out
}

/// The endpoint `pod` is, given the policies of its namespace; `None` when no policy isolates
/// it in either direction (or it is not an enforceable pod).
pub(crate) fn endpoint<'a>(
    pod: &Pod,
    policies: impl IntoIterator<Item = &'a CompiledPolicy>,
) -> Option<Endpoint> {
    pod.endpoint()?;
    let mut ep = Endpoint {
        pod: pod.key.clone(),
        ingress: None,
        egress: None,
    };
    for p in policies.into_iter().filter(|p| p.selects(pod)) {
        for d in Direction::BOTH {
            let Some(rules) = p.rules(d) else { continue };
            let dp = ep.dir_mut(d).get_or_insert_with(DirPolicy::default);
            let policy = &p.source.key.name;
            dp.policies.insert(policy.clone());
            for r in rules {
                expand(pod, policy, r, &mut dp.rules);
            }
        }
    }
    (ep.ingress.is_some() || ep.egress.is_some()).then_some(ep)
}

fn expand(pod: &Pod, policy: &Name, r: &CompiledRule, out: &mut BTreeSet<Rule>) {
    let rule = |peer: &PeerRef, ports| Rule {
        policy: policy.clone(),
        index: r.index,
        peer: peer.clone(),
        ports,
    };
    for item in &r.items {
        match item {
            Item::Fixed { peer, ports } => {
                out.insert(rule(peer, ports.clone()));
            }
            Item::NamedIngress {
                peer,
                protocol,
                name,
            } => {
                for n in pod.resolve_port(name, *protocol) {
                    out.insert(rule(
                        peer,
                        PortMatch::Range {
                            protocol: *protocol,
                            from: n,
                            to: n,
                        },
                    ));
                }
            }
        }
    }
}
