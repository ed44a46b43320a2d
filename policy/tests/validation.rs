//! One test per rejection rule of contracts.md §2: the object is rejected with its name,
//! the offending field and a reason, and a valid object beside it in the same file still loads.

use palisade_policy::k8s::{Kind, Rejection};
use palisade_policy::manifest::{parse, Object, Problem};

const GOOD: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

/// Parse `bad` followed by a valid policy; return the single rejection.
fn rejection(bad: &str) -> Rejection {
    let text = format!("{bad}\n---\n{GOOD}");
    let parsed = parse("test.yaml", &text, "default");
    let names: Vec<String> = parsed.objects.iter().map(|(_, o)| o.name()).collect();
    assert_eq!(names, vec!["prod/good"], "the valid object still loads");
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    match &parsed.errors[0].problem {
        Problem::Rejected(r) => r.clone(),
        other => panic!("expected a rejection, got {other}"),
    }
}

/// A policy named `bad` in `prod` whose `spec` is `spec` (flow-style YAML).
fn policy(spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: prod}}\nspec: {spec}\n")
}

fn ingress_from(peer: &str) -> String {
    policy(&format!(
        "{{podSelector: {{}}, ingress: [{{from: [{peer}]}}]}}"
    ))
}

fn ingress_port(port: &str) -> String {
    policy(&format!(
        "{{podSelector: {{}}, ingress: [{{ports: [{port}]}}]}}"
    ))
}

fn assert_field(r: &Rejection, field: &str, reason: &str) {
    assert_eq!(r.kind, Kind::NetworkPolicy);
    assert_eq!(r.object, "prod/bad");
    assert!(
        r.errors
            .iter()
            .any(|e| e.field == field && e.reason.contains(reason)),
        "expected {field}: …{reason}… in {r}"
    );
    let shown = r.to_string();
    assert!(
        shown.contains("NetworkPolicy prod/bad") && shown.contains(field),
        "{shown}"
    );
}

#[test]
fn bad_cidr() {
    let r = rejection(&ingress_from("{ipBlock: {cidr: 10.0.0.300/24}}"));
    assert_field(
        &r,
        "spec.ingress[0].from[0].ipBlock.cidr",
        "not a valid IP address",
    );
}

#[test]
fn cidr_without_prefix_length() {
    let r = rejection(&ingress_from("{ipBlock: {cidr: 10.0.0.0}}"));
    assert_field(&r, "spec.ingress[0].from[0].ipBlock.cidr", "CIDR");
}

#[test]
fn missing_cidr() {
    let r = rejection(&ingress_from("{ipBlock: {cidr: ''}}"));
    assert_field(&r, "spec.ingress[0].from[0].ipBlock.cidr", "required");
}

#[test]
fn bad_except_cidr() {
    let r = rejection(&ingress_from(
        "{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/99]}}",
    ));
    assert_field(
        &r,
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "prefix length",
    );
}

#[test]
fn except_outside_cidr() {
    let r = rejection(&ingress_from(
        "{ipBlock: {cidr: 172.17.0.0/16, except: [172.18.1.0/24]}}",
    ));
    assert_field(
        &r,
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "strict subset",
    );
}

#[test]
fn except_equal_to_cidr() {
    let r = rejection(&ingress_from(
        "{ipBlock: {cidr: 172.17.0.0/16, except: [172.17.0.0/16]}}",
    ));
    assert_field(
        &r,
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "strict subset",
    );
}

#[test]
fn except_of_another_family() {
    let r = rejection(&ingress_from(
        "{ipBlock: {cidr: 'fd00::/8', except: [10.0.0.0/8]}}",
    ));
    assert_field(
        &r,
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "strict subset",
    );
}

#[test]
fn empty_peer() {
    let r = rejection(&ingress_from("{}"));
    assert_field(&r, "spec.ingress[0].from[0]", "must specify a peer");
}

#[test]
fn ip_block_with_selector() {
    let r = rejection(&ingress_from(
        "{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}",
    ));
    assert_field(
        &r,
        "spec.ingress[0].from[0]",
        "may not specify both ipBlock and another peer",
    );
}

#[test]
fn end_port_without_port() {
    let r = rejection(&ingress_port("{protocol: TCP, endPort: 90}"));
    assert_field(
        &r,
        "spec.ingress[0].ports[0].endPort",
        "when `port` is not specified",
    );
}

#[test]
fn end_port_with_named_port() {
    let r = rejection(&ingress_port("{port: http, endPort: 90}"));
    assert_field(&r, "spec.ingress[0].ports[0].endPort", "non-numeric");
}

#[test]
fn end_port_below_port() {
    let r = rejection(&ingress_port("{port: 100, endPort: 90}"));
    assert_field(
        &r,
        "spec.ingress[0].ports[0].endPort",
        "greater than or equal to `port`",
    );
}

#[test]
fn end_port_out_of_range() {
    let r = rejection(&ingress_port("{port: 100, endPort: 70000}"));
    assert_field(
        &r,
        "spec.ingress[0].ports[0].endPort",
        "between 1 and 65535",
    );
}

#[test]
fn port_zero() {
    let r = rejection(&ingress_port("{port: 0}"));
    assert_field(&r, "spec.ingress[0].ports[0].port", "between 1 and 65535");
}

#[test]
fn port_above_65535() {
    let r = rejection(&policy(
        "{podSelector: {}, egress: [{ports: [{port: 65536}]}]}",
    ));
    assert_field(&r, "spec.egress[0].ports[0].port", "between 1 and 65535");
}

#[test]
fn invalid_named_port() {
    let r = rejection(&ingress_port("{port: Not_A_Port}"));
    assert_field(&r, "spec.ingress[0].ports[0].port", "not a valid port name");
}

#[test]
fn quoted_number_is_a_port_name_and_invalid() {
    let r = rejection(&ingress_port("{port: '80'}"));
    assert_field(&r, "spec.ingress[0].ports[0].port", "at least one letter");
}

#[test]
fn unknown_protocol() {
    let r = rejection(&ingress_port("{protocol: ICMP, port: 8}"));
    assert_field(
        &r,
        "spec.ingress[0].ports[0].protocol",
        "unsupported protocol 'ICMP'",
    );
}

#[test]
fn protocol_is_case_sensitive() {
    let r = rejection(&ingress_port("{protocol: tcp, port: 80}"));
    assert_field(
        &r,
        "spec.ingress[0].ports[0].protocol",
        "unsupported protocol 'tcp'",
    );
}

#[test]
fn bad_selector_operator() {
    let r = rejection(&policy(
        "{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}",
    ));
    assert_field(
        &r,
        "spec.podSelector.matchExpressions[0].operator",
        "not a valid selector operator",
    );
}

#[test]
fn in_without_values() {
    let r = rejection(&ingress_from(
        "{namespaceSelector: {matchExpressions: [{key: team, operator: In}]}}",
    ));
    assert_field(
        &r,
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        "must be specified",
    );
}

#[test]
fn exists_with_values() {
    let r = rejection(&ingress_from(
        "{podSelector: {matchExpressions: [{key: team, operator: Exists, values: [x]}]}}",
    ));
    assert_field(
        &r,
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        "may not be specified",
    );
}

#[test]
fn bad_selector_key() {
    let r = rejection(&policy("{podSelector: {matchLabels: {'bad key': x}}}"));
    assert_field(&r, "spec.podSelector.matchLabels", "not a valid label key");
}

#[test]
fn bad_selector_value() {
    let r = rejection(&policy(
        "{podSelector: {matchExpressions: [{key: app, operator: In, values: ['-x-']}]}}",
    ));
    assert_field(
        &r,
        "spec.podSelector.matchExpressions[0].values",
        "not a valid label value",
    );
}

#[test]
fn bad_policy_type() {
    let r = rejection(&policy(
        "{podSelector: {}, policyTypes: [Ingress, Sideways]}",
    ));
    assert_field(&r, "spec.policyTypes[1]", "unsupported value 'Sideways'");
}

#[test]
fn missing_name() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: prod}\nspec: {podSelector: {}}\n";
    let r = rejection(text);
    assert!(r.errors.iter().any(|e| e.field == "metadata.name"), "{r}");
}

#[test]
fn bad_pod_ip() {
    let r = rejection("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: prod}\nstatus: {podIP: 10.0.0.256}\n");
    assert_eq!((r.kind, r.object.as_str()), (Kind::Pod, "prod/p"));
    assert_eq!(r.errors[0].field, "status.podIP");
}

#[test]
fn bad_container_port() {
    let r = rejection("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: prod}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 0}]}]}\n");
    assert_eq!(
        r.errors[0].field,
        "spec.containers[0].ports[0].containerPort"
    );
}

#[test]
fn bad_container_port_name() {
    let r = rejection("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: prod}\nspec: {containers: [{name: c, ports: [{name: HTTP, containerPort: 80}]}]}\n");
    assert_eq!(r.errors[0].field, "spec.containers[0].ports[0].name");
}

#[test]
fn bad_namespace_labels() {
    let r = rejection(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: 'has space'}}\n",
    );
    assert_eq!((r.kind, r.object.as_str()), (Kind::Namespace, "prod"));
    assert_eq!(r.errors[0].field, "metadata.labels[team]");
}

#[test]
fn every_error_of_an_object_is_reported() {
    let r = rejection(&policy(
        "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: nonsense}}], ports: [{port: 0}, {protocol: XTP}]}]}",
    ));
    assert_eq!(r.errors.len(), 3, "{r}");
}

#[test]
fn valid_edge_cases_are_accepted() {
    let text = policy(
        "{podSelector: {}, policyTypes: [Ingress, Egress], ingress: [{from: [{ipBlock: {cidr: 10.1.2.3/8, except: [10.1.0.0/16]}}], ports: [{port: 32000, endPort: 32768}, {protocol: SCTP}, {port: http}]}], egress: [{to: [{ipBlock: {cidr: 'fd00::/8', except: ['fd00:1::/32']}}]}]}",
    );
    let parsed = parse("ok.yaml", &text, "default");
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert!(matches!(parsed.objects[0].1, Object::NetworkPolicy(_)));
}

/// Parse `bad` followed by a valid policy; return the single problem, as shown to users.
fn problem(bad: &str) -> String {
    let text = format!("{bad}\n---\n{GOOD}");
    let parsed = parse("test.yaml", &text, "default");
    let names: Vec<String> = parsed.objects.iter().map(|(_, o)| o.name()).collect();
    assert_eq!(names, vec!["prod/good"], "the valid object still loads");
    assert!(
        parsed.ignored.is_empty(),
        "not ignored: {:?}",
        parsed.ignored
    );
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    parsed.errors[0].to_string()
}

#[test]
fn unknown_fields_are_rejected_as_strict_field_validation_does() {
    let r = rejection(&policy("{podSelecter: {matchLabels: {app: db}}}"));
    assert_field(&r, "spec.podSelecter", "unknown field");
    let r = rejection(&policy("{podSelector: {}, ingres: [{}]}"));
    assert_field(&r, "spec.ingres", "unknown field");
    let r = rejection(&ingress_from("{podSelector: {}, namespaceSelektor: {}}"));
    assert_field(
        &r,
        "spec.ingress[0].from[0].namespaceSelektor",
        "unknown field",
    );
}

#[test]
fn documents_that_cannot_be_identified_are_problems_not_ignored() {
    let body = "metadata: {name: bad, namespace: prod}\nspec: {podSelector: {}}";
    let shown = problem(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Networkpolicy\n{body}"
    ));
    assert!(
        shown.contains("Networkpolicy") && shown.contains("prod/bad"),
        "{shown}"
    );
    let shown = problem(&format!("apiVersion: networking.k8s.io/v1\n{body}"));
    assert!(
        shown.contains("'kind' is missing") && shown.contains("prod/bad"),
        "{shown}"
    );
    let shown = problem(&format!("kind: NetworkPolicy\n{body}"));
    assert!(shown.contains("'apiVersion' is missing"), "{shown}");
    let shown = problem(&format!(
        "apiVersion: networking.k8s.io/v2\nkind: NetworkPolicy\n{body}"
    ));
    assert!(
        shown.contains("apiVersion") && shown.contains("networking.k8s.io/v1"),
        "{shown}"
    );
    let shown = problem(&format!("apiVersion: v1\nkind: Pods\n{body}"));
    assert!(shown.contains("did you mean Pod"), "{shown}");
}

#[test]
fn a_type_error_names_the_object_in_its_namespace() {
    // No metadata.namespace: the object is in the namespace the caller chose.
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo}\nspec: {podSelector: {}, ingress: [{ports: [{port: [80]}]}]}\n";
    let parsed = parse("t.yaml", text, "team-a");
    let Problem::Malformed { object, field, .. } = &parsed.errors[0].problem else {
        panic!("{:?}", parsed.errors)
    };
    assert_eq!(object, "team-a/typo");
    assert!(field.contains("port"), "{field}");
}

#[test]
fn kinds_of_other_apis_are_ignored() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: c}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n";
    let parsed = parse("t.yaml", text, "default");
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.ignored.len(), 3);
}
