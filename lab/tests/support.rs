#![allow(dead_code)] // each test binary uses some of these
//! Shared by the end-to-end tests: one lab at a time (they share two cores), each with its
//! own ID, and matrices compared with a readable report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

use palisade_lab::probe::Flow;
use palisade_lab::{Lab, LabOptions};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static NEXT_ID: AtomicU8 = AtomicU8::new(11);

pub struct Running {
    pub lab: Lab,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Running {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

/// A running lab for `files` (name, text); panics with the reason when this machine cannot.
pub fn lab_with(files: &[(&str, &str)], opts: LabOptions) -> Running {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(why) = palisade_lab::check_privileges() {
        panic!("end-to-end tests need root, BPF and network namespaces: {why}");
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let lab = Lab::start(id, &files, opts).unwrap_or_else(|e| panic!("lab {id}: {e}"));
    Running { lab, _turn: turn }
}

pub fn lab(files: &[(&str, &str)]) -> Running {
    lab_with(files, LabOptions::beside_executable())
}

/// Measured and predicted verdicts agree; otherwise a table of the differences.
pub fn assert_matches(lab: &Lab, flows: &[Flow]) -> BTreeMap<Flow, bool> {
    let predicted = lab.predicted(flows).expect("predicted");
    let measured = lab.measured(flows).expect("probes run");
    let diff: Vec<String> = flows
        .iter()
        .filter(|f| predicted[*f] != measured[*f])
        .map(|f| {
            format!(
                "  {} -> {} {}/{:?}: predicted {}, measured {}",
                f.0, f.1, f.2, f.3, predicted[f], measured[f]
            )
        })
        .collect();
    assert!(
        diff.is_empty(),
        "measured verdicts differ from the prediction:\n{}\nagent logs:\n{}",
        diff.join("\n"),
        lab.topology
            .nodes
            .iter()
            .map(|n| lab.logs(&format!("agent-{}", n.name)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    measured
}

/// The allowed flows of a matrix, as "from->to:port/proto" strings, sorted.
pub fn allowed(m: &BTreeMap<Flow, bool>) -> Vec<String> {
    let mut v: Vec<String> = m
        .iter()
        .filter(|(_, ok)| **ok)
        .map(|(f, _)| format!("{}->{}:{}/{:?}", f.0, f.1, f.2, f.3))
        .collect();
    v.sort();
    v
}

/// A running pod's manifest: `labels` like "app: web, tier: x", `ports` like
/// "{name: http, containerPort: 80}" entries.
pub fn pod(ns: &str, name: &str, labels: &str, node: &str, ip: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: c, ports: [{ports}]}}]}}\n\
         status: {{phase: Running, podIP: {ip}}}\n"
    )
}

/// A policy manifest from its spec (YAML, indented by two).
pub fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

/// Servers for `probes` in every pod of the lab.
pub fn serve_all(
    lab: &Lab,
    probes: &[(u16, palisade_policy::model::Protocol)],
) -> palisade_lab::probe::Servers {
    let mut s = palisade_lab::probe::Servers::new();
    for p in &lab.topology.pods {
        for (port, proto) in probes {
            s.serve(&p.netns, *port, *proto).unwrap();
        }
    }
    s
}
