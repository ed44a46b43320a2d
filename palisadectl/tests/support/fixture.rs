#![allow(dead_code)] // each test binary uses a different part of the fixture
//! Build manifests in a test, run the real `palisadectl evaluate` on them (through stdin), and
//! read its JSON.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn palisadectl(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palisadectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Optional parts of a test pod.
pub struct PodOpts {
    /// (name, number, protocol) container ports.
    pub ports: &'static [(&'static str, u16, &'static str)],
    pub host_network: bool,
    pub phase: &'static str,
}

impl Default for PodOpts {
    fn default() -> PodOpts {
        PodOpts {
            ports: &[],
            host_network: false,
            phase: "Running",
        }
    }
}

#[derive(Default, Clone)]
pub struct Fixture {
    docs: Vec<String>,
}

fn labels(kv: &[(&str, &str)]) -> String {
    let inner: Vec<String> = kv.iter().map(|(k, v)| format!("'{k}': '{v}'")).collect();
    format!("{{{}}}", inner.join(", "))
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::default()
    }

    pub fn raw(mut self, yaml: &str) -> Fixture {
        self.docs.push(yaml.to_string());
        self
    }

    pub fn ns(self, name: &str, l: &[(&str, &str)]) -> Fixture {
        self.raw(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {}}}\n",
            labels(l)
        ))
    }

    /// A pod on `node` at `ip` with the extras of `opts`.
    pub fn pod_with(
        self,
        ns: &str,
        name: &str,
        l: &[(&str, &str)],
        node: &str,
        ip: &str,
        opts: PodOpts,
    ) -> Fixture {
        let ports: Vec<String> = opts
            .ports
            .iter()
            .map(|(n, p, proto)| format!("{{name: {n}, containerPort: {p}, protocol: {proto}}}"))
            .collect();
        self.raw(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {}}}\nspec: {{nodeName: {node}, hostNetwork: {}, containers: [{{name: c, image: i, ports: [{}]}}]}}\nstatus: {{phase: {}, podIP: {ip}}}\n",
            labels(l),
            opts.host_network,
            ports.join(", "),
            opts.phase,
        ))
    }

    pub fn pod(self, ns: &str, name: &str, l: &[(&str, &str)], node: &str, ip: &str) -> Fixture {
        self.pod_with(ns, name, l, node, ip, PodOpts::default())
    }

    /// A NetworkPolicy whose `spec` is the given YAML (block style, indented by 2).
    pub fn policy(self, ns: &str, name: &str, spec: &str) -> Fixture {
        self.raw(&format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"))
    }

    pub fn text(&self) -> String {
        self.docs.join("---\n")
    }

    pub fn matrices(&self, probes: &[&str]) -> Matrices {
        let mut args = vec!["evaluate", "-f", "-", "-o", "json"];
        for p in probes {
            args.extend(["--probe", p]);
        }
        let out = palisadectl(&args, &self.text());
        assert!(
            out.status.success(),
            "palisadectl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Matrices(serde_json::from_slice(&out.stdout).expect("JSON output"))
    }

    /// `evaluate --from --to` as JSON; (allowed, explanation).
    pub fn explain(&self, from: &str, to: &str, port: u16, protocol: &str) -> (bool, Value) {
        let port = port.to_string();
        let args = [
            "evaluate",
            "-f",
            "-",
            "-o",
            "json",
            "--from",
            from,
            "--to",
            to,
            "--port",
            &port,
            "--protocol",
            protocol,
        ];
        let out = palisadectl(&args, &self.text());
        let code = out.status.code();
        assert!(
            code == Some(0) || code == Some(3),
            "palisadectl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
        assert_eq!(
            v["allowed"].as_bool(),
            Some(code == Some(0)),
            "exit status agrees with the verdict"
        );
        (code == Some(0), v)
    }
}

pub struct Matrices(pub Value);

impl Matrices {
    /// Is `from` → `to` allowed in probe number `probe`?
    pub fn allowed(&self, probe: usize, from: &str, to: &str) -> bool {
        self.0["probes"][probe]["matrix"][from][to]
            .as_bool()
            .unwrap_or_else(|| panic!("no cell {from} -> {to} in probe {probe}"))
    }

    pub fn pods(&self) -> Vec<String> {
        self.0["probes"][0]["matrix"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// Assert that in probe `probe` exactly `pairs` (plus every pod to itself) are allowed.
    pub fn assert_only(&self, probe: usize, pairs: &[(&str, &str)]) {
        let want: BTreeSet<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let pods = self.pods();
        let mut wrong = Vec::new();
        for s in &pods {
            for d in &pods {
                let expected = s == d || want.contains(&(s.clone(), d.clone()));
                if self.allowed(probe, s, d) != expected {
                    wrong.push(format!(
                        "{s} -> {d}: expected {}",
                        if expected { "allowed" } else { "denied" }
                    ));
                }
            }
        }
        let p = &self.0["probes"][probe];
        assert!(
            wrong.is_empty(),
            "probe {}/{}:\n{}",
            p["port"],
            p["protocol"],
            wrong.join("\n")
        );
    }

    /// Assert that in probe `probe` everything is allowed except `pairs`.
    pub fn assert_all_but(&self, probe: usize, pairs: &[(&str, &str)]) {
        let deny: BTreeSet<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let pods = self.pods();
        for s in &pods {
            for d in &pods {
                let expected = !deny.contains(&(s.clone(), d.clone()));
                assert_eq!(
                    self.allowed(probe, s, d),
                    expected,
                    "{s} -> {d} in probe {probe}"
                );
            }
        }
    }
}
