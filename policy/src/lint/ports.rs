//! Named ports that no pod receiving the traffic defines, or defines only for another protocol.
//! A named port resolves against the pod that receives the traffic: for ingress the pods the
//! policy selects, for egress the pods its peers select.

use std::collections::BTreeSet;

use crate::manifest::nearest;
use crate::model::{Direction, NetworkPolicy, Peer, Pod, PolicyRule, PortRef};

use super::{finding, rules, Check, Cluster, Finding};

pub(super) fn policy(cluster: &Cluster, policy: &NetworkPolicy, out: &mut Vec<Finding>) {
    let selected: Vec<&Pod> = cluster
        .pods_in(&policy.key.namespace)
        .filter(|p| policy.pod_selector.matches(&p.labels))
        .collect();
    for (dir, rule_path, rule) in rules(policy) {
        let named = rule
            .ports
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(k, p)| match &p.port {
                PortRef::Named(name) => Some((k, name, p.protocol)),
                _ => None,
            });
        let mut receivers: Option<Vec<&Pod>> = None;
        for (k, name, protocol) in named {
            let receivers = receivers.get_or_insert_with(|| match dir {
                Direction::Ingress => selected.clone(),
                Direction::Egress => destinations(cluster, policy, rule),
            });
            if receivers.is_empty() {
                // The selector finding says so already.
                continue;
            }
            if receivers
                .iter()
                .any(|p| p.resolve_port(name, protocol).next().is_some())
            {
                continue;
            }
            let whose = match dir {
                Direction::Ingress => "selected by spec.podSelector",
                Direction::Egress => "this rule's peers select",
            };
            let field = format!("{rule_path}.ports[{k}].port");
            let other: BTreeSet<String> = receivers
                .iter()
                .flat_map(|p| &p.named_ports)
                .filter(|p| *p.name == **name)
                .map(|p| format!("{}/{}", p.port, p.protocol))
                .collect();
            if !other.is_empty() {
                out.push(finding(
                    policy,
                    field,
                    Check::NamedPortProtocol,
                    format!(
                        "port '{name}' is {protocol} here, but the pods {whose} define '{name}' only as {}",
                        other.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                    "set the port's protocol to the one the pods define".into(),
                ));
                continue;
            }
            let names: BTreeSet<&str> = receivers
                .iter()
                .flat_map(|p| p.named_ports.iter().map(|n| &*n.name))
                .collect();
            let suggestion = match nearest(name, names.iter().copied()) {
                Some(n) => format!("did you mean '{n}'?"),
                None if names.is_empty() => {
                    "those pods name no container ports; use the port number".into()
                }
                None => format!(
                    "their named ports: {}",
                    names.into_iter().collect::<Vec<_>>().join(", ")
                ),
            };
            out.push(finding(
                policy,
                field,
                Check::NamedPortUndefined,
                format!(
                    "no pod {whose} ({}) defines a container port named '{name}', so it allows nothing",
                    super::count(receivers.len(), "pod")
                ),
                suggestion,
            ));
        }
    }
}

/// The pods an egress rule's peers select (every pod when it names no peers; the pods whose
/// addresses an ipBlock covers).
fn destinations<'a>(
    cluster: &Cluster<'a>,
    policy: &NetworkPolicy,
    rule: &PolicyRule,
) -> Vec<&'a Pod> {
    let Some(peers) = &rule.peers else {
        return cluster.pods.clone();
    };
    cluster
        .pods
        .iter()
        .copied()
        .filter(|pod| {
            peers.iter().any(|peer| match peer {
                Peer::Pods {
                    namespaces: None,
                    pods,
                } => pod.key.namespace == policy.key.namespace && pods.matches(&pod.labels),
                Peer::Pods {
                    namespaces: Some(nss),
                    pods,
                } => {
                    cluster
                        .namespace(&pod.key.namespace)
                        .is_some_and(|l| nss.matches(l))
                        && pods.matches(&pod.labels)
                }
                Peer::IpBlock { cidr, except } => pod
                    .peer_ip()
                    .is_some_and(|ip| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))),
                Peer::IpBlockV6 { .. } => false,
            })
        })
        .collect()
}
