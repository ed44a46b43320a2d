//! Policies compiled into rule items over address-set ids, and endpoints computed from them.
//!
//! An endpoint depends only on its own pod (labels, named ports) and the policies of its
//! namespace; never on other pods. Other pods enter a slice only as members of address sets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::digest::Accumulator;
use crate::model::{Direction, Name, NetworkPolicy, Peer, Pod, PolicyRule, PortRef, Protocol};
use crate::slice::{
    endpoint_hash, DirPolicy, Endpoint, NsScope, PeerRef, PortMatch, Rule, SetDef, SetId,
};

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
    /// Every address-set definition the rules reference, deduplicated, with its id.
    pub sets: Vec<(SetId, SetDef)>,
}

impl CompiledPolicy {
    pub fn new(source: NetworkPolicy) -> CompiledPolicy {
        let mut sets = BTreeMap::new();
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
            sets: sets.into_iter().map(|(def, id)| (id, def)).collect(),
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

/// Set definitions of a policy → their ids (each hashed once).
type SetIds = BTreeMap<SetDef, SetId>;

fn items(r: &PolicyRule, d: Direction, ns: &Name, sets: &mut SetIds) -> Vec<Item> {
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
        let peer_ref = |sets: &mut SetIds, def: &SetDef| match sets.get(def) {
            Some(id) => PeerRef::Set(*id),
            None => {
                let id = def.id();
                sets.insert(def.clone(), id);
                PeerRef::Set(id)
            }
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

/// The enforcement of a pod in each direction, given the policies of its namespace: `None`
/// where no policy isolates it. Depends only on the pod's labels and named ports, so pods
/// alike share the result.
pub(crate) fn directions<'a>(
    pod: &Pod,
    policies: impl IntoIterator<Item = &'a CompiledPolicy>,
) -> Directions {
    let mut dirs: [Option<DirPolicy>; 2] = [None, None];
    for p in policies.into_iter().filter(|p| p.selects(pod)) {
        for (slot, d) in dirs.iter_mut().zip(Direction::BOTH) {
            let Some(rules) = p.rules(d) else { continue };
            let dp = slot.get_or_insert_with(DirPolicy::default);
            let policy = &p.source.key.name;
            dp.policies.insert(policy.clone());
            for r in rules {
                expand(pod, policy, r, &mut dp.rules);
            }
        }
    }
    let hashes = dirs
        .each_ref()
        .map(|d| d.as_ref().map(DirPolicy::content_hash));
    let [ingress, egress] = dirs.map(|d| d.map(Arc::new));
    Directions {
        ingress,
        egress,
        hashes,
    }
}

/// A pod's enforcement per direction, shareable between endpoints, with content hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directions {
    pub ingress: Option<Arc<DirPolicy>>,
    pub egress: Option<Arc<DirPolicy>>,
    hashes: [Option<u128>; 2],
}

impl Directions {
    /// The endpoint of `pod` at `ip` with these directions, with its digest part, if it is
    /// isolated at all.
    pub fn endpoint(&self, pod: &Pod, ip: Ipv4Addr) -> Option<(Endpoint, Accumulator)> {
        if self.ingress.is_none() && self.egress.is_none() {
            return None;
        }
        let e = Endpoint {
            pod: pod.key.clone(),
            ingress: self.ingress.clone(),
            egress: self.egress.clone(),
        };
        let acc = endpoint_hash(ip, &e.pod, self.hashes);
        Some((e, acc))
    }
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
