//! Manifests as text: multi-document YAML or JSON, `kind: List` (and `*List`), into validated
//! model objects. Pure: the caller reads the files; this turns their text into objects and
//! located problems. Kinds Palisade does not use (Deployments, Services, custom resources) are
//! listed as ignored, never as errors, because real manifest bundles mix them in; a document
//! that cannot be identified (no `kind` or `apiVersion`, a misspelled kind, an API version that
//! does not serve the kind) is an error, and so is a field the Kubernetes type does not have
//! (the API server's strict field validation). Parsing is bounded ([`Limits`]): input size,
//! nesting depth, alias expansion.

use std::fmt;

mod identify;
mod strict;
mod yaml;

pub use identify::{distance, nearest};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::k8s::{self, FieldError, Kind, Rejection};
use crate::model::{Command, Namespace, NetworkPolicy, Pod};
use identify::Identity;

/// A validated object read from a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
}

/// An object's identity: its kind and `namespace/name` (a namespace's name).
pub type Key = (Kind, String);

/// The identity of the object a command creates, replaces or deletes.
pub fn command_key(c: &Command) -> Key {
    match c {
        Command::UpsertNamespace(n) => (Kind::Namespace, n.name.to_string()),
        Command::DeleteNamespace(n) => (Kind::Namespace, n.to_string()),
        Command::UpsertPod(p) => (Kind::Pod, p.key.to_string()),
        Command::DeletePod(k) => (Kind::Pod, k.to_string()),
        Command::UpsertPolicy(p) => (Kind::NetworkPolicy, p.key.to_string()),
        Command::DeletePolicy(k) => (Kind::NetworkPolicy, k.to_string()),
    }
}

impl Object {
    /// The object an upsert command carries (`None` for a delete).
    pub fn from_command(c: Command) -> Option<Object> {
        match c {
            Command::UpsertNamespace(n) => Some(Object::Namespace(n)),
            Command::UpsertPod(p) => Some(Object::Pod(p)),
            Command::UpsertPolicy(p) => Some(Object::NetworkPolicy(p)),
            _ => None,
        }
    }

    pub fn key(&self) -> Key {
        (self.kind(), self.name())
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// The command that creates or replaces this object.
    pub fn upsert(self) -> Command {
        match self {
            Object::Namespace(n) => Command::UpsertNamespace(n),
            Object::Pod(p) => Command::UpsertPod(p),
            Object::NetworkPolicy(p) => Command::UpsertPolicy(p),
        }
    }

    /// The object itself (without its kind) as JSON: how introspection shows what Palisade
    /// holds, and what [`Object::from_json`] reads back.
    pub fn to_json(&self) -> String {
        let json = match self {
            Object::Namespace(n) => serde_json::to_string(n),
            Object::Pod(p) => serde_json::to_string(p),
            Object::NetworkPolicy(p) => serde_json::to_string(p),
        };
        json.expect("model objects serialize")
    }

    /// An object of `kind` from [`Object::to_json`]'s output.
    pub fn from_json(kind: Kind, json: &str) -> Result<Object, serde_json::Error> {
        Ok(match kind {
            Kind::Namespace => Object::Namespace(serde_json::from_str(json)?),
            Kind::Pod => Object::Pod(serde_json::from_str(json)?),
            Kind::NetworkPolicy => Object::NetworkPolicy(serde_json::from_str(json)?),
        })
    }

    /// The command that deletes this object.
    pub fn delete(self) -> Command {
        match self {
            Object::Namespace(n) => Command::DeleteNamespace(n.name),
            Object::Pod(p) => Command::DeletePod(p.key),
            Object::NetworkPolicy(p) => Command::DeletePolicy(p.key),
        }
    }

    /// What is worth saying about a valid object that is probably not what was meant.
    pub fn warning(&self) -> Option<String> {
        match self {
            Object::Pod(p) if p.node.is_none() && p.peer_ip().is_some() => Some(format!(
                "Pod {} has an address but no spec.nodeName: it is a peer of other pods but no node enforces its own policies",
                p.key
            )),
            _ => None,
        }
    }

    /// `namespace/name`, or the name of a namespace.
    pub fn name(&self) -> String {
        match self {
            Object::Namespace(n) => n.name.to_string(),
            Object::Pod(p) => p.key.to_string(),
            Object::NetworkPolicy(p) => p.key.to_string(),
        }
    }
}

/// Where in the input an object or problem is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub source: String,
    /// 1-based document number within the source.
    pub document: usize,
    /// 0-based index within a `List`'s `items`.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {}", self.source, self.document)?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        f.write_str(")")
    }
}

/// What went wrong with one document or object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum Problem {
    #[error("not valid YAML or JSON: {0}")]
    Syntax(String),
    #[error("not a Kubernetes object: {0}")]
    NotAnObject(String),
    #[error("{kind} {object}: field {field}: {message}")]
    Malformed {
        kind: String,
        object: String,
        field: String,
        message: String,
    },
    #[error("{0}")]
    Rejected(Rejection),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct ManifestError {
    pub location: Location,
    pub problem: Problem,
}

/// Everything read from one source.
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<(Location, Object)>,
    pub errors: Vec<ManifestError>,
    /// Objects of kinds Palisade does not use: (where, `Kind name`).
    pub ignored: Vec<(Location, String)>,
}

impl Parsed {
    /// Every object as an upsert, in order; the first error instead when any document was
    /// invalid (for fixtures, tests and generated manifests, which must be whole).
    pub fn upserts(self) -> Result<Vec<Command>, Box<ManifestError>> {
        match self.errors.into_iter().next() {
            Some(e) => Err(Box::new(e)),
            None => Ok(self.objects.into_iter().map(|(_, o)| o.upsert()).collect()),
        }
    }
}

/// Bounds on what one source may cost to parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of text.
    pub max_bytes: usize,
    /// Nesting of mappings and sequences.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: 16 << 20,
            max_depth: 64,
        }
    }
}

/// Parse every document in `text` within the default [`Limits`]. Objects without a namespace
/// land in `default_ns`.
pub fn parse(source: &str, text: &str, default_ns: &str) -> Parsed {
    parse_with(source, text, default_ns, &Limits::default())
}

/// Parse every document in `text` within `limits`.
pub fn parse_with(source: &str, text: &str, default_ns: &str, limits: &Limits) -> Parsed {
    let mut out = Parsed::default();
    for (i, doc) in yaml::documents(text, limits).into_iter().enumerate() {
        let location = Location {
            source: source.to_string(),
            document: i + 1,
            item: None,
        };
        match doc {
            Ok(value) => read_value(&value, location, default_ns, &mut out),
            Err(e) => out.errors.push(ManifestError {
                location,
                problem: Problem::Syntax(e),
            }),
        }
    }
    out
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

fn read_value(value: &Value, location: Location, default_ns: &str, out: &mut Parsed) {
    let fail = |out: &mut Parsed, location: Location, problem| {
        out.errors.push(ManifestError { location, problem });
    };
    if !value.is_object() {
        return fail(
            out,
            location,
            Problem::NotAnObject("expected a mapping with apiVersion and kind".into()),
        );
    }
    let kind = str_field(value, &["kind"]).unwrap_or_default();
    let api_version = str_field(value, &["apiVersion"]).unwrap_or_default();
    if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
        let Some(items) = value.get("items").and_then(Value::as_array) else {
            return fail(
                out,
                location,
                Problem::NotAnObject(format!("{kind} has no 'items' list")),
            );
        };
        for (i, item) in items.iter().enumerate() {
            let loc = Location {
                item: Some(i),
                ..location.clone()
            };
            read_value(item, loc, default_ns, out);
        }
        return;
    }
    let name = || display_name(value, default_ns);
    let result = match identify::identify(api_version, kind) {
        Identity::Other => {
            out.ignored.push((location, format!("{kind} {}", name())));
            return;
        }
        Identity::Unknown(why) => Err(Problem::NotAnObject(format!("{why} ({})", name()))),
        Identity::WrongVersion(k, why) => Err(Problem::Malformed {
            kind: k.to_string(),
            object: name(),
            field: "apiVersion".into(),
            message: why,
        }),
        Identity::Ours(Kind::Namespace) => typed::<core::Namespace>(value, kind, default_ns)
            .and_then(|o| k8s::namespace(&o).map_err(Problem::Rejected))
            .map(Object::Namespace),
        Identity::Ours(Kind::Pod) => typed::<core::Pod>(value, kind, default_ns)
            .and_then(|o| k8s::pod(&o, default_ns).map_err(Problem::Rejected))
            .map(Object::Pod),
        Identity::Ours(Kind::NetworkPolicy) => typed::<net::NetworkPolicy>(value, kind, default_ns)
            .and_then(|o| k8s::network_policy(&o, default_ns).map_err(Problem::Rejected))
            .map(Object::NetworkPolicy),
    };
    match result {
        Ok(object) => out.objects.push((location, object)),
        Err(problem) => fail(out, location, problem),
    }
}

fn display_name(v: &Value, default_ns: &str) -> String {
    let name = str_field(v, &["metadata", "name"]).unwrap_or("<unnamed>");
    if str_field(v, &["kind"]) == Some("Namespace") {
        return name.to_string();
    }
    let ns = str_field(v, &["metadata", "namespace"]).unwrap_or(default_ns);
    format!("{ns}/{name}")
}

fn typed<T: DeserializeOwned>(value: &Value, kind: &str, default_ns: &str) -> Result<T, Problem> {
    strict::decode(value).map_err(|failure| {
        let object = display_name(value, default_ns);
        match failure {
            strict::Failure::Type { field, message } => Problem::Malformed {
                kind: kind.to_string(),
                object,
                field,
                message,
            },
            strict::Failure::Unknown(fields) => Problem::Rejected(Rejection {
                kind: identify_kind(kind),
                object,
                errors: fields
                    .into_iter()
                    .map(|field| FieldError {
                        field,
                        reason:
                            "unknown field (the API server's strict field validation rejects it)"
                                .into(),
                    })
                    .collect(),
            }),
        }
    })
}

fn identify_kind(kind: &str) -> Kind {
    match kind {
        "Namespace" => Kind::Namespace,
        "Pod" => Kind::Pod,
        _ => Kind::NetworkPolicy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_lists_and_ignored_kinds() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: prod, labels: {app: a}}
  spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.0.0.1}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d}
---
{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny"}, "spec": {"podSelector": {}}}
"#;
        let parsed = parse("t.yaml", text, "default");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.len(), 3);
        assert_eq!(parsed.objects[1].0.item, Some(0));
        assert_eq!(parsed.objects[2].1.name(), "default/deny");
        assert_eq!(parsed.ignored.len(), 1);
        let Object::Namespace(ns) = &parsed.objects[0].1 else {
            panic!()
        };
        assert_eq!(ns.labels["kubernetes.io/metadata.name"], "prod");
        // What introspection shows reads back as the same object.
        for (_, o) in &parsed.objects {
            assert_eq!(&Object::from_json(o.kind(), &o.to_json()).unwrap(), o);
        }
        assert!(Object::from_json(Kind::Pod, &parsed.objects[0].1.to_json()).is_err());
    }

    #[test]
    fn type_errors_name_the_field_and_syntax_errors_the_document() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: [1]}]}]}\n";
        let parsed = parse("p.yaml", text, "default");
        let err = &parsed.errors[0];
        assert!(
            matches!(&err.problem, Problem::Malformed { field, .. } if field.contains("containerPort")),
            "{err}"
        );
        assert!(err.to_string().contains("p.yaml (document 1)"));
        let parsed = parse("bad.yaml", "a: [", "default");
        assert!(matches!(parsed.errors[0].problem, Problem::Syntax(_)));
        let parsed = parse(
            "v.yaml",
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: x}\n",
            "default",
        );
        assert!(parsed.errors[0].to_string().contains("apiVersion"));
    }
}
