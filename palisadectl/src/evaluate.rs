//! `palisadectl evaluate`: reachability matrices and single-flow explanations, computed from
//! the compiled node slices through the same evaluation the datapath mirrors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::Error;
use std::borrow::Cow;

use palisade_policy::cluster::{ClusterView, PodInfo, Probe};
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

/// Which pods a matrix shows, and how.
#[derive(Clone, Debug, Default)]
pub struct MatrixOptions {
    /// Only pods of these namespaces (rows and columns); empty: every pod.
    pub namespaces: Vec<String>,
    /// One row and column a namespace: how many of its pods' pairs are allowed.
    pub group_by_namespace: bool,
}

impl MatrixOptions {
    fn pods<'a>(&self, view: &'a ClusterView) -> Vec<&'a PodInfo> {
        view.pods()
            .iter()
            .filter(|p| {
                self.namespaces.is_empty() || self.namespaces.iter().any(|n| *n == *p.key.namespace)
            })
            .collect()
    }
}

/// A cell of a namespace matrix: allowed pairs of pods, of all pairs.
#[derive(Serialize, Clone, Copy, Default)]
struct Pairs {
    allowed: usize,
    pairs: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Matrix {
    Pods(BTreeMap<String, BTreeMap<String, bool>>),
    Namespaces(BTreeMap<String, BTreeMap<String, Pairs>>),
}

#[derive(Serialize)]
struct ProbeMatrix {
    port: u16,
    protocol: Protocol,
    matrix: Matrix,
}

#[derive(Serialize)]
struct MatrixReport {
    probes: Vec<ProbeMatrix>,
}

fn by_namespace(
    view: &ClusterView,
    pods: &[&PodInfo],
    probe: Probe,
) -> BTreeMap<String, BTreeMap<String, Pairs>> {
    let mut out: BTreeMap<String, BTreeMap<String, Pairs>> = BTreeMap::new();
    for s in pods {
        for d in pods {
            let cell = out
                .entry(s.key.namespace.to_string())
                .or_default()
                .entry(d.key.namespace.to_string())
                .or_default();
            cell.pairs += 1;
            cell.allowed += usize::from(view.allowed(s.ip, d.ip, probe));
        }
    }
    out
}

pub fn matrix_json(view: &ClusterView, probes: &[Probe], options: &MatrixOptions) -> String {
    let pods = options.pods(view);
    let report = MatrixReport {
        probes: probes
            .iter()
            .map(|p| ProbeMatrix {
                port: p.port,
                protocol: p.protocol,
                matrix: if options.group_by_namespace {
                    Matrix::Namespaces(by_namespace(view, &pods, *p))
                } else {
                    Matrix::Pods(
                        pods.iter()
                            .map(|s| {
                                let row = pods
                                    .iter()
                                    .map(|d| (d.key.to_string(), view.allowed(s.ip, d.ip, *p)))
                                    .collect();
                                (s.key.to_string(), row)
                            })
                            .collect(),
                    )
                },
            })
            .collect(),
    };
    serde_json::to_string_pretty(&report).expect("serialisable")
}

pub fn matrix_table(view: &ClusterView, probes: &[Probe], options: &MatrixOptions) -> String {
    let pods = options.pods(view);
    let mut out = String::new();
    if pods.is_empty() {
        out.push_str(if view.pods().is_empty() {
            "no pods with an address in the manifests: nothing to evaluate\n"
        } else {
            "no pods with an address in the namespaces asked for: nothing to evaluate\n"
        });
        return out;
    }
    for probe in probes {
        // Rows and columns: pods, or namespaces with their cells' marks.
        let (names, marks): (Vec<String>, Vec<Vec<&str>>) = if options.group_by_namespace {
            let m = by_namespace(view, &pods, *probe);
            let names: Vec<String> = m.keys().cloned().collect();
            let marks = m
                .values()
                .map(|row| {
                    row.values()
                        .map(|c| match c.allowed {
                            0 => "X",
                            a if a == c.pairs => ".",
                            _ => "~",
                        })
                        .collect()
                })
                .collect();
            (names, marks)
        } else {
            let names = pods.iter().map(|p| p.key.to_string()).collect();
            let marks = pods
                .iter()
                .map(|s| {
                    pods.iter()
                        .map(|d| {
                            if view.allowed(s.ip, d.ip, *probe) {
                                "."
                            } else {
                                "X"
                            }
                        })
                        .collect()
                })
                .collect();
            (names, marks)
        };
        let legend = if options.group_by_namespace {
            "row: from, column: to; . every pod pair allowed, ~ some, X none"
        } else {
            "row: from, column: to; . allowed, X denied"
        };
        let _ = writeln!(out, "{}/{}   ({legend})", probe.protocol, probe.port);
        let width = names.iter().map(String::len).max().unwrap_or(0);
        let num = names.len().to_string().len();
        let _ = write!(out, "{:num$} {:width$} ", "", "");
        for i in 1..=names.len() {
            let _ = write!(out, " {i:>num$}");
        }
        out.push('\n');
        for (i, (name, row)) in names.iter().zip(&marks).enumerate() {
            let _ = write!(out, "{:>num$} {name:width$} ", i + 1);
            for mark in row {
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
