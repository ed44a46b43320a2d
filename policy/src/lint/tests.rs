use super::*;
use crate::manifest;

/// The findings over `yaml` (every document), the unused-rules ones included.
fn findings(yaml: &str) -> Vec<Finding> {
    findings_with(yaml, &Options::default())
}

fn findings_with(yaml: &str, options: &Options) -> Vec<Finding> {
    let mut commands = manifest::parse("test.yaml", yaml, "default")
        .upserts()
        .expect("valid manifests");
    commands.sort_by_key(|c| !matches!(c, crate::Command::UpsertNamespace(_)));
    let engine = Engine::load(1, commands);
    lint(&engine, options)
}

fn checks(found: &[Finding]) -> Vec<(Check, &str, &str)> {
    found
        .iter()
        .map(|f| (f.check, f.object.as_str(), f.field.as_str()))
        .collect()
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: retail}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: frontend}}
spec:
  nodeName: n1
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]
status: {podIP: 10.0.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: backend}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {podIP: 10.0.2.7}
"#;

fn with(policy: &str) -> String {
    format!("{CLUSTER}---\n{policy}")
}

#[test]
fn a_good_policy_has_no_findings() {
    let found = findings(&with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 5432}]
"#,
    ));
    assert_eq!(found, vec![]);
}

#[test]
fn selectors_that_match_nothing_name_the_nearest_label() {
    let found = findings(&with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typo, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backnd}}
  ingress:
  - from:
    - podSelector: {matchLabels: {ap: frontend}}
    - namespaceSelector: {matchLabels: {team: retial}}
    - namespaceSelector: {matchLabels: {team: retail}}
      podSelector: {matchLabels: {app: nothing-like-it}}
"#,
    ));
    assert_eq!(
        checks(&found),
        vec![
            (
                Check::SelectorMatchesNothing,
                "shop/typo",
                "spec.ingress[0].from[0].podSelector"
            ),
            (
                Check::SelectorMatchesNothing,
                "shop/typo",
                "spec.ingress[0].from[1].namespaceSelector"
            ),
            (
                Check::SelectorMatchesNothing,
                "shop/typo",
                "spec.ingress[0].from[2].podSelector"
            ),
            (
                Check::SelectorMatchesNothing,
                "shop/typo",
                "spec.podSelector"
            ),
        ]
    );
    assert!(
        found[0].suggestion.contains("did you mean 'app=frontend'"),
        "{}",
        found[0]
    );
    assert!(
        found[1].suggestion.contains("did you mean 'team=retail'"),
        "{}",
        found[1]
    );
    assert!(
        found[2]
            .suggestion
            .contains("values of 'app' here: backend, frontend"),
        "{}",
        found[2]
    );
    assert!(
        found[3].suggestion.contains("did you mean 'app=backend'"),
        "{}",
        found[3]
    );
}

#[test]
fn a_policy_in_a_missing_namespace_is_one_finding() {
    let found = findings(&with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lost, namespace: shp}
spec:
  podSelector: {matchLabels: {app: nothing}}
  ingress: [{ports: [{port: http}]}]
"#,
    ));
    assert_eq!(
        checks(&found),
        vec![(Check::MissingNamespace, "shp/lost", "metadata.namespace")]
    );
    assert!(found[0].suggestion.contains("'shop'"), "{}", found[0]);
}

#[test]
fn named_ports_resolve_against_the_receiving_pods() {
    let found = findings(&with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ports, namespace: shop}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Ingress, Egress]
  ingress:
  - ports: [{port: http}, {port: htp}, {port: dns}]
  egress:
  - to: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: dns, protocol: UDP}, {port: metrics}]
"#,
    ));
    assert_eq!(
        checks(&found),
        vec![
            (
                Check::NamedPortUndefined,
                "shop/ports",
                "spec.egress[0].ports[1].port"
            ),
            (
                Check::NamedPortUndefined,
                "shop/ports",
                "spec.ingress[0].ports[1].port"
            ),
            (
                Check::NamedPortProtocol,
                "shop/ports",
                "spec.ingress[0].ports[2].port"
            ),
        ]
    );
    assert!(
        found[1].suggestion.contains("did you mean 'http'"),
        "{}",
        found[1]
    );
    assert!(found[2].message.contains("53/UDP"), "{}", found[2]);
}

#[test]
fn rules_left_unused_by_policy_types() {
    let found = findings(&with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: types, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {}}]}]
  egress: [{to: [{podSelector: {}}]}]
"#,
    ));
    assert_eq!(
        checks(&found),
        vec![(Check::UnusedRules, "shop/types", "spec.ingress")]
    );
    assert!(
        found[0].message.contains("does not list Ingress"),
        "{}",
        found[0]
    );
}

#[test]
fn ip_blocks_over_pods_and_reallowed_excepts() {
    let found = findings(&with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.1.5/32}}]
  - from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.5.0/24]}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 192.168.4.0/22}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
"#,
    ));
    assert_eq!(
        checks(&found),
        vec![
            (
                Check::IpBlockCoversPods,
                "shop/blocks",
                "spec.ingress[0].from[0].ipBlock.cidr"
            ),
            (
                Check::ExceptReallowed,
                "shop/blocks",
                "spec.ingress[1].from[0].ipBlock.except[0]"
            ),
            (
                Check::ExceptReallowed,
                "shop/blocks",
                "spec.ingress[3].from[0].ipBlock.except[0]"
            ),
        ]
    );
    assert!(
        found[0].message.contains("shop/web at 10.0.1.5"),
        "{}",
        found[0]
    );
    assert!(found[0].message.contains("inferred"), "{}", found[0]);
    assert!(
        found[1].message.contains("spec.ingress[2].from[0]"),
        "{}",
        found[1]
    );
    assert!(
        found[2].message.contains("at spec.ingress[0].from[0]"),
        "{}",
        found[2]
    );
    // 10.0.0.0/8 is wider than the inferred pod network: "everything in 10/8" was meant.
    // With the real pod network given, it is inside it.
    let options = Options {
        pod_cidrs: vec![Prefix::new([10, 0, 0, 0].into(), 8)],
    };
    let again = findings_with(&with("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: wide, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n"), &options);
    assert_eq!(
        checks(&again),
        vec![(
            Check::IpBlockCoversPods,
            "shop/wide",
            "spec.ingress[0].from[0].ipBlock.cidr"
        )]
    );
    assert!(again[0].message.contains("covers 2 pods"), "{}", again[0]);
}

#[test]
fn an_except_reopened_by_another_policy_of_the_same_pods() {
    let found = findings(&with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: internet, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: reopen, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 443}]}]
"#,
    ));
    assert_eq!(
        checks(&found),
        vec![(
            Check::ExceptReallowed,
            "shop/internet",
            "spec.egress[0].to[0].ipBlock.except[0]"
        )]
    );
    assert!(
        found[0].message.contains("NetworkPolicy shop/reopen"),
        "{}",
        found[0]
    );
}

#[test]
fn pods_sharing_an_address() {
    let found = findings(&format!(
        "{CLUSTER}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: ghost, namespace: shop}}\nspec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.0.2.7}}\n"
    ));
    assert_eq!(
        checks(&found),
        vec![(Check::SharedPodIp, "shop/ghost", "status.podIP")]
    );
    assert!(found[0].message.contains("Pod shop/db"), "{}", found[0]);
}

#[test]
fn check_names_round_trip() {
    for c in Check::ALL {
        assert_eq!(c.as_str().parse::<Check>(), Ok(c));
        assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
    }
}

#[test]
fn policies_alone_are_not_all_in_missing_namespaces() {
    // A repository of policies without the cluster's objects: only each policy's own checks.
    let found = findings(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: x}}\n  policyTypes: [Ingress]\n  egress: [{to: [{podSelector: {}}]}]\n",
    );
    assert_eq!(
        checks(&found),
        vec![(Check::UnusedRules, "shop/a", "spec.egress")]
    );
}
