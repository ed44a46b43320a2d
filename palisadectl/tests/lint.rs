//! `palisadectl lint` as a CI job runs it: the seed examples are clean, the deliberately broken
//! example has one finding of every check, each naming its object, field and file; --strict,
//! rejected objects and findings give exit statuses that do not mask each other.

#[path = "support/fixture.rs"]
mod fixture;

use fixture::palisadectl;
use serde_json::Value;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/");

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_seed_examples_are_clean() {
    for dir in [
        "microservices",
        "dns-https-egress",
        "env-isolation",
        "ipblock-except",
        "namespace-isolation",
        "ports",
        "three-tier",
    ] {
        let path = format!("{EXAMPLES}{dir}");
        let out = palisadectl(&["lint", "-f", &path, "--strict", "-o", "json"], "");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(json(&out)["findings"], serde_json::json!([]), "{dir}");
    }
}

#[test]
fn the_broken_example_has_every_check() {
    let path = format!("{EXAMPLES}broken");
    let out = palisadectl(&["lint", "-f", &path, "-o", "json"], "");
    // Without --strict, findings alone are not a failure.
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    let found: Vec<(String, String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(
                f["source"]
                    .as_str()
                    .unwrap()
                    .contains("policies.yaml (document"),
                "{f}"
            );
            assert!(!f["suggestion"].as_str().unwrap().is_empty(), "{f}");
            (
                f["check"].as_str().unwrap().to_string(),
                f["object"].as_str().unwrap().to_string(),
                f["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        (
            "ipblock-covers-pods",
            "shop/api-clients",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "except-reallowed",
            "shop/api-clients",
            "spec.ingress[1].from[0].ipBlock.except[0]",
        ),
        ("unused-rules", "shop/api-lockdown", "spec.egress"),
        (
            "selector-matches-nothing",
            "shop/web-ingress",
            "spec.podSelector",
        ),
        (
            "selector-matches-nothing",
            "shop/web-ports",
            "spec.ingress[0].from[0].namespaceSelector",
        ),
        (
            "named-port-undefined",
            "shop/web-ports",
            "spec.ingress[0].ports[0].port",
        ),
        (
            "named-port-protocol",
            "shop/web-ports",
            "spec.ingress[0].ports[1].port",
        ),
        (
            "missing-namespace",
            "shpo/default-deny",
            "metadata.namespace",
        ),
        ("shared-pod-ip", "shop/api-old", "status.podIP"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(c, o, f)| (c.to_string(), o.to_string(), f.to_string()))
        .collect();
    assert_eq!(found, want);
    // The hints name what was probably meant.
    let text = String::from_utf8_lossy(&palisadectl(&["lint", "-f", &path], "").stdout).to_string();
    for hint in [
        "did you mean 'app=frontend'?",
        "did you mean 'team=retail'?",
        "did you mean 'http'?",
        "did you mean namespace 'shop'?",
        "only as 9090/UDP",
    ] {
        assert!(text.contains(hint), "{hint} missing from:\n{text}");
    }
    assert!(
        text.contains("9 findings in 5 NetworkPolicies and 3 Pods"),
        "{text}"
    );
}

#[test]
fn strict_rejected_and_namespace_filter() {
    let path = format!("{EXAMPLES}broken");
    let strict = palisadectl(&["lint", "-f", &path, "--strict"], "");
    assert_eq!(strict.status.code(), Some(8));
    // -n keeps the findings about that namespace's objects.
    let only = json(&palisadectl(
        &["lint", "-f", &path, "-n", "shpo", "-o", "json"],
        "",
    ));
    assert_eq!(only["findings"].as_array().unwrap().len(), 1);
    // YAML is the same document.
    let yaml = palisadectl(&["lint", "-f", &path, "-n", "shpo", "-o", "yaml"], "");
    let back: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&yaml.stdout)).unwrap();
    assert_eq!(back, only);
    // A rejected object too: 4 + 8, and the valid objects are still linted.
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Sideways]}\n";
    let both = palisadectl(&["lint", "-f", &path, "-f", "-", "--strict"], bad);
    assert_eq!(
        both.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    assert!(String::from_utf8_lossy(&both.stderr).contains("spec.policyTypes[0]"));
}

#[test]
fn evaluate_warns_with_the_same_findings() {
    let path = format!("{EXAMPLES}broken");
    let out = palisadectl(&["evaluate", "-f", &path, "--probe", "80/TCP"], "");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("warning: NetworkPolicy shop/web-ingress: spec.podSelector: selects no pod"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning: ").count(), 9, "{stderr}");
}
