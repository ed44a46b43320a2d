use k8s_openapi::api::core::v1 as core;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::k8s::network_policy;
use crate::model::{NetworkPolicy, PolicyRule, Selector};

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "p", "namespace": "shop"}, "spec": spec})
}

/// The policy as Palisade enforces it, and the report.
fn understood(raw: &Value) -> (NetworkPolicy, Vec<FieldError>) {
    let (mut obj, unknown) = read::<net::NetworkPolicy, _>(raw).unwrap();
    let report = narrow_network_policy(&mut obj, &unknown);
    (network_policy(&obj, "default").unwrap(), report)
}

fn paths(raw: &Value) -> Vec<String> {
    read::<net::NetworkPolicy, _>(raw)
        .unwrap()
        .1
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn known_fields_nulls_maps_and_lists_without_kind_are_not_unknown() {
    let raw = json!({"metadata": {"name": "p", "namespace": "shop", "labels": {"any/key": "v"},
                     "creationTimestamp": null, "annotations": {"x": "y"}},
                     "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                              "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": []}}],
                                           "ports": [{"port": "http"}, {"port": 80, "endPort": 90}]}],
                              "policyTypes": ["Ingress"]}});
    assert!(paths(&raw).is_empty(), "{:?}", paths(&raw));
}

#[test]
fn paths_name_each_unknown_field_once_at_its_top() {
    let raw = policy(json!({"podSelector": {}, "future": {"deep": 1},
                            "ingress": [{"from": [{"podSelector": {}, "x": 1}], "y": [1]}]}));
    assert_eq!(
        paths(&raw),
        [
            "spec.future",
            "spec.ingress[0].from[0].x",
            "spec.ingress[0].y"
        ]
    );
}

#[test]
fn a_peer_of_a_kind_palisade_does_not_know_matches_nothing() {
    // A newer peer kind: once "must specify a peer" (the whole policy rejected, its last
    // valid version kept); now that peer alone matches nothing.
    let raw = policy(json!({"podSelector": {}, "ingress": [
        {"from": [{"serviceAccountSelector": {"matchLabels": {"sa": "x"}}},
                  {"podSelector": {"matchLabels": {"app": "api"}}}]},
        {"from": [{"serviceAccountSelector": {}}]}]}));
    let (p, report) = understood(&raw);
    let rules = p.ingress.unwrap();
    assert_eq!(rules.len(), 1, "the rule left with no peer matches nothing");
    assert_eq!(rules[0].peers.as_ref().unwrap().len(), 1);
    assert_eq!(report.len(), 2);
    assert_eq!(
        report[0].field,
        "spec.ingress[0].from[0].serviceAccountSelector"
    );
    assert!(
        report[0].reason.contains("peer matches nothing"),
        "{report:?}"
    );
}

#[test]
fn a_policy_whose_egress_rules_all_go_still_isolates_egress() {
    let raw = policy(
        json!({"podSelector": {}, "egress": [{"to": [{"podSelector": {}}], "action": "Log"}]}),
    );
    let (p, _) = understood(&raw);
    assert_eq!(p.egress, Some(vec![]), "egress isolated, nothing allowed");
    assert_eq!(p.ingress, Some(vec![]), "ingress as defaulted");
}

#[test]
fn a_port_palisade_does_not_understand_matches_nothing() {
    let raw = policy(json!({"podSelector": {}, "ingress": [
        {"ports": [{"port": 80, "portSet": "web"}, {"port": 443}]},
        {"ports": [{"port": 8080, "portSet": "alt"}]}]}));
    let (p, _) = understood(&raw);
    let rules = p.ingress.unwrap();
    assert_eq!(
        rules.len(),
        1,
        "a rule left with no port would allow every port: gone"
    );
    assert_eq!(rules[0].ports.as_ref().unwrap().len(), 1);
}

#[test]
fn an_unknown_target_selector_selects_the_whole_namespace_and_allows_nothing() {
    let raw = policy(
        json!({"podSelector": {"matchLabels": {"app": "web"}, "matchAny": true},
                            "ingress": [{}], "egress": [{}], "policyTypes": ["Ingress", "Egress"]}),
    );
    let (p, report) = understood(&raw);
    assert_eq!(p.pod_selector, Selector::everything());
    assert_eq!((p.ingress, p.egress), (Some(vec![]), Some(vec![])));
    assert!(report[0].reason.contains("every pod of its namespace"));
}

#[test]
fn in_the_spec_outside_the_rules_the_namespace_is_isolated_and_in_metadata_ignored() {
    // A field that could narrow which pods the rules reach: the rules would otherwise open
    // pods other policies isolate.
    let raw = policy(json!({"podSelector": {}, "ingress": [{}], "appliesTo": {"role": "x"}}));
    let (p, report) = understood(&raw);
    assert_eq!(p.pod_selector, Selector::everything());
    assert_eq!(p.ingress, Some(vec![]));
    assert!(report[0].reason.contains("every pod of its namespace"));
    let mut raw = policy(json!({"podSelector": {}, "ingress": [{}]}));
    raw["metadata"]["futureMeta"] = json!(1);
    let (p, report) = understood(&raw);
    assert_eq!(
        p.ingress,
        Some(vec![PolicyRule {
            peers: None,
            ports: None
        }])
    );
    assert!(report[0].reason.contains("ignored"));
}

#[test]
fn a_pods_unknown_fields_are_ignored_and_reported() {
    let raw = json!({"metadata": {"name": "a", "namespace": "shop", "labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "future": 1}]}],
                              "nodeName": "n1"},
                     "status": {"podIP": "10.1.0.1", "newStatus": {"a": 1}}});
    let (pod, unknown) = read::<core::Pod, _>(&raw).unwrap();
    let pod = crate::k8s::pod(&pod, "default").unwrap();
    assert_eq!(pod.ip, Some("10.1.0.1".parse().unwrap()));
    let report = ignored(Kind::Pod, &unknown);
    let fields: Vec<&str> = report.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.containers[0].ports[0].future", "status.newStatus"]
    );
}

// Random policies, one unknown field put anywhere in them: it is found where it was put, and
// what is enforced is never more open than the policy read without it.

fn selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(vec!["web", "api", "db"])
            .prop_map(|a| json!({"matchLabels": {"app": a}})),
    ]
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({"podSelector": s})),
        (selector(), selector())
            .prop_map(|(n, p)| json!({"namespaceSelector": n, "podSelector": p})),
        prop::sample::select(vec!["10.0.0.0/8", "0.0.0.0/0", "192.168.1.0/24"])
            .prop_map(|c| json!({"ipBlock": {"cidr": c}})),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(vec![80, 443, 53]).prop_map(|p| json!({"port": p})),
        Just(json!({"protocol": "UDP", "port": "dns"})),
    ]
}

fn rule(peers: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port(), 0..3)),
    )
        .prop_map(move |(p, ports)| {
            let mut r = serde_json::Map::new();
            if let Some(p) = p {
                r.insert(peers.into(), Value::Array(p));
            }
            if let Some(ports) = ports {
                r.insert("ports".into(), Value::Array(ports));
            }
            Value::Object(r)
        })
}

fn random_policy() -> impl Strategy<Value = Value> {
    (
        selector(),
        prop::option::of(prop::collection::vec(rule("from"), 0..3)),
        prop::option::of(prop::collection::vec(rule("to"), 0..3)),
        prop::sample::select(vec![
            vec![],
            vec!["Ingress"],
            vec!["Egress"],
            vec!["Ingress", "Egress"],
        ]),
    )
        .prop_map(|(sel, ingress, egress, types)| {
            let mut spec = json!({"podSelector": sel});
            if let Some(i) = ingress {
                spec["ingress"] = Value::Array(i);
            }
            if let Some(e) = egress {
                spec["egress"] = Value::Array(e);
            }
            if !types.is_empty() {
                spec["policyTypes"] = json!(types);
            }
            policy(spec)
        })
}

/// The paths of every JSON object in `v` where a field can be put (not maps of labels: a
/// key there is a label).
fn objects(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Object(m) => {
            if path.last() != Some(&Step::Field("matchLabels".into())) {
                out.push(path.clone());
            }
            for (k, x) in m {
                path.push(Step::Field(k.clone()));
                objects(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(Step::Index(i));
                objects(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Step::Field(f) => &mut v[f.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// `narrow` allows no more than `wide`: every rule of it is within a rule of `wide`.
fn within(narrow: &PolicyRule, wide: &PolicyRule) -> bool {
    fn sub<T: PartialEq>(n: &Option<Vec<T>>, w: &Option<Vec<T>>) -> bool {
        match (n, w) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(n), Some(w)) => !n.is_empty() && n.iter().all(|x| w.contains(x)),
        }
    }
    sub(&narrow.peers, &wide.peers) && sub(&narrow.ports, &wide.ports)
}

fn all_within(narrow: &Option<Vec<PolicyRule>>, wide: &Option<Vec<PolicyRule>>) -> bool {
    match (narrow, wide) {
        // Isolated where the policy without the field isolates, or more.
        (None, Some(_)) => false,
        (_, None) => true,
        (Some(n), Some(w)) => n.iter().all(|r| w.iter().any(|x| within(r, x))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_unknown_field_anywhere_never_widens_what_is_enforced(
        raw in random_policy(),
        where_ in any::<prop::sample::Index>(),
        value in prop_oneof![Just(json!("x")), Just(json!({"a": 1})), Just(json!([1]))],
    ) {
        let Ok(plain) = network_policy(&serde_json::from_value(raw.clone()).unwrap(), "default") else {
            return Ok(());
        };
        let mut spots = Vec::new();
        objects(&raw, &mut Vec::new(), &mut spots);
        let spot = where_.get(&spots).clone();
        let mut with = raw.clone();
        at(&mut with, &spot)["futureField"] = value;
        let mut expected = spot.clone();
        expected.push(Step::Field("futureField".into()));

        let (mut obj, unknown) = read::<net::NetworkPolicy, _>(&with).unwrap();
        prop_assert_eq!(&unknown, &vec![FieldPath(expected)]);
        let report = narrow_network_policy(&mut obj, &unknown);
        prop_assert_eq!(report.len(), 1);
        let enforced = network_policy(&obj, "default").unwrap();
        if place(&unknown[0]) == Place::Target {
            prop_assert_eq!(&enforced.pod_selector, &Selector::everything());
        } else {
            prop_assert_eq!(&enforced.pod_selector, &plain.pod_selector);
        }
        prop_assert!(all_within(&enforced.ingress, &plain.ingress), "{:?} vs {:?}", enforced.ingress, plain.ingress);
        prop_assert!(all_within(&enforced.egress, &plain.egress), "{:?} vs {:?}", enforced.egress, plain.egress);
        if place(&unknown[0]) == Place::Elsewhere {
            prop_assert_eq!(enforced, plain);
        }
    }
}
