//! proptest strategies over a small universe (3 namespaces, 3 nodes, a handful of labels,
//! ports and CIDRs) so that random objects collide, overlap and select each other often.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use proptest::prelude::*;

use palisade_policy::model::{
    Command, Labels, NamedPort, Namespace, NetworkPolicy, ObjKey, Operator, Peer, Pod, PolicyRule,
    PortRef, PortSpec, Protocol, Requirement, Selector, NAMESPACE_NAME_LABEL,
};
use palisade_policy::net::Prefix;

pub const NAMESPACES: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 3] = ["n0", "n1", "n2"];
const PODS_PER_NS: u8 = 5;
const POLICIES_PER_NS: u8 = 3;

fn set(vs: &[&str]) -> BTreeSet<String> {
    vs.iter().map(|s| s.to_string()).collect()
}

fn req(key: &str, op: Operator) -> Requirement {
    Requirement {
        key: key.to_string(),
        op,
    }
}

pub fn pod_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        2 => Just(Selector::everything()),
        3 => prop::sample::select(vec!["x", "y", "z"]).prop_map(|v| Selector::from_labels([("app", v)])),
        1 => Just(Selector::new([req("app", Operator::In(set(&["x", "y"])))])),
        1 => Just(Selector::new([req("app", Operator::NotIn(set(&["x"])))])),
        1 => Just(Selector::new([req("tier", Operator::Exists)])),
        1 => Just(Selector::new([req("tier", Operator::DoesNotExist)])),
        1 => Just(Selector::from_labels([("app", "x"), ("tier", "1")])),
    ]
}

pub fn namespace_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::everything()),
        Just(Selector::from_labels([("team", "red")])),
        Just(Selector::new([req(
            "team",
            Operator::In(set(&["red", "blue"]))
        )])),
        Just(Selector::new([req("team", Operator::DoesNotExist)])),
        prop::sample::select(NAMESPACES.to_vec())
            .prop_map(|n| Selector::from_labels([(NAMESPACE_NAME_LABEL, n)])),
    ]
}

fn labels() -> impl Strategy<Value = Labels> {
    (
        prop::option::of(prop::sample::select(vec!["x", "y", "z"])),
        prop::option::of(prop::sample::select(vec!["1", "2"])),
    )
        .prop_map(|(app, tier)| {
            let mut l = Labels::new();
            if let Some(a) = app {
                l.insert("app".into(), a.into());
            }
            if let Some(t) = tier {
                l.insert("tier".into(), t.into());
            }
            l
        })
}

pub fn namespace() -> impl Strategy<Value = Namespace> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::option::of(prop::sample::select(vec!["red", "blue"])),
    )
        .prop_map(|(n, team)| {
            let mut ns = Namespace::implicit(n);
            if let Some(t) = team {
                ns.labels.insert("team".into(), t.into());
            }
            ns
        })
}

fn named_ports() -> impl Strategy<Value = Vec<NamedPort>> {
    let choices = vec![
        ("http", Protocol::Tcp, 80),
        ("http", Protocol::Tcp, 8080),
        ("dns", Protocol::Udp, 53),
        ("metrics", Protocol::Tcp, 9090),
        ("sig", Protocol::Sctp, 80),
    ];
    prop::sample::subsequence(choices, 0..3).prop_map(|v| {
        let mut out: Vec<NamedPort> = v
            .into_iter()
            .map(|(n, p, port)| NamedPort {
                name: n.into(),
                protocol: p,
                port,
            })
            .collect();
        // A name resolves to one number per pod, as container port names are unique.
        out.dedup_by(|a, b| a.name == b.name && a.protocol == b.protocol);
        out.sort();
        out
    })
}

/// The address a pod gets: unique per (namespace, index) so peers never collide.
pub fn pod_ip(ns: usize, idx: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, ns as u8, idx + 1)
}

pub fn pod() -> impl Strategy<Value = Pod> {
    (
        0..NAMESPACES.len(),
        0..PODS_PER_NS,
        labels(),
        prop::option::weighted(0.9, prop::sample::select(NODES.to_vec())),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
        named_ports(),
    )
        .prop_map(
            |(ns, idx, labels, node, has_ip, host_network, finished, named_ports)| Pod {
                key: ObjKey::new(NAMESPACES[ns], &format!("p{idx}")),
                labels,
                node: node.map(Into::into),
                ip: has_ip.then(|| pod_ip(ns, idx)),
                host_network,
                finished,
                named_ports,
            },
        )
}

fn ip_block() -> impl Strategy<Value = Peer> {
    let p = |s: &str| s.parse::<Prefix>().unwrap();
    prop::sample::select(vec![
        (p("10.0.0.0/16"), vec![]),
        (p("10.0.0.0/16"), vec![p("10.0.1.0/24")]),
        (p("0.0.0.0/0"), vec![p("10.0.0.0/16")]),
        (p("10.0.1.0/24"), vec![p("10.0.1.0/30"), p("10.0.1.2/31")]),
        (p("10.0.2.0/29"), vec![]),
        (p("10.0.0.0/8"), vec![p("10.0.2.0/24")]),
        (p("10.0.0.2/32"), vec![]),
        (p("192.168.0.0/16"), vec![]),
    ])
    .prop_map(|(cidr, except)| Peer::IpBlock { cidr, except })
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        3 => pod_selector().prop_map(|pods| Peer::Pods { namespaces: None, pods }),
        2 => (namespace_selector(), pod_selector()).prop_map(|(n, pods)| Peer::Pods { namespaces: Some(n), pods }),
        2 => ip_block(),
        1 => Just(Peer::IpBlockV6 { cidr: "fd00::/8".into() }),
    ]
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    let protocol = prop::sample::select(vec![
        Protocol::Tcp,
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Sctp,
    ]);
    let port = prop_oneof![
        Just(PortRef::All),
        Just(PortRef::Range(80, 80)),
        Just(PortRef::Range(53, 53)),
        Just(PortRef::Range(8000, 8100)),
        Just(PortRef::Range(1, 1024)),
        prop::sample::select(vec!["http", "dns", "metrics", "sig"])
            .prop_map(|n| PortRef::Named(n.into())),
    ];
    (protocol, port).prop_map(|(protocol, port)| PortSpec { protocol, port })
}

fn rule() -> impl Strategy<Value = PolicyRule> {
    (
        prop::option::of(prop::collection::vec(peer(), 1..3)),
        prop::option::of(prop::collection::vec(port_spec(), 1..3)),
    )
        .prop_map(|(peers, ports)| PolicyRule { peers, ports })
}

pub fn policy() -> impl Strategy<Value = NetworkPolicy> {
    let rules = || prop::option::weighted(0.6, prop::collection::vec(rule(), 0..3));
    (
        prop::sample::select(NAMESPACES.to_vec()),
        0..POLICIES_PER_NS,
        pod_selector(),
        rules(),
        rules(),
    )
        .prop_map(|(ns, i, sel, ingress, egress)| NetworkPolicy {
            key: ObjKey::new(ns, &format!("q{i}")),
            pod_selector: sel,
            ingress,
            egress,
            ignored: Default::default(),
        })
}

pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        2 => namespace().prop_map(Command::UpsertNamespace),
        1 => prop::sample::select(NAMESPACES.to_vec()).prop_map(|n| Command::DeleteNamespace(n.into())),
        6 => pod().prop_map(Command::UpsertPod),
        2 => (0..NAMESPACES.len(), 0..PODS_PER_NS).prop_map(|(n, i)| Command::DeletePod(ObjKey::new(NAMESPACES[n], &format!("p{i}")))),
        4 => policy().prop_map(Command::UpsertPolicy),
        1 => (0..NAMESPACES.len(), 0..POLICIES_PER_NS).prop_map(|(n, i)| Command::DeletePolicy(ObjKey::new(NAMESPACES[n], &format!("q{i}")))),
    ]
}

/// Addresses worth probing: every possible pod address plus some outside ones.
pub fn probe_ips() -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = (0..NAMESPACES.len())
        .flat_map(|n| (0..PODS_PER_NS).map(move |i| pod_ip(n, i)))
        .collect();
    v.extend(
        ["10.0.1.200", "10.0.2.200", "192.168.3.4", "8.8.8.8"]
            .map(|s| s.parse::<Ipv4Addr>().unwrap()),
    );
    v
}

/// (protocol number, port) pairs worth probing.
pub fn probe_ports() -> Vec<(u8, u16)> {
    let mut v = Vec::new();
    for proto in [6u8, 17, 132] {
        // Every port the generators name, and the ports just outside each range.
        for port in [
            0u16, 1, 52, 53, 54, 79, 80, 81, 443, 1024, 1025, 7999, 8000, 8050, 8080, 8100, 8101,
            9090, 65535,
        ] {
            v.push((proto, port));
        }
    }
    v.push((1, 0)); // ICMP
    v
}
