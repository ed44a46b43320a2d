//! `palisade-lab bench`: what enforcement costs and how fast it follows a change, on real
//! packets in a lab of two nodes:
//!
//! * TCP throughput between pods on different nodes (iperf3, in the pods' namespaces) with
//!   the programs attached and no policy, then behind default deny with an allow rule for the
//!   iperf3 port (every packet takes the full check), trials interleaved;
//! * time from writing a manifest that denies (or allows again) an open flow to the first
//!   probe that sees it, end to end: controller file watch, compile, sync, agent map writes.

use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::probe::Servers;
use crate::{Lab, LabError, LabOptions};

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub iperf_seconds: u32,
    /// Gbit/s per trial.
    pub no_policy_gbps: Vec<f64>,
    pub policy_gbps: Vec<f64>,
    /// Median with policy over median without.
    pub ratio: f64,
    /// Milliseconds from the manifest write to the first probe seeing the change.
    pub deny_ms: Vec<f64>,
    pub allow_ms: Vec<f64>,
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n";

fn pods() -> String {
    [("a", "node-1", "10.244.1.2"), ("b", "node-2", "10.244.2.2")]
        .iter()
        .map(|(n, node, ip)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {n}, namespace: bench, labels: {{app: {n}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Default deny both ways; a may reach b on `ports`.
fn policy(ports: &[u16]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{protocol: TCP, port: {p}}}"))
        .collect();
    let ports = ports.join(", ");
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: bench}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a-out, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{podSelector: {{matchLabels: {{app: b}}}}}}]\n    ports: [{ports}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b-in, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]\n    ports: [{ports}]\n"
    )
}

fn iperf(lab: &Lab, seconds: u32) -> Result<f64, LabError> {
    let a = lab.topology.pod("bench/a").expect("pod a");
    let b = lab.topology.pod("bench/b").expect("pod b");
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &b.netns, "iperf3", "-s", "-1", "-p", "5201",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            LabError::Command(format!("iperf3 -s: {e} (scripts/setup.sh installs iperf3)"))
        })?;
    // Until the server listens (it serves one client, so a test connection would use it up).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::probe::listening(&b.netns, 5201)? {
        if Instant::now() > deadline {
            return Err(LabError::Command(
                "iperf3 -s did not listen within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new("ip")
        .args([
            "netns", "exec", &a.netns, "iperf3", "-J", "-p", "5201", "-t",
        ])
        .arg(seconds.to_string())
        .args(["-c", &b.spec.ip.to_string()])
        .output()
        .map_err(|e| LabError::Command(format!("iperf3 -c: {e}")))?;
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| LabError::Command(format!("iperf3 output: {e}")))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| LabError::Command(format!("iperf3 failed: {}", v["error"])))
}

/// Milliseconds from writing `text` as the policy to the first probe of `a -> b:8080` whose
/// outcome is `want`, probing every 5 ms.
fn until(lab: &Lab, text: &str, want: bool) -> Result<f64, LabError> {
    let a = lab.topology.pod("bench/a").expect("pod a").netns.clone();
    let b = lab.addr("bench/b");
    let t0 = Instant::now();
    lab.write("policy.yaml", text)?;
    loop {
        let ok = probe_fast(&a, b, 8080)?;
        if ok == want {
            return Ok(t0.elapsed().as_secs_f64() * 1e3);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(LabError::Probe(
                "the change was not enforced within 30 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A TCP connect with a short timeout (a denied SYN is dropped, so this is what a denial
/// looks like). Not entering the namespace is an error, not a denial.
fn probe_fast(ns: &str, dst: std::net::Ipv4Addr, port: u16) -> Result<bool, LabError> {
    crate::netns::in_netns(ns, move || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((dst, port)),
            Duration::from_millis(40),
        )
        .is_ok()
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

pub fn run(
    id: u8,
    opts: LabOptions,
    seconds: u32,
    trials: usize,
    changes: usize,
    progress: &dyn Fn(String),
) -> Result<BenchReport, LabError> {
    let files = vec![
        ("00-ns.yaml".to_string(), NS.to_string()),
        ("10-pods.yaml".to_string(), pods()),
    ];
    progress("starting the lab".into());
    let lab = Lab::start(id, &files, opts)?;
    let mut servers = Servers::new();
    let b_ns = lab.topology.pod("bench/b").expect("pod b").netns.clone();
    servers.serve(&b_ns, 8080, palisade_policy::model::Protocol::Tcp)?;
    let mut report = BenchReport {
        iperf_seconds: seconds,
        no_policy_gbps: Vec::new(),
        policy_gbps: Vec::new(),
        ratio: 0.0,
        deny_ms: Vec::new(),
        allow_ms: Vec::new(),
    };
    let allow = policy(&[5201, 8080]);
    let deny = policy(&[5201]);
    for t in 0..trials {
        let before = lab.revision()?;
        if lab.manifests.join("policy.yaml").exists() {
            lab.remove("policy.yaml")?;
            lab.realized(before)?;
        }
        let g = iperf(&lab, seconds)?;
        progress(format!("trial {}: no policy {g:.2} Gbit/s", t + 1));
        report.no_policy_gbps.push(g);
        lab.apply("policy.yaml", &allow)?;
        let g = iperf(&lab, seconds)?;
        progress(format!("trial {}: with policy {g:.2} Gbit/s", t + 1));
        report.policy_gbps.push(g);
    }
    report.ratio = median(&report.policy_gbps) / median(&report.no_policy_gbps);
    // The last trial left `allow` in force: a may reach b on 8080.
    for i in 0..changes {
        let d = until(&lab, &deny, false)?;
        let before = lab.revision()?;
        lab.realized(before.saturating_sub(1))?;
        let a = until(&lab, &allow, true)?;
        let before = lab.revision()?;
        lab.realized(before.saturating_sub(1))?;
        progress(format!(
            "change {}: denied after {d:.0} ms, allowed again after {a:.0} ms",
            i + 1
        ));
        report.deny_ms.push(d);
        report.allow_ms.push(a);
    }
    Ok(report)
}

pub fn table(r: &BenchReport) -> String {
    let fmt = |v: &[f64], unit: &str| {
        let mut s: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        s.push(format!("(median {:.2} {unit})", median(v)));
        s.join(" ")
    };
    format!(
        "TCP throughput, pod to pod across nodes (iperf3, {} s per trial), Gbit/s:\n\
         \x20 programs attached, no policy:   {}\n\
         \x20 default deny + allow rule:      {}\n\
         \x20 with policy / without: {:.3} (target: at least 0.95)\n\
         Policy change to enforced on packets (manifest write to first probe seeing it), ms:\n\
         \x20 deny:  {}\n\
         \x20 allow: {}\n",
        r.iperf_seconds,
        fmt(&r.no_policy_gbps, "Gbit/s"),
        fmt(&r.policy_gbps, "Gbit/s"),
        r.ratio,
        fmt(&r.deny_ms, "ms"),
        fmt(&r.allow_ms, "ms"),
    )
}
