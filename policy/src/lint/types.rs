//! Rules that `policyTypes` leaves unused. The model keeps only the directions a policy
//! isolates, so this reads the Kubernetes object itself, where it is parsed.

use k8s_openapi::api::networking::v1 as net;

use super::{Check, Finding};
use crate::model::ObjKey;

/// Ingress (egress) rules of a policy whose explicit `policyTypes` lacks Ingress (Egress):
/// the API server keeps them, and nothing enforces them.
pub fn unused_rules(obj: &net::NetworkPolicy, key: &ObjKey) -> Vec<Finding> {
    let Some(spec) = &obj.spec else {
        return Vec::new();
    };
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.is_empty() {
        return Vec::new();
    }
    let listed = |t: &str| types.iter().any(|x| x == t);
    let rules = [
        (
            "Ingress",
            "ingress",
            spec.ingress.as_ref().map_or(0, Vec::len),
        ),
        ("Egress", "egress", spec.egress.as_ref().map_or(0, Vec::len)),
    ];
    rules
        .into_iter()
        .filter(|(ty, _, n)| *n > 0 && !listed(ty))
        .map(|(ty, field, n)| Finding {
            kind: "NetworkPolicy".into(),
            object: key.to_string(),
            field: format!("spec.{field}"),
            check: Check::UnusedRules,
            message: format!(
                "{} unused: spec.policyTypes is [{}], without {ty}",
                super::count(n, &format!("{field} rule")),
                types.join(", ")
            ),
            suggestion: format!(
                "add {ty} to spec.policyTypes to enforce them (isolating the selected pods for {field}), or delete them"
            ),
        })
        .collect()
}
