//! Addresses: an `ipBlock` inside the pod network that covers pods (a pod selector was probably
//! meant: pod addresses change whenever pods are replaced), an `except` that another peer
//! allows again (allow rules add up; an except narrows only its own ipBlock), and two pods
//! with one address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::model::{Direction, NetworkPolicy, Peer, Pod, PortRef, PortSpec};
use crate::net::Prefix;

use super::{count, finding, peers, rules, Check, Cluster, Finding};

/// The pods by address and the pod network.
pub(super) struct PodNetwork<'a> {
    by_ip: BTreeMap<Ipv4Addr, Vec<&'a Pod>>,
    ranges: Vec<Prefix>,
    inferred: bool,
}

impl<'a> PodNetwork<'a> {
    pub(super) fn new(pods: &[&'a Pod], configured: &[Prefix]) -> PodNetwork<'a> {
        let mut by_ip: BTreeMap<Ipv4Addr, Vec<&Pod>> = BTreeMap::new();
        for pod in pods.iter().copied() {
            if let Some(ip) = pod.peer_ip() {
                by_ip.entry(ip).or_default().push(pod);
            }
        }
        let (ranges, inferred) = if !configured.is_empty() {
            (configured.to_vec(), false)
        } else {
            (smallest_cover(by_ip.keys()).into_iter().collect(), true)
        };
        PodNetwork {
            by_ip,
            ranges,
            inferred,
        }
    }

    /// Pods whose address `cidr` covers and no `except` removes.
    fn covered(&self, cidr: Prefix, except: &[Prefix]) -> Vec<(Ipv4Addr, &'a Pod)> {
        let first = cidr.addr();
        let host_bits = u32::MAX
            .checked_shr(u32::from(cidr.prefix_len()))
            .unwrap_or(0);
        let last = Ipv4Addr::from(cidr.bits() | host_bits);
        self.by_ip
            .range(first..=last)
            .filter(|(ip, _)| !except.iter().any(|e| e.contains(**ip)))
            .flat_map(|(ip, pods)| pods.iter().map(move |p| (*ip, *p)))
            .collect()
    }
}

/// The smallest prefix holding every address, when there are two or more.
fn smallest_cover<'a>(ips: impl Iterator<Item = &'a Ipv4Addr> + Clone) -> Option<Prefix> {
    let mut ips = ips.map(|ip| u32::from(*ip));
    let first = ips.next()?;
    let last = ips.last()?;
    let common = (first ^ last).leading_zeros() as u8;
    Some(Prefix::new(Ipv4Addr::from(first), common))
}

pub(super) fn policy(cluster: &Cluster, policy: &NetworkPolicy, out: &mut Vec<Finding>) {
    covers_pods(&cluster.net, policy, out);
    excepts(cluster, policy, out);
}

fn covers_pods(net: &PodNetwork, policy: &NetworkPolicy, out: &mut Vec<Finding>) {
    for (dir, rule_path, rule) in rules(policy) {
        for (path, peer) in peers(dir, &rule_path, rule) {
            let Peer::IpBlock { cidr, except } = peer else {
                continue;
            };
            let Some(range) = net.ranges.iter().find(|r| r.covers(*cidr)) else {
                continue;
            };
            let covered = net.covered(*cidr, except);
            let Some((ip, pod)) = covered.first() else {
                continue;
            };
            let range = if net.inferred {
                format!(
                    "{range}, inferred from the pods' addresses; pass the real one with --pod-cidr"
                )
            } else {
                range.to_string()
            };
            out.push(finding(
                policy,
                format!("{path}.ipBlock.cidr"),
                Check::IpBlockCoversPods,
                format!(
                    "{cidr} lies in the pod network ({range}) and covers {} (e.g. {} at {ip})",
                    count(covered.len(), "pod"),
                    pod.key
                ),
                "pod addresses change whenever pods are replaced; select the pods with podSelector (and namespaceSelector) instead".into(),
            ));
        }
    }
}

/// A peer that allows addresses, with where it is and which ports its rule allows.
struct Allowing<'a> {
    policy: &'a NetworkPolicy,
    path: String,
    /// `None`: every address (a rule without peers).
    block: Option<(Prefix, &'a [Prefix])>,
    ports: Option<&'a [PortSpec]>,
}

/// Every ipBlock (and peerless rule) of `policy` in `dir`.
fn allowing(policy: &NetworkPolicy, dir: Direction) -> Vec<Allowing<'_>> {
    let mut out = Vec::new();
    for (d, rule_path, rule) in rules(policy) {
        if d != dir {
            continue;
        }
        let ports = rule.ports.as_deref();
        if rule.peers.is_none() {
            out.push(Allowing {
                policy,
                path: rule_path.clone(),
                block: None,
                ports,
            });
        }
        for (path, peer) in peers(dir, &rule_path, rule) {
            if let Peer::IpBlock { cidr, except } = peer {
                out.push(Allowing {
                    policy,
                    path,
                    block: Some((*cidr, except)),
                    ports,
                });
            }
        }
    }
    out
}

fn excepts(cluster: &Cluster, policy: &NetworkPolicy, out: &mut Vec<Finding>) {
    for dir in Direction::BOTH {
        let mine = allowing(policy, dir);
        if !mine
            .iter()
            .any(|a| a.block.is_some_and(|(_, e)| !e.is_empty()))
        {
            continue;
        }
        // The other policies of the namespace in force on a pod this one selects.
        let selected: Vec<&Pod> = cluster
            .pods_in(&policy.key.namespace)
            .filter(|p| policy.pod_selector.matches(&p.labels))
            .collect();
        let others: Vec<&NetworkPolicy> = cluster
            .by_namespace
            .get(&*policy.key.namespace)
            .into_iter()
            .flatten()
            .copied()
            .filter(|q| {
                q.key != policy.key
                    && q.rules(dir).is_some()
                    && selected.iter().any(|p| q.pod_selector.matches(&p.labels))
            })
            .collect();
        let theirs: Vec<Allowing> = others.iter().flat_map(|q| allowing(q, dir)).collect();
        for a in &mine {
            let Some((_, except)) = a.block else { continue };
            for (k, e) in except.iter().enumerate() {
                let again = mine.iter().chain(&theirs).find(|b| {
                    (b.path != a.path || b.policy.key != a.policy.key)
                        && ports_overlap(a.ports, b.ports)
                        && match b.block {
                            None => true,
                            Some((cidr, ex)) => {
                                cidr.overlaps(*e) && !ex.iter().any(|x| x.covers(*e))
                            }
                        }
                });
                let Some(b) = again else { continue };
                let by = match b.block {
                    Some((cidr, _)) => format!("ipBlock {cidr} at {}", b.path),
                    None => format!("{}, which allows every peer", b.path),
                };
                let whose = if b.policy.key == policy.key {
                    String::new()
                } else {
                    format!("NetworkPolicy {} (selecting the same pods), ", b.policy.key)
                };
                out.push(finding(
                    policy,
                    format!("{}.ipBlock.except[{k}]", a.path),
                    Check::ExceptReallowed,
                    format!("{e} is excepted here but allowed again by {whose}{by}"),
                    "allow rules add up and an except narrows only its own ipBlock; add the same except to the other peer".into(),
                ));
            }
        }
    }
}

/// True when two rules' ports can match the same traffic (`None`: every port).
fn ports_overlap(a: Option<&[PortSpec]>, b: Option<&[PortSpec]>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return true;
    };
    a.iter().any(|x| {
        b.iter().any(|y| {
            x.protocol == y.protocol
                && match (&x.port, &y.port) {
                    (PortRef::Range(a0, a1), PortRef::Range(b0, b1)) => a0 <= b1 && b0 <= a1,
                    // Every port, or a name that may resolve to any number.
                    _ => true,
                }
        })
    })
}

pub(super) fn shared_ips(net: &PodNetwork, out: &mut Vec<Finding>) {
    for (ip, pods) in &net.by_ip {
        let Some((first, rest)) = pods.split_first() else {
            continue;
        };
        for pod in rest {
            out.push(Finding {
                kind: "Pod".into(),
                object: pod.key.to_string(),
                field: "status.podIP".into(),
                check: Check::SharedPodIp,
                message: format!("has the same address {ip} as Pod {}", first.key),
                suggestion: "traffic from this address is matched as either pod; delete the stale one (a finished pod is ignored) or fix the manifests".into(),
            });
        }
    }
}
