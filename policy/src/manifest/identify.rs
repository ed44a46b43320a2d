//! What a document is, from its `apiVersion` and `kind`: one of the kinds Palisade reads, a
//! list, a kind it does not use (a Deployment, a CRD), or a document it cannot identify (no
//! `kind`, a misspelled kind, a kind its API version does not serve, a known kind under an
//! API version that does not exist). The last are problems, never "ignored": a manifest
//! directory may not silently lose an object to a typo.

use crate::k8s::Kind;

/// The kinds the core API group (`v1`) serves.
const CORE_V1: [&str; 17] = [
    "Binding",
    "ComponentStatus",
    "ConfigMap",
    "Endpoints",
    "Event",
    "LimitRange",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Pod",
    "PodTemplate",
    "ReplicationController",
    "ResourceQuota",
    "Secret",
    "Service",
    "ServiceAccount",
];

/// The kinds `networking.k8s.io/v1` serves.
const NETWORKING_V1: [&str; 5] = [
    "Ingress",
    "IngressClass",
    "IPAddress",
    "NetworkPolicy",
    "ServiceCIDR",
];

const NETWORKING: &str = "networking.k8s.io";

pub(super) enum Identity {
    Ours(Kind),
    /// A kind Palisade does not use; fine to skip.
    Other,
    /// Cannot be taken as anything: why, as a message.
    Unknown(String),
    /// One of Palisade's kinds under an API version that does not serve it.
    WrongVersion(Kind, String),
}

fn expected_version(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace | Kind::Pod => "v1",
        Kind::NetworkPolicy => "networking.k8s.io/v1",
    }
}

fn ours(kind: &str) -> Option<Kind> {
    match kind {
        "Namespace" => Some(Kind::Namespace),
        "Pod" => Some(Kind::Pod),
        "NetworkPolicy" => Some(Kind::NetworkPolicy),
        _ => None,
    }
}

/// Edit distance between two strings, by characters: insertions, deletions, substitutions and
/// transpositions of two neighbours (optimal string alignment), so `retial` is one edit from
/// `retail`.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for transpositions), one back, current.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest of `candidates` to `word` (case-insensitive), if it is close enough to be a
/// plausible misspelling.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (distance(&w, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 4).clamp(1, 2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A group Kubernetes itself serves (or a misspelling of one): the core group, `*.k8s.io`, or
/// no dot at all (`apps`, `batch`). Other groups belong to custom resources.
fn builtin_group(group: &str) -> bool {
    group.is_empty()
        || !group.contains('.')
        || group.ends_with(".k8s.io")
        || distance(group, NETWORKING) <= 3
}

pub(super) fn identify(api_version: &str, kind: &str) -> Identity {
    if kind.is_empty() {
        return Identity::Unknown("'kind' is missing".into());
    }
    if api_version.is_empty() {
        return Identity::Unknown(format!("{kind}: 'apiVersion' is missing"));
    }
    let (group, _version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if let Some(k) = ours(kind) {
        if api_version == expected_version(k) {
            return Identity::Ours(k);
        }
        if !builtin_group(group) {
            // Another project's kind of the same name (Calico's projectcalico.org/v3
            // NetworkPolicy): not Kubernetes', not ours.
            return Identity::Other;
        }
        return Identity::WrongVersion(
            k,
            format!(
                "'{api_version}' does not serve {kind}; use {}",
                expected_version(k)
            ),
        );
    }
    let ours_names = ["Namespace", "Pod", "NetworkPolicy"];
    let served: Option<&[&str]> = match api_version {
        "v1" => Some(&CORE_V1),
        "networking.k8s.io/v1" => Some(&NETWORKING_V1),
        _ => None,
    };
    if let Some(served) = served {
        if !served.contains(&kind) {
            let hint = nearest(kind, served.iter().copied())
                .map(|k| format!("; did you mean {k}?"))
                .unwrap_or_default();
            return Identity::Unknown(format!("{api_version} serves no kind '{kind}'{hint}"));
        }
        return Identity::Other;
    }
    // Elsewhere, only what is plainly a misspelling of one of ours is a problem.
    let misspelled = if builtin_group(group) {
        nearest(kind, ours_names)
    } else {
        ours_names
            .into_iter()
            .find(|o| o.eq_ignore_ascii_case(kind))
    };
    match misspelled {
        Some(k) => Identity::Unknown(format!(
            "unknown kind '{kind}' ({api_version}); did you mean {k} ({})?",
            expected_version(ours(k).expect("one of ours"))
        )),
        None => Identity::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(api: &str, kind: &str) -> &'static str {
        match identify(api, kind) {
            Identity::Ours(_) => "ours",
            Identity::Other => "other",
            Identity::Unknown(_) => "unknown",
            Identity::WrongVersion(..) => "wrong-version",
        }
    }

    #[test]
    fn kinds_versions_and_misspellings() {
        assert_eq!(verdict("networking.k8s.io/v1", "NetworkPolicy"), "ours");
        assert_eq!(verdict("v1", "Pod"), "ours");
        assert_eq!(verdict("networking.k8s.io/v1", "Networkpolicy"), "unknown");
        assert_eq!(
            verdict("networking.k8s.io/v1", "NetworkPolicies"),
            "unknown"
        );
        assert_eq!(
            verdict("networking.k8s.io/v1beta1", "NetworkPolicy"),
            "wrong-version"
        );
        assert_eq!(
            verdict("networking.k8s.oi/v1", "NetworkPolicy"),
            "wrong-version"
        );
        assert_eq!(verdict("v2", "Pod"), "wrong-version");
        assert_eq!(verdict("v1", "Pods"), "unknown");
        assert_eq!(verdict("v1", "Node"), "other");
        assert_eq!(verdict("v1", "Service"), "other");
        assert_eq!(verdict("apps/v1", "Deployment"), "other");
        assert_eq!(verdict("apps/v1", "Networkpolicy"), "unknown");
        assert_eq!(verdict("projectcalico.org/v3", "NetworkPolicy"), "other");
        assert_eq!(verdict("cilium.io/v2", "CiliumNetworkPolicy"), "other");
        assert_eq!(verdict("example.com/v1", "networkpolicy"), "unknown");
        assert_eq!(verdict("", "Pod"), "unknown");
        assert_eq!(verdict("v1", ""), "unknown");
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("pod", "pod"), 0);
        assert_eq!(distance("retial", "retail"), 1);
        assert_eq!(distance("shpo", "shop"), 1);
        assert_eq!(nearest("ingres", ["ingress", "egress"]), Some("ingress"));
        assert_eq!(nearest("zzz", ["ingress", "egress"]), None);
    }
}
