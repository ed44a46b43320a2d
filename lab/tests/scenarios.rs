//! The seed scenarios on real packets, each measured with real sockets and held equal to what
//! `palisadectl evaluate` predicts from the same manifests.

#[path = "support.rs"]
mod support;

use palisade_policy::model::Protocol::{Tcp, Udp};
use support::{allowed, assert_matches, lab, pod, policy, serve_all};

const DEFAULT_DENY_BOTH: &str = "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";

fn three_pods() -> String {
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string(),
        pod("shop", "a", "app: a", "node-1", "10.244.1.2", ""),
        pod("shop", "b", "app: b", "node-1", "10.244.1.3", ""),
        pod("shop", "c", "app: c", "node-2", "10.244.2.2", ""),
    ]
    .join("---\n")
}

#[test]
fn deny_all_ingress_and_egress_then_open_again() {
    let pods = three_pods();
    let lab = lab(&[("pods.yaml", &pods)]);
    let probes = [(80, Tcp), (53, Udp)];
    let _s = serve_all(&lab, &probes);
    let flows = lab.all_flows(&probes);
    assert!(assert_matches(&lab, &flows).values().all(|ok| *ok));

    lab.apply("deny.yaml", &policy("shop", "deny-all", DEFAULT_DENY_BOTH))
        .unwrap();
    let m = assert_matches(&lab, &flows);
    assert_eq!(allowed(&m), Vec::<String>::new(), "default deny: nothing");

    // Ingress only: pods may send, nothing reaches them (not even from outside).
    lab.apply(
        "deny.yaml",
        &policy(
            "shop",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        ),
    )
    .unwrap();
    let m = assert_matches(&lab, &flows);
    assert!(allowed(&m).is_empty());

    let before = lab.revision().unwrap();
    lab.remove("deny.yaml").unwrap();
    lab.realized(before).unwrap();
    assert!(assert_matches(&lab, &flows).values().all(|ok| *ok));
}

#[test]
fn dns_and_https_egress_and_udp_replies_into_an_isolated_pod() {
    let text = include_str!("../../examples/dns-https-egress/manifests.yaml");
    let lab = lab(&[("manifests.yaml", text)]);
    let probes = [(53, Udp), (443, Tcp), (80, Tcp)];
    let _s = serve_all(&lab, &probes);
    let from_myapp: Vec<_> = lab
        .all_flows(&probes)
        .into_iter()
        .filter(|f| f.0 == "default/myapp")
        .collect();
    let m = assert_matches(&lab, &from_myapp);
    assert_eq!(
        allowed(&m),
        vec![
            "default/myapp->kube-system/coredns:443/Tcp",
            "default/myapp->kube-system/coredns:53/Udp",
            "default/myapp->web/api:443/Tcp",
            "default/myapp->web/api:53/Udp",
        ]
    );
    // myapp isolated for ingress too: the DNS answers (UDP) still come back, as replies.
    lab.apply(
        "deny-in.yaml",
        &policy(
            "default",
            "deny-in",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        ),
    )
    .unwrap();
    let m = assert_matches(&lab, &from_myapp);
    assert!(
        m[&(
            "default/myapp".to_string(),
            "kube-system/coredns".to_string(),
            53,
            Udp
        )]
    );
    let all = lab.all_flows(&probes);
    assert_matches(&lab, &all);
}

#[test]
fn ipblock_with_except() {
    let db = policy(
        "shop",
        "db",
        "  podSelector: {matchLabels: {app: c}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.3/32]}\n    ports: [{protocol: TCP, port: 6379}]\n",
    );
    let pods = three_pods();
    let lab = lab(&[("pods.yaml", &pods), ("db.yaml", &db)]);
    let probes = [(6379, Tcp), (80, Tcp)];
    let _s = serve_all(&lab, &probes);
    let flows: Vec<_> = lab
        .all_flows(&probes)
        .into_iter()
        .filter(|f| f.1 == "shop/c")
        .collect();
    let m = assert_matches(&lab, &flows);
    // a is in the block, b is the hole, outside is not in the block.
    assert_eq!(allowed(&m), vec!["shop/a->shop/c:6379/Tcp"]);
}

#[test]
fn named_ports_and_port_ranges() {
    let text = include_str!("../../examples/ports/manifests.yaml");
    let lab = lab(&[("manifests.yaml", text)]);
    let probes = [
        (80, Tcp),
        (8080, Tcp),
        (31999, Tcp),
        (32000, Tcp),
        (32768, Tcp),
        (32769, Tcp),
    ];
    let _s = serve_all(&lab, &probes);
    let flows: Vec<_> = lab
        .all_flows(&probes)
        .into_iter()
        .filter(|f| f.0 == "default/client" && f.1.starts_with("default/web"))
        .collect();
    let m = assert_matches(&lab, &flows);
    // `http` is 80 on web-a and 8080 on web-b; 32000-32768 on both; 80 on both from the
    // multi-protocol policy.
    assert_eq!(
        allowed(&m),
        vec![
            "default/client->default/web-a:32000/Tcp",
            "default/client->default/web-a:32768/Tcp",
            "default/client->default/web-a:80/Tcp",
            "default/client->default/web-b:32000/Tcp",
            "default/client->default/web-b:32768/Tcp",
            "default/client->default/web-b:80/Tcp",
            "default/client->default/web-b:8080/Tcp",
        ]
    );
}
