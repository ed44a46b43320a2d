//! From the Kubernetes API types (k8s-openapi) to the validated [`crate::model`].
//!
//! Every rule the API server applies to these objects that matters for enforcement is checked
//! here (contracts.md §2); an object that fails is returned as a [`Rejection`] naming the
//! object and each offending field, and nothing else is affected. Defaults are applied the way
//! the API server applies them (`policyTypes`, `protocol: TCP`, the namespace name label).

pub mod unknown;
pub mod validate;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::model::{
    IgnoredRules, Labels, Name, NamedPort, Namespace, NetworkPolicy, ObjKey, Peer, Pod, PolicyRule,
    PortRef, PortSpec, Protocol, NAMESPACE_NAME_LABEL,
};
use crate::net::Cidr;

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path in the object, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub field: String,
    pub reason: String,
}

/// The field errors found in one object.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Record `r`'s error under `field`; the value when `r` is Ok.
    pub fn take<T>(&mut self, field: impl Into<String>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(field, e);
                None
            }
        }
    }

    /// Record `r`'s error under `field`; true when `r` is Ok.
    pub fn check<T>(&mut self, field: impl Into<String>, r: Result<T, String>) -> bool {
        self.take(field, r).is_some()
    }

    fn finish<T>(self, kind: Kind, object: String, value: T) -> Result<T, Rejection> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Rejection {
                kind,
                object,
                errors: self.0,
            })
        }
    }
}

/// The object kinds Palisade reads.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        })
    }
}

/// Kinds by the names kubectl takes: `Pod`, `pod`, `pods`, `po`; `Namespace`, `ns`;
/// `NetworkPolicy`, `networkpolicies`, `netpol` (any case).
impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        match s.to_ascii_lowercase().as_str() {
            "namespace" | "namespaces" | "ns" => Ok(Kind::Namespace),
            "pod" | "pods" | "po" => Ok(Kind::Pod),
            "networkpolicy" | "networkpolicies" | "netpol" | "netpols" => Ok(Kind::NetworkPolicy),
            _ => Err(format!(
                "{s:?} is not a kind Palisade holds (Namespace, Pod or NetworkPolicy)"
            )),
        }
    }
}

/// An object the API server would reject, with every reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Rejection {
    pub kind: Kind,
    /// `namespace/name`, or the name for a namespace.
    pub object: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} is invalid:", self.kind, self.object)?;
        for (i, e) in self.errors.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{}: {}", e.field, e.reason)?;
        }
        Ok(())
    }
}

/// The namespace an object lands in when its manifest names none (kubectl's default).
pub const DEFAULT_NAMESPACE: &str = "default";

fn object_name(meta: &ObjectMeta, kind: Kind, errs: &mut Errors) -> String {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        errs.push("metadata.name", "name is required");
    } else {
        let check = match kind {
            Kind::Namespace => validate::dns1123_label(&name),
            _ => validate::dns1123_subdomain(&name),
        };
        errs.check("metadata.name", check);
    }
    name
}

fn namespaced_key(meta: &ObjectMeta, kind: Kind, default_ns: &str, errs: &mut Errors) -> ObjKey {
    let name = object_name(meta, kind, errs);
    let ns = meta.namespace.as_deref().unwrap_or(default_ns);
    errs.check("metadata.namespace", validate::dns1123_label(ns));
    ObjKey::new(ns, &name)
}

pub fn namespace(obj: &core::Namespace) -> Result<Namespace, Rejection> {
    let mut errs = Errors::default();
    let name = object_name(&obj.metadata, Kind::Namespace, &mut errs);
    validate::labels(obj.metadata.labels.as_ref(), "metadata.labels", &mut errs);
    let mut labels: Labels = obj.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
    let ns = Namespace {
        name: name.as_str().into(),
        labels,
    };
    errs.finish(Kind::Namespace, name, ns)
}

pub fn pod(obj: &core::Pod, default_ns: &str) -> Result<Pod, Rejection> {
    let mut errs = Errors::default();
    let key = namespaced_key(&obj.metadata, Kind::Pod, default_ns, &mut errs);
    validate::labels(obj.metadata.labels.as_ref(), "metadata.labels", &mut errs);
    let spec = obj.spec.as_ref();
    let status = obj.status.as_ref();

    let mut named_ports = Vec::new();
    for (i, c) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let path = format!("spec.containers[{i}].ports[{j}]");
            let number = errs.take(
                format!("{path}.containerPort"),
                validate::port_number(p.container_port),
            );
            let protocol = errs.take(
                format!("{path}.protocol"),
                p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>(),
            );
            if let Some(name) = &p.name {
                errs.check(format!("{path}.name"), validate::port_name(name));
                if let (Some(port), Some(protocol)) = (number, protocol) {
                    named_ports.push(NamedPort {
                        name: name.as_str().into(),
                        protocol,
                        port,
                    });
                }
            }
        }
    }
    named_ports.sort();
    named_ports.dedup();

    let ip = pod_ipv4(status, &mut errs);
    let node = spec
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty());
    if let Some(n) = node {
        errs.check("spec.nodeName", validate::dns1123_subdomain(n));
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    let pod = Pod {
        labels: obj.metadata.labels.clone().unwrap_or_default(),
        node: node.map(Name::from),
        ip,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        finished: matches!(phase, Some("Succeeded" | "Failed")),
        named_ports,
        key,
    };
    errs.finish(Kind::Pod, pod.key.to_string(), pod)
}

/// The pod's IPv4 address: the first IPv4 entry of `status.podIPs`, else `status.podIP`.
fn pod_ipv4(status: Option<&core::PodStatus>, errs: &mut Errors) -> Option<Ipv4Addr> {
    let status = status?;
    let mut found = None;
    let listed = status.pod_ips.iter().flatten().enumerate();
    let candidates = listed
        .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
        .chain(
            status
                .pod_ip
                .as_deref()
                .map(|ip| ("status.podIP".to_string(), ip)),
        );
    for (field, text) in candidates {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                found.get_or_insert(v4);
            }
            Ok(IpAddr::V6(_)) => {}
            Err(_) => errs.push(field, format!("'{text}' is not a valid IP address")),
        }
    }
    found
}

pub fn network_policy(
    obj: &net::NetworkPolicy,
    default_ns: &str,
) -> Result<NetworkPolicy, Rejection> {
    let mut errs = Errors::default();
    let key = namespaced_key(&obj.metadata, Kind::NetworkPolicy, default_ns, &mut errs);
    let default_spec = net::NetworkPolicySpec::default();
    let spec = obj.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector =
        validate::selector(spec.pod_selector.as_ref(), "spec.podSelector", &mut errs);

    let ingress_rules: Vec<PolicyRule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("spec.ingress[{i}]");
            rule(
                r.from.as_deref(),
                r.ports.as_deref(),
                &path,
                "from",
                &mut errs,
            )
        })
        .collect();
    let egress_rules: Vec<PolicyRule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("spec.egress[{i}]");
            rule(r.to.as_deref(), r.ports.as_deref(), &path, "to", &mut errs)
        })
        .collect();

    let (has_ingress, has_egress) = policy_types(spec, &mut errs);
    let ignored = IgnoredRules {
        ingress: if has_ingress { 0 } else { ingress_rules.len() },
        egress: if has_egress { 0 } else { egress_rules.len() },
    };
    let policy = NetworkPolicy {
        key,
        pod_selector,
        ingress: has_ingress.then_some(ingress_rules),
        egress: has_egress.then_some(egress_rules),
        ignored,
    };
    errs.finish(Kind::NetworkPolicy, policy.key.to_string(), policy)
}

/// `policyTypes`, defaulted as the API server does: Ingress always, Egress when the policy has
/// egress rules.
fn policy_types(spec: &net::NetworkPolicySpec, errs: &mut Errors) -> (bool, bool) {
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.is_empty() {
        let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        return (true, has_egress_rules);
    }
    if types.len() > 2 {
        errs.push(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        );
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => errs.push(
                format!("spec.policyTypes[{i}]"),
                format!(
                    "unsupported value '{other}': supported values are \"Ingress\", \"Egress\""
                ),
            ),
        }
    }
    (ingress, egress)
}

fn rule(
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    path: &str,
    peers_field: &str,
    errs: &mut Errors,
) -> PolicyRule {
    let peers: Vec<Peer> = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(j, p)| peer(p, &format!("{path}.{peers_field}[{j}]"), errs))
        .collect();
    let ports: Vec<PortSpec> = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(j, p)| port(p, &format!("{path}.ports[{j}]"), errs))
        .collect();
    // Missing or empty `from`/`to`/`ports` all mean "everything" in NetworkPolicy v1.
    PolicyRule {
        peers: (!peers.is_empty()).then_some(peers),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

fn peer(p: &net::NetworkPolicyPeer, path: &str, errs: &mut Errors) -> Option<Peer> {
    let has_selector = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match (&p.ip_block, has_selector) {
        (None, false) => {
            errs.push(path, "must specify a peer");
            None
        }
        (Some(_), true) => {
            errs.push(path, "may not specify both ipBlock and another peer");
            None
        }
        (Some(block), false) => ip_block(block, &format!("{path}.ipBlock"), errs),
        (None, true) => {
            let namespaces = p
                .namespace_selector
                .as_ref()
                .map(|s| validate::selector(Some(s), &format!("{path}.namespaceSelector"), errs));
            let pods = validate::selector(
                p.pod_selector.as_ref(),
                &format!("{path}.podSelector"),
                errs,
            );
            Some(Peer::Pods { namespaces, pods })
        }
    }
}

fn ip_block(block: &net::IPBlock, path: &str, errs: &mut Errors) -> Option<Peer> {
    if block.cidr.is_empty() {
        errs.push(format!("{path}.cidr"), "cidr is required");
        return None;
    }
    let cidr = match block.cidr.parse::<Cidr>() {
        Ok(c) => c,
        Err(e) => {
            errs.push(format!("{path}.cidr"), format!("'{}' {e}", block.cidr));
            return None;
        }
    };
    let mut except = Vec::new();
    let mut ok = true;
    for (k, text) in block.except.iter().flatten().enumerate() {
        let field = format!("{path}.except[{k}]");
        match text.parse::<Cidr>() {
            Err(e) => {
                errs.push(field, format!("'{text}' {e}"));
                ok = false;
            }
            Ok(inner) if !cidr.strictly_contains(inner) => {
                errs.push(
                    field,
                    format!(
                        "'{text}' must be a strict subset of `cidr` ({})",
                        block.cidr
                    ),
                );
                ok = false;
            }
            Ok(Cidr::V4(p)) => except.push(p),
            Ok(Cidr::V6(..)) => {}
        }
    }
    if !ok {
        return None;
    }
    except.sort();
    except.dedup();
    Some(match cidr {
        Cidr::V4(cidr) => Peer::IpBlock { cidr, except },
        Cidr::V6(..) => Peer::IpBlockV6 {
            cidr: block.cidr.clone(),
        },
    })
}

fn port(p: &net::NetworkPolicyPort, path: &str, errs: &mut Errors) -> Option<PortSpec> {
    let protocol = errs.take(
        format!("{path}.protocol"),
        p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>(),
    );
    let end_field = format!("{path}.endPort");
    let port = match (&p.port, p.end_port) {
        (None, None) => Some(PortRef::All),
        (None, Some(_)) => {
            errs.push(
                end_field,
                "may not be specified when `port` is not specified",
            );
            None
        }
        (Some(IntOrString::String(name)), end) => {
            let ok = errs.check(format!("{path}.port"), validate::port_name(name));
            if end.is_some() {
                errs.push(end_field, "may not be specified when `port` is non-numeric");
                None
            } else {
                ok.then(|| PortRef::Named(name.as_str().into()))
            }
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = errs.take(format!("{path}.port"), validate::port_number(*n));
            let end = match end {
                None => start,
                Some(e) => match errs.take(end_field.clone(), validate::port_number(e)) {
                    Some(e) if start.is_some_and(|s| e < s) => {
                        errs.push(
                            end_field,
                            format!("{e} must be greater than or equal to `port`"),
                        );
                        None
                    }
                    other => other,
                },
            };
            Some(PortRef::Range(start?, end?))
        }
    };
    Some(PortSpec {
        protocol: protocol?,
        port: port?,
    })
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn kinds_parse_by_kubectl_names_and_name_what_is_wrong() {
        for (s, k) in [
            ("Pod", Kind::Pod),
            ("po", Kind::Pod),
            ("PODS", Kind::Pod),
            ("ns", Kind::Namespace),
            ("Namespace", Kind::Namespace),
            ("netpol", Kind::NetworkPolicy),
            ("networkpolicies", Kind::NetworkPolicy),
        ] {
            assert_eq!(s.parse::<Kind>(), Ok(k), "{s}");
        }
        let e = "Service".parse::<Kind>().unwrap_err();
        assert!(
            e.contains("\"Service\"") && e.contains("NetworkPolicy"),
            "{e}"
        );
    }
}
