//! Fields an API server sends that the Kubernetes schema Palisade is built with lacks (a newer
//! Kubernetes: the server validated them, so they are no typo), and what Palisade does about
//! them. The typed structs drop such fields silently; here they are found as the typed reading
//! ignores them (serde_ignored, as the strict reading of files does), and handled so that an
//! object is never
//! enforced more openly than the server means it:
//! * in a NetworkPolicy, a rule, peer or port holding one matches nothing (a rule left with
//!   no peer or no port, of those it listed, matches nothing); the policy types are fixed
//!   first, so a policy whose egress rules all go still isolates egress;
//! * one in the policy's own `podSelector`, or anywhere else in its spec outside its rules,
//!   makes whom it applies to, or how, unknown (a new field could narrow the pods its rules
//!   apply to, and its allow rules would then reach pods other policies isolate): the policy
//!   then selects every pod of its namespace and allows nothing, which is narrower than any
//!   reading of it;
//! * in a pod or a namespace (they cannot change labels, addresses or ports as Palisade reads
//!   them) and in metadata, one is ignored.
//!
//! Every one is reported with its path. Files keep strict validation (an unknown field there
//! is a typo, rejected by [`crate::manifest`]).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::networking::v1 as net;
use serde::{Deserialize, Deserializer};

use super::{FieldError, Kind};

/// The Kubernetes version whose schema Palisade reads objects with.
pub const SCHEMA: &str = "Kubernetes 1.37";

/// One step of a path into an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Field(String),
    Index(usize),
}

/// A path into an object, shown as `spec.ingress[0].from[1].ipBlock`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(pub Vec<Step>);

impl FieldPath {
    fn field(&self, i: usize) -> Option<&str> {
        match self.0.get(i) {
            Some(Step::Field(f)) => Some(f),
            _ => None,
        }
    }

    fn index(&self, i: usize) -> Option<usize> {
        match self.0.get(i) {
            Some(Step::Index(n)) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Step::Field(name) if i == 0 => f.write_str(name)?,
                Step::Field(name) => write!(f, ".{name}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A path as serde_ignored reports it.
pub(crate) fn field_path(p: &serde_ignored::Path<'_>) -> FieldPath {
    use serde_ignored::Path;
    fn push(p: &Path<'_>, out: &mut Vec<Step>) {
        match p {
            Path::Root => {}
            Path::Seq { parent, index } => {
                push(parent, out);
                out.push(Step::Index(*index));
            }
            Path::Map { parent, key } => {
                push(parent, out);
                out.push(Step::Field(key.clone()));
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => push(parent, out),
        }
    }
    let mut steps = Vec::new();
    push(p, &mut steps);
    FieldPath(steps)
}

/// An object of type `T` read from `d`, with the paths of the fields `T`'s schema lacks (the
/// typed reading ignores them; below an unknown field nothing more is listed).
pub fn read<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<(T, Vec<FieldPath>), D::Error> {
    let mut unknown = Vec::new();
    let object = serde_ignored::deserialize(d, |p| unknown.push(field_path(&p)))?;
    Ok((object, unknown))
}

fn reason(effect: &str) -> String {
    format!("not in the {SCHEMA} schema Palisade reads objects with: {effect}")
}

/// How the unknown fields of a pod or a namespace are reported: ignored.
pub fn ignored(kind: Kind, unknown: &[FieldPath]) -> Vec<FieldError> {
    let effect = match kind {
        Kind::Pod => "ignored (a pod's labels, addresses and ports as Palisade reads them do not depend on it)",
        Kind::Namespace => "ignored (a namespace's labels do not depend on it)",
        Kind::NetworkPolicy => "ignored",
    };
    unknown
        .iter()
        .map(|p| FieldError {
            field: p.to_string(),
            reason: reason(effect),
        })
        .collect()
}

/// Where one unknown field of a NetworkPolicy sits, for what it does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    /// In `spec.podSelector`, or in the spec outside its rules: whom the policy applies to,
    /// or how, is unknown.
    Target,
    /// In a rule (direction: ingress = true), outside its peers and ports.
    Rule(bool, usize),
    Peer(bool, usize, usize),
    Port(bool, usize, usize),
    /// Outside the spec (metadata, status).
    Elsewhere,
}

fn place(p: &FieldPath) -> Place {
    if p.field(0) != Some("spec") {
        return Place::Elsewhere;
    }
    let ingress = match p.field(1) {
        Some("ingress") => true,
        Some("egress") => false,
        _ => return Place::Target,
    };
    let Some(i) = p.index(2) else {
        return Place::Target;
    };
    let peers = if ingress { "from" } else { "to" };
    match (p.field(3), p.index(4)) {
        (Some(f), Some(j)) if f == peers => Place::Peer(ingress, i, j),
        (Some("ports"), Some(j)) => Place::Port(ingress, i, j),
        _ => Place::Rule(ingress, i),
    }
}

/// Narrow `obj` for its unknown fields (see the module's documentation); what was done about
/// each, to report.
pub fn narrow_network_policy(
    obj: &mut net::NetworkPolicy,
    unknown: &[FieldPath],
) -> Vec<FieldError> {
    let places: Vec<Place> = unknown.iter().map(place).collect();
    let report = unknown
        .iter()
        .zip(&places)
        .map(|(p, place)| FieldError {
            field: p.to_string(),
            reason: reason(match place {
                Place::Target => "whom the policy applies to, or how, is unknown, so it selects every pod of its namespace and allows nothing",
                Place::Rule(..) => "this rule matches nothing",
                Place::Peer(..) => "this peer matches nothing (and its rule, when no other peer is left)",
                Place::Port(..) => "this port matches nothing (and its rule, when no other port is left)",
                Place::Elsewhere => "ignored (outside the spec, it does not change what the policy allows)",
            }),
        })
        .collect();
    if places.iter().all(|p| *p == Place::Elsewhere) {
        return report;
    }
    let Some(spec) = obj.spec.as_mut() else {
        return report;
    };
    // The policy types, as the API server defaults them, fixed before any rule goes.
    if spec.policy_types.as_ref().is_none_or(Vec::is_empty) {
        let mut types = vec!["Ingress".to_string()];
        if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            types.push("Egress".to_string());
        }
        spec.policy_types = Some(types);
    }
    if places.contains(&Place::Target) {
        spec.pod_selector = Some(Default::default());
        spec.ingress = Some(Vec::new());
        spec.egress = Some(Vec::new());
        return report;
    }
    let set: BTreeSet<Place> = places.into_iter().collect();
    if let Some(rules) = spec.ingress.as_mut() {
        *rules = keep_rules(std::mem::take(rules), &set, true, |r| {
            (&mut r.from, &mut r.ports)
        });
    }
    if let Some(rules) = spec.egress.as_mut() {
        *rules = keep_rules(std::mem::take(rules), &set, false, |r| {
            (&mut r.to, &mut r.ports)
        });
    }
    report
}

type Parts<'a> = (
    &'a mut Option<Vec<net::NetworkPolicyPeer>>,
    &'a mut Option<Vec<net::NetworkPolicyPort>>,
);

/// The rules of one direction that still match something, their peers and ports narrowed.
fn keep_rules<R>(
    rules: Vec<R>,
    set: &BTreeSet<Place>,
    ingress: bool,
    parts: impl Fn(&mut R) -> Parts<'_>,
) -> Vec<R> {
    rules
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut r)| {
            if set.contains(&Place::Rule(ingress, i)) {
                return None;
            }
            let (peers, ports) = parts(&mut r);
            let peers_ok = keep(peers, |j| !set.contains(&Place::Peer(ingress, i, j)));
            let ports_ok = keep(ports, |j| !set.contains(&Place::Port(ingress, i, j)));
            (peers_ok && ports_ok).then_some(r)
        })
        .collect()
}

/// Keep the entries `keep` accepts; false when a list that had entries has none left (an
/// empty list would mean "everything").
fn keep<T>(list: &mut Option<Vec<T>>, keep: impl Fn(usize) -> bool) -> bool {
    let Some(items) = list.as_mut() else {
        return true;
    };
    if items.is_empty() {
        return true;
    }
    let mut j = 0;
    items.retain(|_| {
        j += 1;
        keep(j - 1)
    });
    !items.is_empty()
}

#[cfg(test)]
mod tests;
