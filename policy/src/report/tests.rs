use super::*;
use crate::cluster::explain_in;
use crate::eval::Flow;
use crate::manifest;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: retail}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: else}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  nodeName: n2
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: other, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
  - from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.7.0/24]}}]
"#;

fn engine() -> Engine {
    let mut commands = manifest::parse("t.yaml", CLUSTER, "default")
        .upserts()
        .expect("valid manifests");
    commands.sort_by_key(|c| !matches!(c, crate::Command::UpsertNamespace(_)));
    Engine::load(1, commands)
}

fn explain(engine: &Engine, src: [u8; 4], dst: [u8; 4], port: u16) -> FlowReport {
    let flow = Flow {
        src: src.into(),
        dst: dst.into(),
        protocol: Protocol::Tcp.number(),
        port,
    };
    let e = explain_in(engine, &flow);
    report(engine, &e, Protocol::Tcp, None, |n| {
        Some(Cow::Owned(engine.slice(n)))
    })
}

#[test]
fn allowed_names_the_rule_and_the_resolved_port() {
    let e = engine();
    let r = explain(&e, [10, 0, 0, 1], [10, 0, 0, 2], 8080);
    assert!(r.allowed);
    assert_eq!(r.ingress.result, Outcome::Allowed);
    assert_eq!(r.ingress.policies, vec!["shop/api-in"]);
    let by = &r.ingress.allowed_by;
    assert_eq!(by.len(), 1);
    assert_eq!(by[0].rule, "spec.ingress[0]");
    assert!(
        by[0].ports.contains("'http'/TCP = 8080 on shop/api"),
        "{by:?}"
    );
    assert_eq!(r.egress.result, Outcome::NotIsolated);
}

#[test]
fn denied_says_what_did_not_match_each_rule() {
    let e = engine();
    // From the other namespace: rule 0's podSelector looks in shop only; rule 1 is an ipBlock.
    let r = explain(&e, [10, 0, 0, 3], [10, 0, 0, 2], 8080);
    assert!(!r.allowed);
    assert_eq!(r.ingress.result, Outcome::Denied);
    let m = &r.ingress.not_matched;
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(!m[0].peers.matched);
    assert!(
        m[0].peers
            .why
            .contains("other/stranger is in namespace other"),
        "{m:?}"
    );
    assert!(m[0].ports.matched, "{m:?}");
    assert!(
        m[1].peers
            .why
            .contains("10.0.0.3 is outside 192.168.0.0/16"),
        "{m:?}"
    );
    // The right pod, the wrong port: the named port's number is shown.
    let r = explain(&e, [10, 0, 0, 1], [10, 0, 0, 2], 9090);
    let m = &r.ingress.not_matched;
    assert!(m[0].peers.matched);
    assert!(!m[0].ports.matched);
    assert!(
        m[0].ports
            .why
            .contains("= 8080 on shop/api: the flow is to 9090/TCP"),
        "{m:?}"
    );
    // An external address in the except.
    let r = explain(&e, [192, 168, 7, 9], [10, 0, 0, 2], 8080);
    let m = &r.ingress.not_matched;
    assert!(
        m[1].peers
            .why
            .contains("192.168.7.9 is in except[0] 192.168.7.0/24"),
        "{m:?}"
    );
    assert_eq!(r.egress.result, Outcome::NotChecked);
    assert!(r.egress.reason.as_deref().unwrap().contains("not a pod"));
    // The schema round-trips (the controller sends it, palisadectl reads it).
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<FlowReport>(&json).unwrap(), r);
}

#[test]
fn every_denied_rule_has_a_part_that_does_not_match() {
    let e = engine();
    let ips: [[u8; 4]; 4] = [
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        [10, 0, 0, 3],
        [192, 168, 7, 9],
    ];
    for src in ips {
        for dst in ips {
            for port in [80, 8080, 9090] {
                let r = explain(&e, src, dst, port);
                for c in [&r.egress, &r.ingress] {
                    for m in &c.not_matched {
                        assert!(!(m.peers.matched && m.ports.matched), "{r:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn egress_named_ports_resolve_on_the_destination() {
    let text = format!(
        "{CLUSTER}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web-out, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{team: retail}}}}, podSelector: {{matchLabels: {{app: api}}}}}}]\n    ports: [{{port: http}}]\n"
    );
    let mut commands = manifest::parse("t.yaml", &text, "default")
        .upserts()
        .expect("valid manifests");
    commands.sort_by_key(|c| !matches!(c, crate::Command::UpsertNamespace(_)));
    let e = Engine::load(1, commands);
    // web -> api:8080 is allowed by egress (http is 8080 on api, the destination).
    let r = explain(&e, [10, 0, 0, 1], [10, 0, 0, 2], 8080);
    assert_eq!(r.egress.result, Outcome::Allowed, "{r:?}");
    assert!(
        r.egress.allowed_by[0].ports.contains("= 8080 on shop/api"),
        "{r:?}"
    );
    // web -> stranger (other namespace, team=else): the namespaceSelector does not match.
    let r = explain(&e, [10, 0, 0, 1], [10, 0, 0, 3], 8080);
    assert_eq!(r.egress.result, Outcome::Denied);
    let m = &r.egress.not_matched[0];
    assert!(
        m.peers
            .why
            .contains("namespace other has team=else, not team=retail"),
        "{m:?}"
    );
    // The named port does not resolve on stranger, which names no ports.
    assert!(
        m.ports
            .why
            .contains("other/stranger defines no TCP port named 'http'"),
        "{m:?}"
    );
}
