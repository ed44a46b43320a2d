//! Whether replacing one version of an object by another can only narrow what is allowed:
//! pure and conservative (`false` whenever it cannot tell). The manifest source uses it to
//! hold a file rewritten in place while it may be half written: a change that could allow
//! more than the version in force waits until the file has been quiet for a while, one that
//! can only narrow applies at once.
//!
//! Allowed traffic is the union of every policy's rules over the pods they isolate, so a
//! policy narrows only when it keeps isolating what it isolated and every rule it has was
//! already one of its rules; isolating a direction it did not isolate narrows only with no
//! rule (another policy may isolate the same pods, and a new rule would add to theirs). A
//! pod's or namespace's labels, ports or address decide which rules reach it, either way:
//! any change of one is taken as widening, and so is a new pod or namespace (a half-written
//! one may lack the labels that isolate it).

use crate::manifest::Object;
use crate::model::{NetworkPolicy, PolicyRule};

/// Whether `new` can only narrow what `old` (the version in force, `None`: none) allowed.
pub fn only_narrows(old: Option<&Object>, new: &Object) -> bool {
    match (old, new) {
        (Some(o), n) if o == n => true,
        (Some(Object::NetworkPolicy(o)), Object::NetworkPolicy(n)) => policy_narrows(Some(o), n),
        (None, Object::NetworkPolicy(n)) => policy_narrows(None, n),
        _ => false,
    }
}

/// [`only_narrows`] for one policy.
pub fn policy_narrows(old: Option<&NetworkPolicy>, new: &NetworkPolicy) -> bool {
    let direction = |o: Option<&Option<Vec<PolicyRule>>>, n: &Option<Vec<PolicyRule>>| match (
        o.cloned().flatten(),
        n,
    ) {
        (_, None) => o.is_none_or(|o| o.is_none()),
        (None, Some(rules)) => rules.is_empty(),
        (Some(old), Some(rules)) => rules.iter().all(|r| old.contains(r)),
    };
    match old {
        None => direction(None, &new.ingress) && direction(None, &new.egress),
        Some(old) => {
            old.pod_selector == new.pod_selector
                && direction(Some(&old.ingress), &new.ingress)
                && direction(Some(&old.egress), &new.egress)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn policy(yaml: &str) -> NetworkPolicy {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{yaml}"
        );
        let parsed = manifest::parse("p.yaml", &text, "default");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        match parsed.objects.into_iter().next().expect("an object").1 {
            Object::NetworkPolicy(p) => p,
            _ => unreachable!(),
        }
    }

    const DB: &str = "  podSelector: {matchLabels: {app: db}}\n";

    #[test]
    fn the_halves_of_a_policy_written_line_by_line_are_caught() {
        let full = policy(&format!(
            "{DB}  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: web}}}}\n    ports:\n    - port: 5432\n"
        ));
        // Each prefix a writer appending line by line leaves on disk.
        let selected_only = policy(DB);
        let from_anywhere = policy(&format!("{DB}  ingress:\n  - from:\n"));
        let peers_no_ports = policy(&format!(
            "{DB}  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: web}}}}\n"
        ));
        // Selecting with no rule isolates: narrower than nothing.
        assert!(policy_narrows(None, &selected_only));
        // A rule from anywhere, or without its ports, widens, new or over the full policy.
        assert!(!policy_narrows(None, &from_anywhere));
        assert!(!policy_narrows(Some(&full), &from_anywhere));
        assert!(!policy_narrows(Some(&full), &peers_no_ports));
        // Back to a version with fewer rules narrows; the same version is no change.
        assert!(policy_narrows(Some(&full), &selected_only));
        assert!(policy_narrows(Some(&full), &full));
    }

    #[test]
    fn losing_isolation_or_selection_widens() {
        let ingress = policy(&format!("{DB}  policyTypes: [Ingress]\n"));
        let egress_only = policy(&format!("{DB}  policyTypes: [Egress]\n"));
        let other_pods = policy("  podSelector: {matchLabels: {app: web}}\n");
        assert!(!policy_narrows(Some(&ingress), &egress_only));
        assert!(!policy_narrows(Some(&ingress), &other_pods));
        let both = policy(&format!("{DB}  policyTypes: [Ingress, Egress]\n"));
        assert!(policy_narrows(Some(&ingress), &both));
        assert!(!policy_narrows(Some(&both), &ingress));
    }

    #[test]
    fn pods_and_namespaces_changed_or_new_count_as_widening() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: y}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
        let objs: Vec<Object> = manifest::parse("n.yaml", text, "default")
            .objects
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert!(only_narrows(Some(&objs[0]), &objs[0]));
        assert!(!only_narrows(Some(&objs[0]), &objs[1]));
        assert!(!only_narrows(None, &objs[0]));
    }
}
