//! Per-packet verdict cost of the TC programs at growing rule counts, measured in the kernel
//! with `BPF_PROG_TEST_RUN` (its `repeat` loop, so no syscall per packet): the claim is that a
//! verdict is a constant number of map lookups whatever the number of rules. Each size is a
//! synthetic slice (endpoints on one node, each accepting a list of TCP ports from a CIDR),
//! installed into a real eBPF dataplane in a private network namespace.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use palisade_agent::ebpf::testrun::{packet, Harness, TCP_SYN};
use palisade_policy::engine::Engine;
use palisade_policy::lower;
use palisade_policy::manifest;
use palisade_policy::model::Command;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub target_rules: usize,
    pub rule_entries: usize,
    pub identity_entries: usize,
    pub endpoints: usize,
    /// Median ns per packet over the trials: an allowed packet into an isolated endpoint
    /// (full check plus conntrack), a denied one, and one out of an endpoint that is not
    /// isolated for egress.
    pub allowed_ns: f64,
    pub denied_ns: f64,
    pub egress_ns: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{0}")]
    Bench(String),
}

/// (endpoints, ports per endpoint) giving `rules` rule entries.
fn shape(rules: usize) -> (usize, usize) {
    let endpoints = ((rules as f64).sqrt() / 3.0).ceil().max(1.0) as usize;
    (endpoints, rules.div_ceil(endpoints).max(1))
}

fn manifests(endpoints: usize, ports: usize) -> String {
    let mut out = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n");
    for i in 0..endpoints {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: bench, labels: {{app: bench}}}}\nspec: {{nodeName: n0, containers: [{{name: c, image: c}}]}}\nstatus: {{phase: Running, podIP: {}}}\n",
            endpoint_ip(i)
        );
    }
    let port_list: Vec<String> = (0..ports)
        .map(|p| format!("{{protocol: TCP, port: {}}}", 1000 + 2 * p))
        .collect();
    let _ = write!(
        out,
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: ports, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: bench}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/8}}}}]\n    ports: [{}]\n",
        port_list.join(", ")
    );
    out
}

fn endpoint_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measure each size in `rules`: `trials` runs of `repeat` packets each.
pub fn run(
    rules: &[usize],
    repeat: u32,
    trials: usize,
    progress: &dyn Fn(String),
) -> Result<Vec<Row>, DatapathError> {
    let err = |e: String| DatapathError::Bench(e);
    let mut h = Harness::start().map_err(|e| err(e.to_string()))?;
    let mut rows = Vec::new();
    for &target in rules {
        let (endpoints, ports) = shape(target);
        let text = manifests(endpoints, ports);
        let commands: Vec<Command> = manifest::parse("bench", &text, "bench")
            .upserts()
            .map_err(|e| err(format!("synthetic manifests: {e}")))?;
        let slice = Engine::load(1, commands).slice("n0");
        let image = lower::lower(&slice);
        progress(format!(
            "{} rule entries ({} endpoints x {} ports): installing",
            image.rules.len(),
            endpoints,
            ports
        ));
        h.install(&slice).map_err(|e| err(e.to_string()))?;
        h.clear_conntrack();
        let last = endpoint_ip(endpoints - 1);
        let peer = Ipv4Addr::new(10, 1, 2, 3);
        let allowed = packet(
            peer,
            last,
            6,
            40000,
            (1000 + 2 * (ports - 1)) as u16,
            TCP_SYN,
        );
        let denied = packet(peer, last, 6, 40000, 999, TCP_SYN);
        let egress = packet(last, peer, 6, 40001, 443, TCP_SYN);
        h.local(last);
        if !Harness::passes(&h.to_pod, &allowed) || Harness::passes(&h.to_pod, &denied) {
            return Err(err(format!(
                "wrong verdicts at {target} rules: the benchmark packets are not what they claim"
            )));
        }
        let per_packet = |prog, pkt: &[u8]| -> Vec<f64> {
            (0..trials)
                .map(|_| {
                    let d: Duration = Harness::cost(prog, pkt, repeat);
                    d.as_nanos() as f64
                })
                .collect()
        };
        let row = Row {
            target_rules: target,
            rule_entries: image.rules.len(),
            identity_entries: image.identities.len(),
            endpoints,
            allowed_ns: median(per_packet(&h.to_pod, &allowed)),
            denied_ns: median(per_packet(&h.to_pod, &denied)),
            egress_ns: median(per_packet(&h.from_pod, &egress)),
        };
        progress(format!(
            "{} rule entries: allowed {:.0} ns, denied {:.0} ns, egress {:.0} ns",
            row.rule_entries, row.allowed_ns, row.denied_ns, row.egress_ns
        ));
        rows.push(row);
    }
    Ok(rows)
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "rule entries  identities  endpoints  allowed ns/pkt  denied ns/pkt  egress ns/pkt\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>12}  {:>10}  {:>9}  {:>14.0}  {:>13.0}  {:>13.0}",
            r.rule_entries, r.identity_entries, r.endpoints, r.allowed_ns, r.denied_ns, r.egress_ns
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let _ = writeln!(
            out,
            "largest / smallest (allowed): {:.2}x (target: within 1.2x)",
            last.allowed_ns / first.allowed_ns
        );
    }
    out
}
