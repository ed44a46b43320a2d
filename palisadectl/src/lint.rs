//! `palisadectl lint`: the core's [`palisade_policy::lint`] findings over manifests, each
//! with where it was read, as a list a person reads or as JSON/YAML a CI job reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use palisade_policy::lint::{self, Check, Finding, Options};
use serde::Serialize;

use crate::load::Loaded;

/// A finding and the file and document of its object.
#[derive(Clone, Debug, Serialize)]
pub struct Located {
    #[serde(flatten)]
    pub finding: Finding,
    /// `path (document N)`, when the object was read from a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Every finding over what was loaded.
pub fn findings(loaded: &Loaded, options: &Options) -> Vec<Located> {
    let engine = loaded.engine();
    lint::lint(&engine, options)
        .into_iter()
        .map(|finding| {
            let key = (finding.kind.clone(), finding.object.clone());
            let source = loaded.objects.get(&key).map(|(loc, _)| loc.to_string());
            Located { finding, source }
        })
        .collect()
}

#[derive(Serialize)]
struct Report<'a> {
    findings: &'a [Located],
    /// Findings per check.
    summary: BTreeMap<Check, usize>,
    policies: usize,
    pods: usize,
}

pub fn json(found: &[Located], loaded: &Loaded) -> String {
    let report = Report {
        findings: found,
        summary: per_check(found),
        policies: count(loaded, "NetworkPolicy"),
        pods: count(loaded, "Pod"),
    };
    serde_json::to_string_pretty(&report).expect("serialisable") + "\n"
}

/// One block a finding: the object and field, what is wrong, the hint, where it was read
/// (with `wide`, and always when there is a source), then a summary line.
pub fn text(found: &[Located], loaded: &Loaded) -> String {
    let mut out = String::new();
    for l in found {
        let f = &l.finding;
        let _ = writeln!(out, "{} {}: {} [{}]", f.kind, f.object, f.field, f.check);
        let _ = writeln!(out, "  {}", f.message);
        if !f.suggestion.is_empty() {
            let _ = writeln!(out, "  hint: {}", f.suggestion);
        }
        if let Some(source) = &l.source {
            let _ = writeln!(out, "  in: {source}");
        }
    }
    let (policies, pods) = (count(loaded, "NetworkPolicy"), count(loaded, "Pod"));
    if pods == 0 && count(loaded, "Namespace") == 0 && policies > 0 {
        let _ = writeln!(
            out,
            "Note: no Namespaces or Pods in the input, so only the checks of each policy alone ran; add the cluster's objects (e.g. kubectl get namespaces,pods -A -o yaml) to check selectors, namespaces, named ports and addresses."
        );
    }
    if found.is_empty() {
        let _ = writeln!(
            out,
            "No findings in {policies} NetworkPolicies and {pods} Pods."
        );
    } else {
        let summary: Vec<String> = per_check(found)
            .into_iter()
            .map(|(c, n)| format!("{n} {c}"))
            .collect();
        let _ = writeln!(
            out,
            "{} finding{} in {policies} NetworkPolicies and {pods} Pods: {}.",
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            summary.join(", ")
        );
    }
    out
}

/// One line a finding, for stderr (`evaluate` prints these as warnings).
pub fn warnings(found: &[Located]) -> Vec<String> {
    found.iter().map(|l| l.finding.to_string()).collect()
}

fn per_check(found: &[Located]) -> BTreeMap<Check, usize> {
    let mut out = BTreeMap::new();
    for l in found {
        *out.entry(l.finding.check).or_insert(0) += 1;
    }
    out
}

fn count(loaded: &Loaded, kind: &str) -> usize {
    loaded.objects.keys().filter(|(k, _)| k == kind).count()
}
