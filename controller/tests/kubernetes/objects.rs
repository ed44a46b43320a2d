//! Objects as the API server serves them, for the Kubernetes source's tests.

#![allow(dead_code)] // each test binary uses a different part

use palisade_kube_emulator::{Emulator, Resource};
use serde_json::{json, Value};

pub fn namespace(name: &str, team: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"team": team}}})
}

pub fn pod(ns: &str, name: &str, app: &str, node: &str, ip: &str) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

pub fn allow(ns: &str, name: &str, target: &str, from: &str, port: u16) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": target}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}],
                         "ports": [{"protocol": "TCP", "port": port}]}],
        },
    })
}

/// A small cluster: two namespaces, four pods on n1, two policies.
pub fn seed(e: &Emulator) {
    e.apply(Resource::Namespaces, namespace("shop", "a"));
    e.apply(Resource::Namespaces, namespace("bank", "b"));
    e.apply(Resource::Pods, pod("shop", "web", "web", "n1", "10.1.0.1"));
    e.apply(
        Resource::Pods,
        pod("shop", "client", "client", "n1", "10.1.0.2"),
    );
    e.apply(Resource::Pods, pod("bank", "api", "api", "n1", "10.1.0.3"));
    e.apply(Resource::Pods, pod("bank", "db", "db", "n1", "10.1.0.4"));
    e.apply(
        Resource::NetworkPolicies,
        allow("shop", "web", "web", "client", 8080),
    );
    e.apply(
        Resource::NetworkPolicies,
        allow("bank", "db", "db", "api", 5432),
    );
}
