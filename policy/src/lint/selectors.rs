//! Selectors that select nothing now, with the nearest existing label as a hint; policies in a
//! namespace that does not exist.

use std::collections::BTreeSet;

use crate::manifest::nearest;
use crate::model::{Labels, Name, NetworkPolicy, Operator, Peer, Selector};

use super::{finding, peers, rules, Check, Cluster, Finding};

pub(super) fn policy<'a>(cluster: &Cluster<'a>, policy: &'a NetworkPolicy, out: &mut Vec<Finding>) {
    let ns = &policy.key.namespace;
    if cluster.namespace(ns).is_none() {
        let existing = cluster.namespaces.iter().map(|(n, _)| &***n);
        let suggestion = match nearest(ns, existing) {
            Some(n) => format!("did you mean namespace '{n}'?"),
            None => format!("create namespace '{ns}', or put the policy where its pods are"),
        };
        out.push(finding(
            policy,
            "metadata.namespace",
            Check::MissingNamespace,
            format!("namespace '{ns}' does not exist (no Namespace object and no pod in it), so the policy selects nothing"),
            suggestion,
        ));
        return;
    }
    let own: Vec<&Labels> = cluster.pods_in(ns).map(|p| &p.labels).collect();
    if !own.iter().any(|l| policy.pod_selector.matches(l)) {
        out.push(finding(
            policy,
            "spec.podSelector",
            Check::SelectorMatchesNothing,
            format!(
                "selects no pod in namespace '{ns}' ({}), so the policy isolates nothing",
                policy.pod_selector
            ),
            hint(&policy.pod_selector, &own, "pod"),
        ));
    }
    for (dir, rule_path, rule) in rules(policy) {
        for (path, peer) in peers(dir, &rule_path, rule) {
            let Peer::Pods { namespaces, pods } = peer else {
                continue;
            };
            match namespaces {
                None => {
                    if !own.iter().any(|l| pods.matches(l)) {
                        out.push(finding(
                            policy,
                            format!("{path}.podSelector"),
                            Check::SelectorMatchesNothing,
                            format!("selects no pod in namespace '{ns}' ({pods}): a podSelector without namespaceSelector looks only in the policy's own namespace"),
                            hint(pods, &own, "pod"),
                        ));
                    }
                }
                Some(nss) => peer_in_namespaces(cluster, policy, &path, nss, pods, out),
            }
        }
    }
}

/// A peer with a namespaceSelector: first the namespaces, then the pods in them.
fn peer_in_namespaces<'a>(
    cluster: &Cluster<'a>,
    policy: &NetworkPolicy,
    path: &str,
    nss: &'a Selector,
    pods: &'a Selector,
    out: &mut Vec<Finding>,
) {
    // The common case first, and cheaply: some selected namespace holds a selected pod.
    let selected = || {
        cluster
            .namespaces
            .iter()
            .filter(|(_, l)| nss.matches(l))
            .map(|(n, _)| *n)
    };
    let known = cluster.peers_seen.borrow().get(&(nss, pods)).copied();
    let selects = known.unwrap_or_else(|| {
        let any = selected().any(|n| cluster.pods_in(n).any(|p| pods.matches(&p.labels)));
        cluster.peers_seen.borrow_mut().insert((nss, pods), any);
        any
    });
    if selects {
        return;
    }
    let selected: Vec<&Name> = selected().collect();
    if selected.is_empty() {
        let labels: Vec<&Labels> = cluster.namespaces.iter().map(|(_, l)| *l).collect();
        out.push(finding(
            policy,
            format!("{path}.namespaceSelector"),
            Check::SelectorMatchesNothing,
            format!("selects no namespace ({nss})"),
            hint(nss, &labels, "namespace"),
        ));
        return;
    }
    {
        let labels: Vec<&Labels> = selected
            .iter()
            .flat_map(|n| cluster.pods_in(n).map(|p| &p.labels))
            .collect();
        let where_ = if selected.len() == 1 {
            format!("namespace '{}'", selected[0])
        } else {
            format!(
                "the {} namespaces namespaceSelector selects",
                selected.len()
            )
        };
        out.push(finding(
            policy,
            format!("{path}.podSelector"),
            Check::SelectorMatchesNothing,
            format!("selects no pod in {where_} ({pods})"),
            hint(pods, &labels, "pod"),
        ));
    }
}

/// Why `selector` matches none of `candidates`, with the nearest label key or value that
/// exists when one is close: the first requirement that no candidate meets.
fn hint(selector: &Selector, candidates: &[&Labels], what: &str) -> String {
    if candidates.is_empty() {
        return format!("there is no {what} to select here yet");
    }
    for req in selector.requirements() {
        if candidates.iter().any(|l| req.matches(l)) {
            continue;
        }
        let key = &req.key;
        let has_key = candidates.iter().any(|l| l.contains_key(key));
        match &req.op {
            Operator::In(_) | Operator::Exists if !has_key => {
                let keys: BTreeSet<&str> = candidates
                    .iter()
                    .flat_map(|l| l.keys().map(String::as_str))
                    .collect();
                let mut out = format!("no {what} has a label '{key}'");
                if let Some(k) = nearest(key, keys) {
                    let shown = match values_of(&req.op) {
                        Some(v) => format!("{k}={v}"),
                        None => k.to_string(),
                    };
                    out += &format!("; did you mean '{shown}'?");
                }
                return out;
            }
            Operator::In(values) => {
                let existing: BTreeSet<&str> = candidates
                    .iter()
                    .filter_map(|l| l.get(key).map(String::as_str))
                    .collect();
                let wanted = values.iter().next().map(String::as_str).unwrap_or("");
                let mut out = format!("no {what} has {key}={}", join(values));
                match nearest(wanted, existing.iter().copied()) {
                    Some(v) => out += &format!("; did you mean '{key}={v}'?"),
                    None => out += &format!("; values of '{key}' here: {}", list(&existing)),
                }
                return out;
            }
            _ => {
                return format!(
                    "no {what} meets the requirement on '{key}' ({})",
                    Selector::new([req.clone()])
                )
            }
        }
    }
    format!("each requirement matches some {what}, but no {what} matches all of them")
}

fn values_of(op: &Operator) -> Option<String> {
    match op {
        Operator::In(v) if v.len() == 1 => v.iter().next().cloned(),
        _ => None,
    }
}

fn join(values: &BTreeSet<String>) -> String {
    values.iter().cloned().collect::<Vec<_>>().join("|")
}

/// At most five, then "and N more".
fn list(values: &BTreeSet<&str>) -> String {
    let shown: Vec<&str> = values.iter().take(5).copied().collect();
    let mut out = shown.join(", ");
    if values.len() > 5 {
        out += &format!(" and {} more", values.len() - 5);
    }
    out
}
