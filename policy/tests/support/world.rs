//! A plain model of the cluster kept by the tests beside the engine, and a naive reading of
//! NetworkPolicy over it: loops over every policy, pod and rule, straight from the API's
//! documentation, sharing nothing with the compiler but the model types and selector matching.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use palisade_policy::model::{
    Command, Direction, Labels, Name, Namespace, NetworkPolicy, ObjKey, Peer, Pod, PolicyRule,
    PortRef,
};

#[derive(Clone, Debug, Default)]
pub struct World {
    pub namespaces: BTreeMap<Name, Labels>,
    pub pods: BTreeMap<ObjKey, Pod>,
    pub policies: BTreeMap<ObjKey, NetworkPolicy>,
}

impl World {
    pub fn apply(&mut self, c: &Command) {
        match c {
            Command::UpsertNamespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns.labels.clone());
            }
            Command::DeleteNamespace(n) => {
                self.namespaces.remove(n);
            }
            Command::UpsertPod(p) => {
                self.pods.insert(p.key.clone(), p.clone());
            }
            Command::DeletePod(k) => {
                self.pods.remove(k);
            }
            Command::UpsertPolicy(p) => {
                self.policies.insert(p.key.clone(), p.clone());
            }
            Command::DeletePolicy(k) => {
                self.policies.remove(k);
            }
        }
    }

    /// The commands that build this world from nothing.
    pub fn commands(&self) -> Vec<Command> {
        let ns = self.namespaces.iter().map(|(n, l)| {
            Command::UpsertNamespace(Namespace {
                name: n.clone(),
                labels: l.clone(),
            })
        });
        let pods = self.pods.values().cloned().map(Command::UpsertPod);
        let pols = self.policies.values().cloned().map(Command::UpsertPolicy);
        ns.chain(pods).chain(pols).collect()
    }

    pub fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces
            .get(ns)
            .cloned()
            .unwrap_or_else(|| Namespace::implicit(ns).labels)
    }

    /// The pod that is a policy peer at `ip`, if any.
    pub fn peer_at(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.pods.values().find(|p| p.peer_ip() == Some(ip))
    }

    /// Every peer pod's address.
    pub fn peer_ips(&self) -> Vec<Ipv4Addr> {
        self.pods.values().filter_map(Pod::peer_ip).collect()
    }

    fn peer_matches(&self, policy_ns: &str, peer: &Peer, ip: Ipv4Addr, pod: Option<&Pod>) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let Some(pod) = pod else { return false };
                let ns_ok = match namespaces {
                    None => &*pod.key.namespace == policy_ns,
                    Some(sel) => sel.matches(&self.ns_labels(&pod.key.namespace)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
            Peer::IpBlock { cidr, except } => {
                cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
            }
            Peer::IpBlockV6 { .. } => false,
        }
    }

    /// Does `rule` of a policy in `ns` allow traffic with the peer at `peer_ip` (`peer_pod`),
    /// where `receiver` is the pod the traffic is addressed to (named ports resolve there)?
    #[allow(clippy::too_many_arguments)]
    fn rule_allows(
        &self,
        ns: &str,
        rule: &PolicyRule,
        peer_ip: Ipv4Addr,
        peer_pod: Option<&Pod>,
        receiver: Option<&Pod>,
        protocol: u8,
        port: u16,
    ) -> bool {
        let peers_ok = match &rule.peers {
            None => true,
            Some(ps) => ps
                .iter()
                .any(|p| self.peer_matches(ns, p, peer_ip, peer_pod)),
        };
        let ports_ok = match &rule.ports {
            None => true,
            Some(specs) => specs.iter().any(|s| {
                s.protocol.number() == protocol
                    && match &s.port {
                        PortRef::All => true,
                        PortRef::Range(a, b) => (*a..=*b).contains(&port),
                        PortRef::Named(n) => receiver
                            .is_some_and(|r| r.resolve_port(n, s.protocol).any(|p| p == port)),
                    }
            }),
        };
        peers_ok && ports_ok
    }

    /// Does the direction `d` of `pod` let the flow through?
    #[allow(clippy::too_many_arguments)]
    fn side_allows(
        &self,
        pod: &Pod,
        d: Direction,
        peer_ip: Ipv4Addr,
        peer_pod: Option<&Pod>,
        receiver: Option<&Pod>,
        protocol: u8,
        port: u16,
    ) -> bool {
        if pod.endpoint().is_none() {
            return true; // not scheduled: enforced nowhere
        }
        let isolating: Vec<&NetworkPolicy> = self
            .policies
            .values()
            .filter(|p| p.key.namespace == pod.key.namespace)
            .filter(|p| p.pod_selector.matches(&pod.labels))
            .filter(|p| p.rules(d).is_some())
            .collect();
        if isolating.is_empty() {
            return true;
        }
        isolating.iter().any(|p| {
            p.rules(d).unwrap().iter().any(|r| {
                self.rule_allows(
                    &p.key.namespace,
                    r,
                    peer_ip,
                    peer_pod,
                    receiver,
                    protocol,
                    port,
                )
            })
        })
    }

    /// The naive verdict for a new connection.
    pub fn allowed(&self, src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, port: u16) -> bool {
        if src == dst {
            return true;
        }
        let (sp, dp) = (self.peer_at(src), self.peer_at(dst));
        let egress =
            sp.is_none_or(|s| self.side_allows(s, Direction::Egress, dst, dp, dp, protocol, port));
        let ingress = dp.is_none_or(|d| {
            self.side_allows(d, Direction::Ingress, src, sp, Some(d), protocol, port)
        });
        egress && ingress
    }
}
