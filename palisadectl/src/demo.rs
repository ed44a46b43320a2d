//! `palisadectl demo`: the seed scenarios under `examples/`, embedded in the binary, compiled
//! and evaluated with no files and no cluster.

use std::fmt::Write as _;

use crate::Error;
use palisade_policy::cluster::{ClusterView, Probe};
use palisade_policy::model::Protocol;

use crate::evaluate;
use crate::load::parse_sources;

struct Scenario {
    name: &'static str,
    title: &'static str,
    files: &'static [(&'static str, &'static str)],
    probes: &'static [(u16, Protocol)],
    /// (from, to, port, protocol) flows to explain.
    flows: &'static [(&'static str, &'static str, u16, Protocol)],
}

macro_rules! example {
    ($path:literal) => {
        ($path, include_str!(concat!("../../examples/", $path)))
    };
}

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "microservices",
        title: "frontend 80 from outside; frontend -> backend 8080; backend -> mysql 3306, redis 6379; default deny",
        files: &[
            example!("microservices/00-namespace.yaml"),
            example!("microservices/10-pods.yaml"),
            example!("microservices/20-policies.yaml"),
        ],
        probes: &[(80, TCP), (8080, TCP), (3306, TCP), (6379, TCP)],
        flows: &[
            ("203.0.113.7", "microservices/frontend", 80, TCP),
            ("microservices/frontend", "microservices/backend", 8080, TCP),
            ("microservices/frontend", "microservices/mysql", 3306, TCP),
        ],
    },
    Scenario {
        name: "three-tier",
        title: "frontend 80/443 from anywhere; backend only from frontend 8080; database only from backend 5432",
        files: &[example!("three-tier/manifests.yaml")],
        probes: &[(80, TCP), (8080, TCP), (5432, TCP)],
        flows: &[("production/frontend", "production/database", 5432, TCP)],
    },
    Scenario {
        name: "dns-https-egress",
        title: "myapp may send only DNS (UDP 53) and HTTPS (TCP 443), to pods of any namespace",
        files: &[example!("dns-https-egress/manifests.yaml")],
        probes: &[(53, UDP), (443, TCP), (80, TCP)],
        flows: &[("default/myapp", "8.8.8.8", 53, UDP)],
    },
    Scenario {
        name: "ipblock-except",
        title: "role=db: 6379 from 172.17.0.0/16 except 172.17.1.0/24, from project=myproject, from role=frontend",
        files: &[example!("ipblock-except/manifests.yaml")],
        probes: &[(6379, TCP)],
        flows: &[
            ("172.17.0.9", "default/db", 6379, TCP),
            ("172.17.1.9", "default/db", 6379, TCP),
        ],
    },
    Scenario {
        name: "namespace-isolation",
        title: "demo: deny all ingress, allow the same namespace, allow namespaces labelled name=frontend",
        files: &[example!("namespace-isolation/manifests.yaml")],
        probes: &[(8080, TCP)],
        flows: &[("other/intruder", "demo/api", 8080, TCP)],
    },
    Scenario {
        name: "ports",
        title: "TCP, UDP and SCTP; single ports, endPort ranges and named ports",
        files: &[example!("ports/manifests.yaml")],
        probes: &[(80, TCP), (8080, TCP), (32500, TCP), (28, SCTP)],
        flows: &[("default/client", "default/web-b", 8080, TCP)],
    },
    Scenario {
        name: "env-isolation",
        title: "default deny; env=production only from env=production; web 80 from project=myproject",
        files: &[example!("env-isolation/manifests.yaml")],
        probes: &[(80, TCP), (8080, TCP)],
        flows: &[("myproject/partner", "default/web", 80, TCP)],
    },
];

/// Evaluate every embedded scenario; returns what to print.
pub fn run(json: bool) -> Result<String, Error> {
    let mut out = String::new();
    if json {
        out.push_str("{\"scenarios\": [\n");
    } else {
        out.push_str(
            "Palisade: the seed NetworkPolicy scenarios, compiled into per-node slices and evaluated\n\
             from those slices as the datapath will. Evaluate one yourself, e.g.:\n  \
             palisadectl evaluate -f examples/microservices --probe 8080/TCP\n  \
             palisadectl slice -f examples/microservices --node node-2 -o table\n\n",
        );
    }
    for (i, s) in SCENARIOS.iter().enumerate() {
        let sources: Vec<(String, String)> = s
            .files
            .iter()
            .map(|(p, t)| (format!("examples/{p}"), t.to_string()))
            .collect();
        let loaded = parse_sources(&sources, "default");
        if !loaded.errors.is_empty() {
            return Err(Error::Usage(format!(
                "embedded example {} is invalid: {:?}",
                s.name, loaded.errors
            )));
        }
        let engine = loaded.engine();
        let view = ClusterView::new(&engine);
        let probes: Vec<Probe> = s
            .probes
            .iter()
            .map(|&(port, protocol)| Probe { port, protocol })
            .collect();
        if json {
            let sep = if i + 1 < SCENARIOS.len() { "," } else { "" };
            let _ = writeln!(
                out,
                "{{\"name\": \"{}\", \"result\": {}}}{sep}",
                s.name,
                evaluate::matrix_json(&view, &probes, &Default::default())
            );
            continue;
        }
        let _ = writeln!(out, "== {}: {}", s.name, s.title);
        let _ = writeln!(out, "   manifests: examples/{}/\n", s.name);
        out.push_str(&evaluate::matrix_table(&view, &probes, &Default::default()));
        for &(from, to, port, protocol) in s.flows {
            let src = evaluate::resolve(&view, from, "from")?;
            let dst = evaluate::resolve(&view, to, "to")?;
            out.push_str(
                &evaluate::explain(&engine, &view, src, dst, Probe { port, protocol }, false).text,
            );
        }
        out.push('\n');
    }
    if json {
        out.push_str("]}\n");
    }
    Ok(out)
}
