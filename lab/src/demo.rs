//! `palisade-lab demo`: the quick start. Builds nodes and pods in network namespaces from a
//! set of manifests (the seed microservices chain by default), runs controller replicas and an
//! eBPF agent per node, measures reachability with real connections, and prints it beside what
//! `palisadectl evaluate` predicts, with how to inspect the running system.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use palisade_policy::model::Protocol;

use crate::probe::{Flow, Servers};
use crate::Lab;

/// The seed microservices chain.
pub const MICROSERVICES: [(&str, &str); 3] = [
    (
        "00-namespace.yaml",
        include_str!("../../examples/microservices/00-namespace.yaml"),
    ),
    (
        "10-pods.yaml",
        include_str!("../../examples/microservices/10-pods.yaml"),
    ),
    (
        "20-policies.yaml",
        include_str!("../../examples/microservices/20-policies.yaml"),
    ),
];

pub const MICROSERVICES_PROBES: [(u16, Protocol); 4] = [
    (80, Protocol::Tcp),
    (8080, Protocol::Tcp),
    (3306, Protocol::Tcp),
    (6379, Protocol::Tcp),
];

/// Serve every probe in every pod, measure every flow, and compare with the prediction.
/// Returns the report and how many flows disagree.
pub fn measure_and_compare(
    lab: &Lab,
    probes: &[(u16, Protocol)],
) -> Result<(String, usize), crate::LabError> {
    let mut servers = Servers::new();
    for p in &lab.topology.pods {
        for (port, proto) in probes {
            servers.serve(&p.netns, *port, *proto)?;
        }
    }
    let flows = lab.all_flows(probes);
    let started = Instant::now();
    let measured = lab.measured(&flows)?;
    let took = started.elapsed();
    let predicted = lab.predicted(&flows)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} flows probed with real TCP/UDP connections in {:.1} s (a probe waits {} ms for an answer).\n",
        flows.len(),
        took.as_secs_f64(),
        crate::probe::PROBE_TIMEOUT.as_millis()
    );
    out.push_str(&tables(lab, probes, &measured, &predicted));
    let wrong: Vec<&Flow> = flows
        .iter()
        .filter(|f| measured[*f] != predicted[*f])
        .collect();
    if wrong.is_empty() {
        let _ = writeln!(
            out,
            "Every measured verdict equals palisadectl's prediction ({} allowed, {} denied).",
            measured.values().filter(|v| **v).count(),
            measured.values().filter(|v| !**v).count()
        );
    } else {
        let _ = writeln!(
            out,
            "{} measured verdicts differ from the prediction:",
            wrong.len()
        );
        for f in &wrong {
            let _ = writeln!(
                out,
                "  {} -> {} {}/{}: measured {}, predicted {}",
                f.0,
                f.1,
                f.3,
                f.2,
                verdict(measured[*f]),
                verdict(predicted[*f])
            );
        }
    }
    Ok((out, wrong.len()))
}

fn verdict(b: bool) -> &'static str {
    if b {
        "allowed"
    } else {
        "denied"
    }
}

/// Per probe: rows are sources (pods, then outside), columns destinations; each cell the
/// measured verdict then the predicted one (`.` allowed, `X` denied, `-` not probed).
fn tables(
    lab: &Lab,
    probes: &[(u16, Protocol)],
    measured: &BTreeMap<Flow, bool>,
    predicted: &BTreeMap<Flow, bool>,
) -> String {
    let pods: Vec<String> = lab
        .topology
        .pods
        .iter()
        .map(|p| p.spec.name.clone())
        .collect();
    let mut sources = pods.clone();
    sources.push("outside".into());
    let width = sources.iter().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    for (port, proto) in probes {
        let _ = writeln!(
            out,
            "{proto}/{port}   row: from, column: to; each cell: measured then predicted (. allowed, X denied)"
        );
        let _ = write!(out, "{:width$} ", "");
        for i in 1..=pods.len() {
            let _ = write!(out, "  {i:>2}");
        }
        out.push('\n');
        for s in &sources {
            let _ = write!(out, "{s:width$} ");
            for d in &pods {
                let f: Flow = (s.clone(), d.clone(), *port, *proto);
                let mark = |m: Option<&bool>| match m {
                    Some(true) => '.',
                    Some(false) => 'X',
                    None => '-',
                };
                let (m, p) = (mark(measured.get(&f)), mark(predicted.get(&f)));
                let flag = if m != p { '!' } else { ' ' };
                let _ = write!(out, " {m}{p}{flag}");
            }
            out.push('\n');
        }
        for (i, p) in pods.iter().enumerate() {
            let _ = write!(
                out,
                "{}{:>2} {p}",
                if i % 3 == 0 { "\n  " } else { "    " },
                i + 1
            );
        }
        out.push_str("\n\n");
    }
    out
}
