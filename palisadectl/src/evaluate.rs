//! `palisadectl evaluate`: reachability matrices and single-flow explanations, computed from
//! the compiled node slices through the same evaluation the datapath mirrors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::Error;
use palisade_policy::cluster::{ClusterView, FlowExplanation, NodeCheck, PodInfo, Probe};
use palisade_policy::eval::{DirVerdict, Flow};
use palisade_policy::model::{Direction, ObjKey, Protocol};
use palisade_policy::slice::{NodeSlice, PeerRef, Rule};
use serde::Serialize;

/// Parse `PORT/PROTOCOL` (protocol case-insensitive, TCP when omitted).
pub fn parse_probe(s: &str) -> Result<Probe, String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        format!("'{s}': port must be a number from 1 to 65535 (form PORT/PROTOCOL, e.g. 80/TCP)")
    })?;
    Ok(Probe {
        port,
        protocol: parse_protocol(proto)?,
    })
}

/// TCP, UDP or SCTP, any case.
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::from_str(&s.to_ascii_uppercase())
        .map_err(|_| format!("'{s}' is not a protocol NetworkPolicy knows: use TCP, UDP or SCTP"))
}

#[derive(Serialize)]
struct ProbeMatrix {
    port: u16,
    protocol: Protocol,
    matrix: BTreeMap<String, BTreeMap<String, bool>>,
}

#[derive(Serialize)]
struct MatrixReport {
    probes: Vec<ProbeMatrix>,
}

pub fn matrix_json(view: &ClusterView, probes: &[Probe]) -> String {
    let report = MatrixReport {
        probes: probes
            .iter()
            .map(|p| ProbeMatrix {
                port: p.port,
                protocol: p.protocol,
                matrix: view.matrix(*p),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&report).expect("serialisable")
}

pub fn matrix_table(view: &ClusterView, probes: &[Probe]) -> String {
    let pods = view.pods();
    let mut out = String::new();
    if pods.is_empty() {
        out.push_str("no pods with an address in the manifests: nothing to evaluate\n");
        return out;
    }
    let width = pods
        .iter()
        .map(|p| p.key.to_string().len())
        .max()
        .unwrap_or(0);
    let num = pods.len().to_string().len();
    for probe in probes {
        let _ = writeln!(
            out,
            "{}/{}   (row: from, column: to; . allowed, X denied)",
            probe.protocol, probe.port
        );
        let _ = write!(out, "{:num$} {:width$} ", "", "");
        for i in 1..=pods.len() {
            let _ = write!(out, " {i:>num$}");
        }
        out.push('\n');
        for (i, s) in pods.iter().enumerate() {
            let _ = write!(out, "{:>num$} {:width$} ", i + 1, s.key.to_string());
            for d in pods {
                let mark = if view.allowed(s.ip, d.ip, *probe) {
                    "."
                } else {
                    "X"
                };
                let _ = write!(out, " {mark:>num$}");
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// A flow endpoint given on the command line: `NAMESPACE/POD` or an IPv4 address.
pub fn resolve(view: &ClusterView, s: &str, flag: &str) -> Result<Ipv4Addr, Error> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let key: ObjKey = s
        .parse()
        .map_err(|e| Error::Usage(format!("{flag}: {e} or an IPv4 address")))?;
    if let Some(p) = view.pod(&key) {
        return Ok(p.ip);
    }
    let known: Vec<String> = view.pods().iter().map(|p| p.key.to_string()).collect();
    Err(Error::Usage(format!(
        "{flag}: no pod {key} with an address in the manifests (pods without an IP, host-network pods and finished pods are not policy peers); known pods: {}",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RuleView {
    policy: String,
    direction: Direction,
    index: u32,
    peer: String,
    ports: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckView {
    node: String,
    endpoint: String,
    result: &'static str,
    /// Policies isolating the endpoint in this direction (when isolated).
    policies: Vec<String>,
    /// Rules allowing the flow (when allowed by rules).
    rules: Vec<RuleView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SideView {
    ip: Ipv4Addr,
    pod: Option<String>,
    node: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExplainView {
    from: SideView,
    to: SideView,
    protocol: String,
    port: u16,
    allowed: bool,
    self_traffic: bool,
    egress: Option<CheckView>,
    ingress: Option<CheckView>,
}

fn describe_peer(slice: Option<&NodeSlice>, r: &Rule) -> String {
    match r.peer {
        PeerRef::Any => "any address".to_string(),
        PeerRef::Set(id) => slice
            .and_then(|s| s.sets.get(&id))
            .map_or_else(|| format!("set {id}"), |s| s.def.to_string()),
    }
}

fn check_view(view: &ClusterView, dir: Direction, c: &NodeCheck) -> CheckView {
    let slice = view.slice(&c.node);
    let rule_view = |r: &Rule| RuleView {
        policy: r.policy.to_string(),
        direction: dir,
        index: r.index,
        peer: describe_peer(slice, r),
        ports: r.ports.to_string(),
    };
    let (endpoint, result, policies, rules) = match &c.verdict {
        DirVerdict::NotIsolated { endpoint } => (endpoint, "notIsolated", vec![], vec![]),
        DirVerdict::Allowed { endpoint, rules } => {
            let isolating = slice
                .and_then(|s| s.endpoints.values().find(|e| &e.pod == endpoint))
                .and_then(|e| e.dir(dir))
                .map(|d| d.policies.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default();
            (
                endpoint,
                "allowed",
                isolating,
                rules.iter().map(rule_view).collect(),
            )
        }
        DirVerdict::Denied { endpoint, policies } => (
            endpoint,
            "denied",
            policies.iter().map(|p| p.to_string()).collect(),
            vec![],
        ),
    };
    CheckView {
        node: c.node.to_string(),
        endpoint: endpoint.to_string(),
        result,
        policies,
        rules,
    }
}

fn side(ip: Ipv4Addr, pod: &Option<PodInfo>) -> SideView {
    SideView {
        ip,
        pod: pod.as_ref().map(|p| p.key.to_string()),
        node: pod
            .as_ref()
            .and_then(|p| p.node.as_ref())
            .map(|n| n.to_string()),
    }
}

fn explain_view(view: &ClusterView, e: &FlowExplanation, protocol: Protocol) -> ExplainView {
    ExplainView {
        from: side(e.flow.src, &e.source),
        to: side(e.flow.dst, &e.destination),
        protocol: protocol.to_string(),
        port: e.flow.port,
        allowed: e.allowed,
        self_traffic: e.self_traffic,
        egress: e
            .egress
            .as_ref()
            .map(|c| check_view(view, Direction::Egress, c)),
        ingress: e
            .ingress
            .as_ref()
            .map(|c| check_view(view, Direction::Ingress, c)),
    }
}

pub struct Explained {
    pub text: String,
    pub allowed: bool,
}

pub fn explain(
    view: &ClusterView,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    probe: Probe,
    json: bool,
) -> Explained {
    let flow = Flow {
        src,
        dst,
        protocol: probe.protocol.number(),
        port: probe.port,
    };
    let e = view.explain(&flow);
    let v = explain_view(view, &e, probe.protocol);
    let text = if json {
        serde_json::to_string_pretty(&v).expect("serialisable") + "\n"
    } else {
        explain_text(&v)
    };
    Explained {
        text,
        allowed: e.allowed,
    }
}

fn side_text(s: &SideView) -> String {
    match (&s.pod, &s.node) {
        (Some(p), Some(n)) => format!("{p} ({} on {n})", s.ip),
        (Some(p), None) => format!("{p} ({}, not scheduled)", s.ip),
        _ => format!("{} (not a pod)", s.ip),
    }
}

fn explain_text(v: &ExplainView) -> String {
    let mut out = String::new();
    let verdict = if v.allowed { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(
        out,
        "{} -> {}  {}/{}: {verdict}",
        side_text(&v.from),
        side_text(&v.to),
        v.protocol,
        v.port
    );
    if v.self_traffic {
        let _ = writeln!(out, "  traffic from a pod to itself is always allowed");
        return out;
    }
    for (dir, check, nobody) in [
        (
            "egress",
            &v.egress,
            "the source is not a scheduled pod, so no node checks its egress",
        ),
        (
            "ingress",
            &v.ingress,
            "the destination is not a scheduled pod, so no node checks its ingress",
        ),
    ] {
        let Some(c) = check else {
            let _ = writeln!(out, "  {dir:<7} (nowhere): {nobody}");
            continue;
        };
        let head = format!("  {dir:<7} (on {})", c.node);
        match c.result {
            "notIsolated" => {
                let _ = writeln!(out, "{head}: {} is not isolated for {dir} (no policy selects it for {dir}): allowed", c.endpoint);
            }
            "allowed" => {
                let _ = writeln!(
                    out,
                    "{head}: {} is isolated for {dir} by {}; allowed by:",
                    c.endpoint,
                    c.policies.join(", ")
                );
                for r in &c.rules {
                    let word = if dir == "egress" { "to" } else { "from" };
                    let _ = writeln!(
                        out,
                        "      {} {dir}[{}]: {word} {}, {}",
                        r.policy, r.index, r.peer, r.ports
                    );
                }
            }
            _ => {
                let _ = writeln!(out, "{head}: {} is isolated for {dir} by {} and no rule of theirs allows this flow: DENIED", c.endpoint, c.policies.join(", "));
            }
        }
    }
    out
}
