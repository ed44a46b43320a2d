//! Model objects written back as Kubernetes manifests (JSON documents, one YAML stream per
//! file), so the synthetic cluster can feed a controller through its manifest directory.

use palisade_policy::model::{
    Command, Labels, Namespace, NetworkPolicy, Operator, Peer, Pod, PolicyRule, PortRef, PortSpec,
    Selector,
};
use serde_json::{json, Map, Value};

fn labels(l: &Labels) -> Value {
    Value::Object(
        l.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn selector(s: &Selector) -> Value {
    let exprs: Vec<Value> = s
        .requirements()
        .iter()
        .map(|r| {
            let (op, values): (&str, Vec<&String>) = match &r.op {
                Operator::In(v) => ("In", v.iter().collect()),
                Operator::NotIn(v) => ("NotIn", v.iter().collect()),
                Operator::Exists => ("Exists", vec![]),
                Operator::DoesNotExist => ("DoesNotExist", vec![]),
            };
            let mut e = json!({"key": r.key, "operator": op});
            if !values.is_empty() {
                e["values"] = json!(values);
            }
            e
        })
        .collect();
    if exprs.is_empty() {
        json!({})
    } else {
        json!({ "matchExpressions": exprs })
    }
}

fn namespace(n: &Namespace) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": &*n.name, "labels": labels(&n.labels)}})
}

fn pod(p: &Pod) -> Value {
    let ports: Vec<Value> = p
        .named_ports
        .iter()
        .map(
            |n| json!({"name": &*n.name, "containerPort": n.port, "protocol": n.protocol.as_str()}),
        )
        .collect();
    let mut status = Map::new();
    if let Some(ip) = p.ip {
        status.insert("podIP".into(), json!(ip.to_string()));
    }
    if p.finished {
        status.insert("phase".into(), json!("Succeeded"));
    }
    let mut spec = json!({"containers": [{"name": "app", "image": "app", "ports": ports}], "hostNetwork": p.host_network});
    if let Some(n) = &p.node {
        spec["nodeName"] = json!(&**n);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": &*p.key.name, "namespace": &*p.key.namespace, "labels": labels(&p.labels)},
        "spec": spec,
        "status": status,
    })
}

fn peer(p: &Peer) -> Value {
    match p {
        Peer::Pods { namespaces, pods } => {
            let mut v = json!({"podSelector": selector(pods)});
            if let Some(ns) = namespaces {
                v["namespaceSelector"] = selector(ns);
            }
            v
        }
        Peer::IpBlock { cidr, except } => {
            json!({"ipBlock": {"cidr": cidr.to_string(), "except": except.iter().map(|e| e.to_string()).collect::<Vec<_>>()}})
        }
        Peer::IpBlockV6 { cidr } => json!({"ipBlock": {"cidr": cidr}}),
    }
}

fn port(p: &PortSpec) -> Value {
    let mut v = json!({"protocol": p.protocol.as_str()});
    match &p.port {
        PortRef::All => {}
        PortRef::Range(a, b) => {
            v["port"] = json!(a);
            if a != b {
                v["endPort"] = json!(b);
            }
        }
        PortRef::Named(n) => v["port"] = json!(&**n),
    }
    v
}

fn rules(rules: &[PolicyRule], peers_field: &str) -> Value {
    Value::Array(
        rules
            .iter()
            .map(|r| {
                let mut v = json!({});
                if let Some(ps) = &r.peers {
                    v[peers_field] = Value::Array(ps.iter().map(peer).collect());
                }
                if let Some(ports) = &r.ports {
                    v["ports"] = Value::Array(ports.iter().map(port).collect());
                }
                v
            })
            .collect(),
    )
}

fn policy(p: &NetworkPolicy) -> Value {
    let mut types = Vec::new();
    let mut spec = json!({"podSelector": selector(&p.pod_selector)});
    if let Some(r) = &p.ingress {
        types.push("Ingress");
        spec["ingress"] = rules(r, "from");
    }
    if let Some(r) = &p.egress {
        types.push("Egress");
        spec["egress"] = rules(r, "to");
    }
    spec["policyTypes"] = json!(types);
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": &*p.key.name, "namespace": &*p.key.namespace},
        "spec": spec,
    })
}

/// The Kubernetes object an upsert command carries, as JSON (`None` for deletes).
pub fn object(c: &Command) -> Option<Value> {
    Some(match c {
        Command::UpsertNamespace(n) => namespace(n),
        Command::UpsertPod(p) => pod(p),
        Command::UpsertPolicy(p) => policy(p),
        _ => return None,
    })
}

/// The manifest document of an upsert command (`None` for deletes).
pub fn document(c: &Command) -> Option<String> {
    object(c).map(|v| serde_json::to_string(&v).expect("JSON"))
}

/// Documents joined into one multi-document stream.
pub fn stream<'a>(docs: impl IntoIterator<Item = &'a String>) -> String {
    docs.into_iter().map(|d| format!("---\n{d}\n")).collect()
}

/// Single-pod edits to a cluster written as one manifest file per namespace in `dir`: each
/// adds a pod to a namespace's file (rewritten atomically, as an editor or a GitOps tool
/// would), on a node and with an app drawn from the shape.
pub struct Edits<'a> {
    dir: std::path::PathBuf,
    files: std::collections::BTreeMap<String, Vec<String>>,
    rng: crate::synth::Rng,
    shape: &'a crate::synth::Shape,
    made: usize,
}

impl<'a> Edits<'a> {
    /// `files`: each namespace's documents, as written.
    pub fn new(
        dir: &std::path::Path,
        files: std::collections::BTreeMap<String, Vec<String>>,
        shape: &'a crate::synth::Shape,
    ) -> Edits<'a> {
        Edits {
            dir: dir.to_path_buf(),
            files,
            rng: crate::synth::Rng::new(shape.seed ^ 0xed17),
            shape,
            made: 0,
        }
    }

    /// Make the next edit; the namespace it changed.
    pub fn make(&mut self) -> std::io::Result<String> {
        use crate::synth;
        let ns = synth::ns_name(self.rng.below(self.shape.namespaces));
        let pod = synth::pod(
            &ns,
            format!("edit-{}", self.made),
            self.rng.below(synth::APPS_PER_NAMESPACE),
            self.rng.below(self.shape.nodes),
            synth::pod_ip(self.shape.pods + self.made),
        );
        self.made += 1;
        let docs = self.files.entry(ns.clone()).or_default();
        docs.extend(document(&Command::UpsertPod(pod)));
        palisade_files::atomic::write(
            &self.dir.join(format!("{ns}.yaml")),
            stream(docs.iter()).as_bytes(),
        )?;
        Ok(ns)
    }
}

#[cfg(test)]
mod tests {
    use palisade_policy::manifest;

    use super::*;
    use crate::synth::{commands, Shape};

    #[test]
    fn synthetic_objects_survive_the_round_trip_through_manifests() {
        let shape = Shape {
            nodes: 10,
            pods: 200,
            namespaces: 20,
            policies: 160,
            seed: 3,
        };
        let cmds: Vec<Command> = commands(&shape).collect();
        let docs: Vec<String> = cmds.iter().filter_map(document).collect();
        let parsed = manifest::parse("synthetic", &stream(&docs), "default");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors.first());
        assert_eq!(parsed.objects.len(), cmds.len());
        for ((_, o), c) in parsed.objects.iter().zip(&cmds) {
            assert_eq!(&o.clone().upsert(), c);
        }
    }
}
