//! Lint: NetworkPolicies that are valid (the API server takes them) but probably not what was
//! meant. Pure like the rest of the core: it reads the compiled [`Engine`]'s objects (and, for
//! what the model no longer shows, the Kubernetes object itself) and returns [`Finding`]s, each
//! naming the object, the field and what to do. `palisadectl lint` and `evaluate` print them;
//! the controller reports them with its rejected objects and counts them in its metrics.
//!
//! Findings never change what is enforced: Palisade enforces exactly what the policies say.

mod addresses;
mod ports;
mod selectors;
mod types;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::model::{Direction, Labels, Name, NetworkPolicy, Peer, Pod, PolicyRule, Selector};
use crate::net::Prefix;

/// What a finding is about. The names (kebab-case) are stable: scripts and metrics use them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// A pod or namespace selector that selects nothing now.
    SelectorMatchesNothing,
    /// A policy in a namespace that does not exist (no Namespace object, no pod).
    MissingNamespace,
    /// A named port that no pod receiving the traffic defines.
    NamedPortUndefined,
    /// A named port the receiving pods define only for another protocol.
    NamedPortProtocol,
    /// Ingress or egress rules that `policyTypes` leaves unused.
    UnusedRules,
    /// An `ipBlock` inside the pod network that covers pods' addresses.
    #[serde(rename = "ipblock-covers-pods")]
    IpBlockCoversPods,
    /// An `except` that another peer of the same pods allows again.
    ExceptReallowed,
    /// Two pods with the same address.
    SharedPodIp,
}

impl Check {
    pub const ALL: [Check; 8] = [
        Check::SelectorMatchesNothing,
        Check::MissingNamespace,
        Check::NamedPortUndefined,
        Check::NamedPortProtocol,
        Check::UnusedRules,
        Check::IpBlockCoversPods,
        Check::ExceptReallowed,
        Check::SharedPodIp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::SelectorMatchesNothing => "selector-matches-nothing",
            Check::MissingNamespace => "missing-namespace",
            Check::NamedPortUndefined => "named-port-undefined",
            Check::NamedPortProtocol => "named-port-protocol",
            Check::UnusedRules => "unused-rules",
            Check::IpBlockCoversPods => "ipblock-covers-pods",
            Check::ExceptReallowed => "except-reallowed",
            Check::SharedPodIp => "shared-pod-ip",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Check {
    type Err = String;

    fn from_str(s: &str) -> Result<Check, String> {
        Check::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown check '{s}'"))
    }
}

/// One thing that is probably wrong.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Finding {
    /// `NetworkPolicy` or `Pod`.
    pub kind: String,
    /// `namespace/name`.
    pub object: String,
    /// The field, as a path into the object (`spec.ingress[0].from[1].podSelector`).
    pub field: String,
    pub check: Check,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub suggestion: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {} [{}]",
            self.kind, self.object, self.field, self.message, self.check
        )?;
        if !self.suggestion.is_empty() {
            write!(f, "; {}", self.suggestion)?;
        }
        Ok(())
    }
}

/// What the linter cannot learn from the objects.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The cluster's pod network (IPv4). Empty: inferred as the smallest prefix holding every
    /// pod address (when there are two pods or more).
    pub pod_cidrs: Vec<Prefix>,
}

/// What every check reads, gathered once a run: the engine's objects, indexed.
struct Cluster<'a> {
    engine: &'a Engine,
    /// Namespaces that exist (declared, or holding a pod), sorted by name.
    namespaces: Vec<(&'a Name, &'a Labels)>,
    /// Every policy, sorted; and by namespace.
    policies: Vec<&'a NetworkPolicy>,
    by_namespace: BTreeMap<&'a str, Vec<&'a NetworkPolicy>>,
    /// Every pod, sorted.
    pods: Vec<&'a Pod>,
    net: addresses::PodNetwork<'a>,
    /// Whether a (namespaceSelector, podSelector) peer selects any pod: many policies share
    /// peers (the same ingress namespace, the same monitoring pods).
    peers_seen: std::cell::RefCell<std::collections::HashMap<(&'a Selector, &'a Selector), bool>>,
}

impl<'a> Cluster<'a> {
    fn new(engine: &'a Engine, options: &Options) -> Cluster<'a> {
        let mut namespaces: Vec<(&Name, &Labels)> = engine
            .namespace_labels()
            .filter(|(n, _)| engine.namespace_exists(n))
            .collect();
        namespaces.sort();
        let policies = engine.policies();
        let mut by_namespace: BTreeMap<&str, Vec<&NetworkPolicy>> = BTreeMap::new();
        for p in &policies {
            by_namespace.entry(&p.key.namespace).or_default().push(p);
        }
        let pods = engine.pods();
        let net = addresses::PodNetwork::new(&pods, &options.pod_cidrs);
        Cluster {
            engine,
            namespaces,
            policies,
            by_namespace,
            pods,
            net,
            peers_seen: Default::default(),
        }
    }

    fn pods_in(&self, namespace: &str) -> impl Iterator<Item = &'a Pod> {
        self.engine.pods_in(namespace)
    }

    /// The labels of an existing namespace.
    fn namespace(&self, name: &str) -> Option<&'a Labels> {
        let i = self
            .namespaces
            .binary_search_by(|(n, _)| (***n).cmp(name))
            .ok()?;
        Some(self.namespaces[i].1)
    }
}

/// Every finding over what `engine` holds, sorted by object and field.
///
/// Without any Namespace or Pod (policies alone, e.g. a repository of policies linted in CI),
/// nothing can be said about what selectors select or which namespaces exist, so only the
/// checks of each policy alone run (rules `policyTypes` leaves unused).
pub fn lint(engine: &Engine, options: &Options) -> Vec<Finding> {
    let cluster = Cluster::new(engine, options);
    let mut out = Vec::new();
    for policy in &cluster.policies {
        // What the policy says alone holds without any cluster.
        types::policy(policy, &mut out);
    }
    if cluster.pods.is_empty() && cluster.namespaces.is_empty() {
        out.sort();
        return out;
    }
    for policy in &cluster.policies {
        let before = out.len();
        selectors::policy(&cluster, policy, &mut out);
        // A policy whose namespace does not exist selects nothing: say that once.
        if out[before..]
            .iter()
            .any(|f| f.check == Check::MissingNamespace)
        {
            continue;
        }
        ports::policy(&cluster, policy, &mut out);
        addresses::policy(&cluster, policy, &mut out);
    }
    addresses::shared_ips(&cluster.net, &mut out);
    out.sort();
    out.dedup();
    out
}

/// A finding about `policy`.
fn finding(
    policy: &NetworkPolicy,
    field: impl Into<String>,
    check: Check,
    message: String,
    suggestion: String,
) -> Finding {
    Finding {
        kind: "NetworkPolicy".into(),
        object: policy.key.to_string(),
        field: field.into(),
        check,
        message,
        suggestion,
    }
}

/// Every rule of `policy` with its path: (direction, `spec.ingress[i]`, rule).
fn rules(policy: &NetworkPolicy) -> impl Iterator<Item = (Direction, String, &PolicyRule)> {
    Direction::BOTH.into_iter().flat_map(move |dir| {
        policy
            .rules(dir)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(move |(i, r)| (dir, format!("spec.{dir}[{i}]"), r))
    })
}

/// Every peer of `rule` with its path under `rule_path`.
fn peers<'a>(
    dir: Direction,
    rule_path: &str,
    rule: &'a PolicyRule,
) -> impl Iterator<Item = (String, &'a Peer)> + 'a {
    let rule_path = rule_path.to_string();
    let field = match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    rule.peers
        .iter()
        .flatten()
        .enumerate()
        .map(move |(j, p)| (format!("{rule_path}.{field}[{j}]"), p))
}

/// "1 pod", "3 pods".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests;
