//! Every rule of contracts.md §1 (NetworkPolicy v1 semantics), checked through the real
//! `palisadectl evaluate` binary on small clusters: namespaces x (team=red), y (team=blue) and
//! z (no labels), with pods a, b, c in x and a, b in y and a in z over two nodes.

#[path = "support/fixture.rs"]
mod fixture;

use fixture::{palisadectl, Fixture, PodOpts};

fn cluster() -> Fixture {
    Fixture::new()
        .ns("x", &[("team", "red")])
        .ns("y", &[("team", "blue")])
        .ns("z", &[])
        .pod("x", "a", &[("app", "a")], "n1", "10.1.1.1")
        .pod("x", "b", &[("app", "b")], "n1", "10.1.1.2")
        .pod("x", "c", &[("app", "c")], "n2", "10.1.2.1")
        .pod("y", "a", &[("app", "a")], "n2", "10.1.2.2")
        .pod("y", "b", &[("app", "b")], "n1", "10.1.1.3")
        .pod("z", "a", &[("app", "a")], "n2", "10.1.2.3")
}

const ALL: [&str; 6] = ["x/a", "x/b", "x/c", "y/a", "y/b", "z/a"];

/// Every pair with `to` as destination, except from itself.
fn into(to: &'static str) -> Vec<(&'static str, &'static str)> {
    ALL.iter().filter(|s| **s != to).map(|s| (*s, to)).collect()
}

fn from(src: &'static str) -> Vec<(&'static str, &'static str)> {
    ALL.iter()
        .filter(|d| **d != src)
        .map(|d| (src, *d))
        .collect()
}

#[test]
fn without_policies_everything_is_allowed() {
    let m = cluster().matrices(&["80/TCP", "53/UDP", "9/SCTP"]);
    for i in 0..3 {
        m.assert_all_but(i, &[]);
    }
}

#[test]
fn policy_types_default_to_ingress_when_there_are_no_egress_rules() {
    let m = cluster()
        .policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: a}}\n  ingress: []",
        )
        .matrices(&["80/TCP"]);
    // x/a is isolated for ingress only: it can still send anywhere.
    m.assert_all_but(0, &into("x/a"));
}

#[test]
fn policy_types_default_to_egress_too_when_there_are_egress_rules() {
    let f = cluster().policy(
        "x",
        "p",
        "  podSelector: {matchLabels: {app: a}}\n  egress:\n  - to: [{podSelector: {matchLabels: {app: b}}}]",
    );
    let m = f.matrices(&["80/TCP"]);
    let mut denied = into("x/a"); // isolated for ingress with no rules
    denied.extend(from("x/a").into_iter().filter(|(_, d)| *d != "x/b")); // egress only to x/b
    m.assert_all_but(0, &denied);
}

#[test]
fn an_empty_egress_list_without_policy_types_does_not_isolate_egress() {
    let m = cluster()
        .policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: a}}\n  egress: []",
        )
        .matrices(&["80/TCP"]);
    m.assert_all_but(0, &into("x/a"));
}

#[test]
fn policy_types_egress_only_ignores_ingress_rules() {
    let m = cluster()
        .policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]",
        )
        .matrices(&["80/TCP"]);
    // Egress isolated with no egress rules; ingress untouched.
    m.assert_all_but(0, &from("x/a"));
}

#[test]
fn isolation_applies_only_to_selected_pods_and_per_direction() {
    let m = cluster()
        .policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]",
        )
        .matrices(&["80/TCP"]);
    // Only x/b, only ingress; y/b (same labels, other namespace) is not selected.
    m.assert_all_but(0, &into("x/b"));
}

#[test]
fn policies_are_a_union() {
    let m = cluster()
        .policy("x", "from-b", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]")
        .policy("x", "from-c", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: c}}}]")
        .matrices(&["80/TCP"]);
    let denied: Vec<_> = into("x/a")
        .into_iter()
        .filter(|(s, _)| *s != "x/b" && *s != "x/c")
        .collect();
    m.assert_all_but(0, &denied);
}

#[test]
fn an_empty_pod_selector_selects_every_pod_of_the_policy_namespace_only() {
    let m = cluster()
        .policy("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]")
        .matrices(&["80/TCP"]);
    let mut denied = into("x/a");
    denied.extend(into("x/b"));
    denied.extend(into("x/c"));
    m.assert_all_but(0, &denied);
}

#[test]
fn a_peer_with_only_a_pod_selector_means_the_same_namespace() {
    let m = cluster()
        .policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]")
        .matrices(&["80/TCP"]);
    assert!(m.allowed(0, "x/b", "x/a"));
    assert!(
        !m.allowed(0, "y/b", "x/a"),
        "y/b has app=b but lives in another namespace"
    );
}

#[test]
fn a_peer_with_only_a_namespace_selector_means_all_pods_there() {
    let m = cluster()
        .policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]")
        .matrices(&["80/TCP"]);
    let denied: Vec<_> = into("x/a")
        .into_iter()
        .filter(|(s, _)| !s.starts_with("y/"))
        .collect();
    m.assert_all_but(0, &denied);
}

#[test]
fn both_selectors_in_one_peer_are_and_in_two_peers_or() {
    let and = cluster()
        .policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: blue}}\n      podSelector: {matchLabels: {app: b}}")
        .matrices(&["80/TCP"]);
    let denied: Vec<_> = into("x/a")
        .into_iter()
        .filter(|(s, _)| *s != "y/b")
        .collect();
    and.assert_all_but(0, &denied);
    let or = cluster()
        .policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: blue}}\n    - podSelector: {matchLabels: {app: b}}")
        .matrices(&["80/TCP"]);
    let denied: Vec<_> = into("x/a")
        .into_iter()
        .filter(|(s, _)| !["y/a", "y/b", "x/b"].contains(s))
        .collect();
    or.assert_all_but(0, &denied);
}

#[test]
fn ip_block_with_except() {
    let f = cluster().policy(
        "x",
        "p",
        "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.2.0/24]}}]",
    );
    let m = f.matrices(&["80/TCP"]);
    // Pods on n2 (10.1.2.0/24) are carved out.
    m.assert_all_but(0, &[("x/c", "x/a"), ("y/a", "x/a"), ("z/a", "x/a")]);
    assert!(f.explain("10.1.3.7", "x/a", 80, "TCP").0);
    assert!(!f.explain("10.1.2.200", "x/a", 80, "TCP").0);
    assert!(!f.explain("192.0.2.1", "x/a", 80, "TCP").0);
}

#[test]
fn match_expressions_in_notin_exists_doesnotexist() {
    let cases = [
        (
            "{key: app, operator: In, values: [b, c]}",
            vec!["x/b", "x/c"],
        ),
        ("{key: app, operator: NotIn, values: [b]}", vec!["x/c"]),
        ("{key: app, operator: Exists}", vec!["x/b", "x/c"]),
        ("{key: tier, operator: DoesNotExist}", vec!["x/b", "x/c"]),
        ("{key: app, operator: DoesNotExist}", vec![]),
    ];
    for (expr, allowed) in cases {
        let m = cluster()
            .policy("x", "p", &format!("  podSelector: {{matchLabels: {{app: a}}}}\n  ingress:\n  - from: [{{podSelector: {{matchExpressions: [{expr}]}}}}]"))
            .matrices(&["80/TCP"]);
        let denied: Vec<_> = into("x/a")
            .into_iter()
            .filter(|(s, _)| !allowed.contains(s))
            .collect();
        m.assert_all_but(0, &denied);
    }
}

#[test]
fn missing_from_means_every_peer_and_an_empty_ingress_list_none() {
    let all = cluster().policy(
        "x",
        "p",
        "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports: [{port: 80}]",
    );
    all.matrices(&["80/TCP"]).assert_all_but(0, &[]);
    assert!(
        all.explain("198.51.100.1", "x/a", 80, "TCP").0,
        "external sources too"
    );
    let none = cluster().policy(
        "x",
        "p",
        "  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Ingress]\n  ingress: []",
    );
    none.matrices(&["80/TCP"]).assert_all_but(0, &into("x/a"));
}

#[test]
fn missing_ports_means_every_port_and_protocol() {
    let m = cluster()
        .policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]")
        .matrices(&["80/TCP", "53/UDP", "9/SCTP", "65535/TCP"]);
    for i in 0..4 {
        assert!(m.allowed(i, "x/b", "x/a"));
        assert!(!m.allowed(i, "x/c", "x/a"));
    }
}

#[test]
fn protocol_defaults_to_tcp_and_tcp_udp_sctp_are_distinct() {
    let m = cluster()
        .policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports: [{port: 80}, {protocol: UDP, port: 53}, {protocol: SCTP, port: 9}]")
        .matrices(&["80/TCP", "80/UDP", "53/UDP", "53/TCP", "9/SCTP", "9/TCP"]);
    let expect = [true, false, true, false, true, false];
    for (i, want) in expect.into_iter().enumerate() {
        assert_eq!(m.allowed(i, "x/b", "x/a"), want, "probe {i}");
    }
}

#[test]
fn a_protocol_without_a_port_means_all_its_ports() {
    let m = cluster()
        .policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports: [{protocol: UDP}]",
        )
        .matrices(&["1/UDP", "65535/UDP", "80/TCP"]);
    assert!(m.allowed(0, "x/b", "x/a") && m.allowed(1, "x/b", "x/a"));
    assert!(!m.allowed(2, "x/b", "x/a"));
}

#[test]
fn end_port_ranges_are_inclusive() {
    let m = cluster()
        .policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports: [{port: 8000, endPort: 8100}]")
        .matrices(&["7999/TCP", "8000/TCP", "8050/TCP", "8100/TCP", "8101/TCP"]);
    let expect = [false, true, true, true, false];
    for (i, want) in expect.into_iter().enumerate() {
        assert_eq!(m.allowed(i, "x/b", "x/a"), want, "probe {i}");
    }
}

fn named_port_cluster() -> Fixture {
    Fixture::new()
        .ns("x", &[])
        .pod_with(
            "x",
            "web80",
            &[("app", "web")],
            "n1",
            "10.1.1.1",
            PodOpts {
                ports: &[("http", 80, "TCP")],
                ..PodOpts::default()
            },
        )
        .pod_with(
            "x",
            "web8080",
            &[("app", "web")],
            "n2",
            "10.1.2.1",
            PodOpts {
                ports: &[("http", 8080, "TCP"), ("dns", 53, "UDP")],
                ..PodOpts::default()
            },
        )
        .pod_with(
            "x",
            "client",
            &[("app", "client")],
            "n1",
            "10.1.1.2",
            PodOpts {
                ports: &[("http", 9999, "TCP")],
                ..PodOpts::default()
            },
        )
}

#[test]
fn named_ports_resolve_against_the_receiving_pod_for_ingress() {
    let m = named_port_cluster()
        .policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - ports: [{port: http}]",
        )
        .matrices(&["80/TCP", "8080/TCP", "9999/TCP"]);
    assert!(m.allowed(0, "x/client", "x/web80") && !m.allowed(1, "x/client", "x/web80"));
    assert!(m.allowed(1, "x/client", "x/web8080") && !m.allowed(0, "x/client", "x/web8080"));
    assert!(
        !m.allowed(2, "x/client", "x/web80"),
        "the sender's own 'http' (9999) is irrelevant"
    );
}

#[test]
fn named_ports_resolve_against_the_receiving_pod_for_egress() {
    let f = named_port_cluster()
        .policy("x", "p", "  podSelector: {matchLabels: {app: client}}\n  egress:\n  - ports: [{port: http}, {protocol: UDP, port: dns}]");
    let m = f.matrices(&["80/TCP", "8080/TCP", "53/UDP", "9999/TCP"]);
    assert!(m.allowed(0, "x/client", "x/web80") && !m.allowed(1, "x/client", "x/web80"));
    assert!(m.allowed(1, "x/client", "x/web8080") && !m.allowed(0, "x/client", "x/web8080"));
    assert!(m.allowed(2, "x/client", "x/web8080") && !m.allowed(2, "x/client", "x/web80"));
    // A destination that is not a pod has no named ports.
    assert!(!f.explain("x/client", "192.0.2.1", 80, "TCP").0);
}

#[test]
fn a_connection_needs_both_the_source_egress_and_the_destination_ingress() {
    let f = cluster()
        .policy("x", "egress", "  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: b}}}]")
        .policy("x", "ingress", "  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: c}}}]");
    let (allowed, why) = f.explain("x/a", "x/b", 80, "TCP");
    assert!(!allowed);
    assert_eq!(why["egress"]["result"], "allowed");
    assert_eq!(why["ingress"]["result"], "denied");
    let (allowed, why) = f.explain("x/a", "x/c", 80, "TCP");
    assert!(!allowed);
    assert_eq!(why["egress"]["result"], "denied");
    assert_eq!(why["ingress"]["result"], "notIsolated");
    assert!(f.explain("x/c", "x/b", 80, "TCP").0);
}

#[test]
fn traffic_to_itself_is_always_allowed() {
    let f = cluster().policy(
        "x",
        "deny",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
    );
    let (allowed, why) = f.explain("x/a", "x/a", 80, "TCP");
    assert!(allowed);
    assert_eq!(why["selfTraffic"], true);
    f.matrices(&["80/TCP"]).assert_all_but(0, &{
        let mut d = Vec::new();
        for p in ["x/a", "x/b", "x/c"] {
            d.extend(into(p));
            d.extend(from(p));
        }
        d
    });
}

#[test]
fn host_network_pods_are_neither_enforced_nor_pod_peers() {
    let f = cluster()
        .pod_with(
            "x",
            "host",
            &[("app", "b")],
            "n1",
            "192.168.0.10",
            PodOpts {
                host_network: true,
                ..PodOpts::default()
            },
        )
        .policy(
            "x",
            "p",
            "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]",
        );
    let m = f.matrices(&["80/TCP"]);
    assert!(!m.pods().contains(&"x/host".to_string()));
    // Its address is not an app=b pod.
    assert!(!f.explain("192.168.0.10", "x/a", 80, "TCP").0);
    assert!(f.explain("x/b", "x/a", 80, "TCP").0);
}

#[test]
fn pods_without_an_address_or_finished_are_neither_endpoints_nor_peers() {
    let f = cluster()
        .pod_with("x", "done",  &[("app", "b")], "n1", "10.1.1.9", PodOpts { phase: "Succeeded", ..PodOpts::default() })
        .raw("apiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: x, labels: {app: b}}\nspec: {containers: [{name: c, image: i}]}\nstatus: {phase: Pending}\n")
        .policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]");
    let m = f.matrices(&["80/TCP"]);
    let pods = m.pods();
    assert!(!pods.contains(&"x/done".to_string()) && !pods.contains(&"x/pending".to_string()));
    assert!(
        !f.explain("10.1.1.9", "x/a", 80, "TCP").0,
        "a finished pod's old address is no peer"
    );
}

#[test]
fn a_rejected_object_changes_nothing_else() {
    let good = cluster().policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]");
    let with_bad = good.clone().policy("x", "bad", "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/24]}}]");
    let args = ["evaluate", "-f", "-", "-o", "json", "--probe", "80/TCP"];
    let out = palisadectl(&args, &with_bad.text());
    assert_eq!(
        out.status.code(),
        Some(4),
        "rejections make the exit status 4"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NetworkPolicy x/bad") && stderr.contains("except[0]"),
        "{stderr}"
    );
    let expected = good.matrices(&["80/TCP"]);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, expected.0);
}
