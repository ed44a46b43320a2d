//! The validated model: what the compiler consumes. Built from the Kubernetes API types by
//! [`crate::k8s`], which rejects what the API server would reject; everything here is
//! already normalised (defaults applied, selectors canonical, CIDRs parsed).

pub mod selector;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::net::Prefix;
pub use selector::{Labels, Operator, Requirement, Selector};

/// Shared, cheaply cloned names (namespaces, pods, policies, nodes).
pub type Name = Arc<str>;

/// The label every namespace carries (set by the API server since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjKey {
    pub namespace: Name,
    pub name: Name,
}

impl ObjKey {
    pub fn new(namespace: &str, name: &str) -> ObjKey {
        ObjKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ObjKey {
    type Err = String;

    fn from_str(s: &str) -> Result<ObjKey, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ObjKey::new(ns, name))
            }
            _ => Err(format!("'{s}' is not of the form NAMESPACE/NAME")),
        }
    }
}

/// Transport protocols NetworkPolicy can name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number carried in the IPv4 header.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == n)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Exactly the strings the Kubernetes API accepts (case-sensitive).
impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unsupported protocol '{s}': supported values are \"SCTP\", \"TCP\", \"UDP\""
                )
            })
    }
}

/// Traffic direction relative to the enforced pod.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: Name,
    /// Always includes `kubernetes.io/metadata.name`.
    pub labels: Labels,
}

impl Namespace {
    /// A namespace known only by name (no Namespace object seen): labelled as the API server
    /// would label it.
    pub fn implicit(name: &str) -> Namespace {
        let mut labels = Labels::new();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        Namespace {
            name: name.into(),
            labels,
        }
    }
}

/// A named container port, what named ports in policies resolve against.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: Name,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub key: ObjKey,
    pub labels: Labels,
    /// `spec.nodeName`.
    pub node: Option<Name>,
    /// The IPv4 address from `status.podIPs`/`status.podIP`.
    pub ip: Option<Ipv4Addr>,
    pub host_network: bool,
    /// Phase `Succeeded` or `Failed`.
    pub finished: bool,
    /// Named container ports, sorted.
    pub named_ports: Vec<NamedPort>,
}

impl Pod {
    /// The address by which this pod is a policy peer, if it is one: it has an IPv4 address,
    /// is not host-network and has not finished.
    pub fn peer_ip(&self) -> Option<Ipv4Addr> {
        if self.host_network || self.finished {
            None
        } else {
            self.ip
        }
    }

    /// Where this pod is enforced: its node and address, if it is a peer and scheduled.
    pub fn endpoint(&self) -> Option<(&Name, Ipv4Addr)> {
        Some((self.node.as_ref()?, self.peer_ip()?))
    }

    /// The port numbers a named port resolves to on this pod.
    pub fn resolve_port<'a>(
        &'a self,
        name: &'a str,
        protocol: Protocol,
    ) -> impl Iterator<Item = u16> + 'a {
        self.named_ports
            .iter()
            .filter(move |p| &*p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub key: ObjKey,
    pub pod_selector: Selector,
    /// `None`: the policy does not affect ingress (policyTypes lacks Ingress).
    /// `Some(rules)`: selected pods are isolated for ingress; `rules` allow (may be empty).
    pub ingress: Option<Vec<PolicyRule>>,
    pub egress: Option<Vec<PolicyRule>>,
    /// Rules the object has in a direction its `policyTypes` leaves out: never enforced, kept
    /// only so the linter can say so (absent from the encoding when there are none, so older
    /// log entries and snapshots read the same).
    #[serde(default, skip_serializing_if = "IgnoredRules::is_empty")]
    pub ignored: IgnoredRules,
}

/// How many rules of each direction `policyTypes` leaves unused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredRules {
    #[serde(default)]
    pub ingress: usize,
    #[serde(default)]
    pub egress: usize,
}

impl IgnoredRules {
    pub fn is_empty(&self) -> bool {
        self.ingress == 0 && self.egress == 0
    }

    pub fn of(&self, dir: Direction) -> usize {
        match dir {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }
}

impl NetworkPolicy {
    pub fn rules(&self, dir: Direction) -> Option<&[PolicyRule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// One ingress or egress rule. A rule allows traffic that matches some peer and some port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// `None`: every peer (`from`/`to` missing or empty).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port of every protocol (`ports` missing or empty).
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// Pods matching `pods` in namespaces matching `namespaces`, or in the policy's own
    /// namespace when `namespaces` is `None`.
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    /// `cidr` minus `except` (IPv4).
    IpBlock { cidr: Prefix, except: Vec<Prefix> },
    /// An IPv6 block: valid, but matches no IPv4 traffic.
    IpBlockV6 { cidr: String },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortRef,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PortRef {
    /// Every port of the protocol.
    All,
    /// `port` (and `endPort`), inclusive.
    Range(u16, u16),
    /// A container port name, resolved against the pod receiving the traffic.
    Named(Name),
}

/// Anything the compiler can be told: the commands of the replicated log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    UpsertNamespace(Namespace),
    DeleteNamespace(Name),
    UpsertPod(Pod),
    DeletePod(ObjKey),
    UpsertPolicy(NetworkPolicy),
    DeletePolicy(ObjKey),
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::UpsertNamespace(_) => "upsert-namespace",
            Command::DeleteNamespace(_) => "delete-namespace",
            Command::UpsertPod(_) => "upsert-pod",
            Command::DeletePod(_) => "delete-pod",
            Command::UpsertPolicy(_) => "upsert-policy",
            Command::DeletePolicy(_) => "delete-policy",
        }
    }
}
