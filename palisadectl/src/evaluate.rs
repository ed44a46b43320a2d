//! `palisadectl evaluate`: reachability matrices and single-flow explanations, computed from
//! the compiled node slices through the same evaluation the datapath mirrors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::Error;
use std::borrow::Cow;

use palisade_policy::cluster::{ClusterView, Probe};
use palisade_policy::eval::Flow;
use palisade_policy::model::{ObjKey, Protocol};
use palisade_policy::{report, Engine};
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

pub struct Explained {
    pub text: String,
    pub allowed: bool,
}

/// One flow, explained ([`palisade_policy::report`]): as JSON, or as text
/// ([`crate::explain::text`]), the same as `palisadectl explain` shows online.
pub fn explain(
    engine: &Engine,
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
    let r = report::report(engine, &e, probe.protocol, None, |n| {
        view.slice(n).map(Cow::Borrowed)
    });
    let text = if json {
        serde_json::to_string_pretty(&r).expect("serialisable") + "\n"
    } else {
        crate::explain::text(&r)
    };
    Explained {
        text,
        allowed: e.allowed,
    }
}
