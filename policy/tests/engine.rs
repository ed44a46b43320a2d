//! Behaviour of the incremental engine on small, named scenarios: minimal slices, exactly the
//! affected nodes, shared member changes, versions, and the pods that are not endpoints.

use std::net::Ipv4Addr;
use std::sync::Arc;

use palisade_policy::delta::EndpointDelta;
use palisade_policy::engine::Engine;
use palisade_policy::model::{
    Command, Labels, NamedPort, NetworkPolicy, ObjKey, Peer, Pod, PolicyRule, PortRef, PortSpec,
    Protocol, Selector,
};
use palisade_policy::slice::{Member, PeerRef, PortMatch};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn pod(ns: &str, name: &str, app: &str, node: &str, addr: &str) -> Pod {
    let mut labels = Labels::new();
    labels.insert("app".into(), app.into());
    Pod {
        key: ObjKey::new(ns, name),
        labels,
        node: Some(node.into()),
        ip: Some(ip(addr)),
        host_network: false,
        finished: false,
        named_ports: vec![],
    }
}

fn app(v: &str) -> Selector {
    Selector::from_labels([("app", v)])
}

/// `target` pods in `ns` accept TCP `port` from `from` pods of the same namespace.
fn allow_from(ns: &str, name: &str, target: &str, from: &str, port: u16) -> NetworkPolicy {
    NetworkPolicy {
        key: ObjKey::new(ns, name),
        pod_selector: app(target),
        ingress: Some(vec![PolicyRule {
            peers: Some(vec![Peer::Pods {
                namespaces: None,
                pods: app(from),
            }]),
            ports: Some(vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Range(port, port),
            }]),
        }]),
        egress: None,
        ignored: Default::default(),
    }
}

fn chain() -> Engine {
    Engine::load(
        1,
        [
            Command::UpsertPod(pod("shop", "web", "web", "n1", "10.0.1.1")),
            Command::UpsertPod(pod("shop", "api", "api", "n2", "10.0.2.1")),
            Command::UpsertPod(pod("shop", "db", "db", "n3", "10.0.3.1")),
            Command::UpsertPod(pod("other", "x", "x", "n4", "10.0.4.1")),
            Command::UpsertPolicy(allow_from("shop", "api", "api", "web", 8080)),
            Command::UpsertPolicy(allow_from("shop", "db", "db", "api", 5432)),
        ],
    )
}

#[test]
fn slices_are_minimal() {
    let e = chain();
    // n1 hosts only `web`, which no policy selects: nothing to enforce.
    assert!(e.slice("n1").endpoints.is_empty() && e.slice("n1").sets.is_empty());
    assert!(e.slice("n4").endpoints.is_empty() && e.slice("n4").sets.is_empty());
    // n2 holds `api` and the one address its rule references (web), not db or x.
    let s = e.slice("n2");
    assert_eq!(
        s.endpoints.keys().collect::<Vec<_>>(),
        vec![&ip("10.0.2.1")]
    );
    assert_eq!(s.sets.len(), 1);
    let members: Vec<&Member> = s.sets.values().next().unwrap().members.iter().collect();
    assert_eq!(members, vec![&Member::host(ip("10.0.1.1"))]);
    assert_eq!(e.slice("unknown").endpoints.len(), 0);
}

#[test]
fn a_policy_change_reaches_exactly_the_affected_nodes() {
    let mut e = chain();
    let updates = e.apply(
        2,
        Command::UpsertPolicy(allow_from("shop", "db", "db", "api", 5433)),
    );
    let nodes: Vec<&str> = updates.iter().map(|u| &*u.node).collect();
    assert_eq!(nodes, vec!["n3"]);
    let EndpointDelta::Change { ingress, .. } = &updates[0].delta.endpoints[0] else {
        panic!("expected a rule change")
    };
    assert_eq!(ingress.added.len(), 1);
    assert_eq!(ingress.removed.len(), 1);
    assert!(
        updates[0].delta.sets_added.is_empty(),
        "the set of api pods is unchanged"
    );
}

#[test]
fn a_command_that_changes_nothing_yields_no_delta() {
    let mut e = chain();
    assert!(e
        .apply(
            2,
            Command::UpsertPod(pod("shop", "web", "web", "n1", "10.0.1.1"))
        )
        .is_empty());
    // A label no selector reads.
    let mut p = pod("shop", "web", "web", "n1", "10.0.1.1");
    p.labels.insert("version".into(), "2".into());
    assert!(e.apply(3, Command::UpsertPod(p)).is_empty());
    assert!(e
        .apply(4, Command::DeletePod(ObjKey::new("shop", "nope")))
        .is_empty());
    assert_eq!(e.node("n2").unwrap().version, 1);
}

#[test]
fn a_pod_joining_a_set_sends_one_shared_member_change() {
    let mut e = chain();
    // Three api replicas on three nodes all reference the set of web pods.
    e.apply(
        2,
        Command::UpsertPod(pod("shop", "api2", "api", "n5", "10.0.5.1")),
    );
    e.apply(
        3,
        Command::UpsertPod(pod("shop", "api3", "api", "n6", "10.0.6.1")),
    );
    let updates = e.apply(
        4,
        Command::UpsertPod(pod("shop", "web2", "web", "n1", "10.0.1.2")),
    );
    let nodes: Vec<&str> = updates.iter().map(|u| &*u.node).collect();
    assert_eq!(
        nodes,
        vec!["n2", "n5", "n6"],
        "n1 (web2's own node) enforces nothing"
    );
    let first = &updates[0].delta.members[0];
    assert_eq!(first.added, vec![Member::host(ip("10.0.1.2"))]);
    for u in &updates {
        assert!(u.delta.endpoints.is_empty());
        assert!(
            Arc::ptr_eq(&u.delta.members[0], first),
            "encoded once, shared"
        );
        assert_eq!(u.to_version, 4);
        assert_eq!(u.digest(), e.slice(&u.node).digest());
    }
}

#[test]
fn versions_are_the_last_revision_that_changed_the_slice() {
    let mut e = chain();
    e.apply(
        2,
        Command::UpsertPolicy(allow_from("shop", "db", "db", "api", 5433)),
    );
    e.apply(
        3,
        Command::UpsertPod(pod("other", "y", "y", "n4", "10.0.4.2")),
    );
    assert_eq!(e.node("n3").unwrap().version, 2);
    assert_eq!(e.node("n2").unwrap().version, 1);
    assert_eq!(e.node("n4").unwrap().version, 0, "never held anything");
    let u = e.apply(4, Command::DeletePolicy(ObjKey::new("shop", "db")));
    assert_eq!((u[0].from_version, u[0].to_version), (2, 4));
    assert!(e.slice("n3").endpoints.is_empty());
}

#[test]
fn pods_that_are_not_endpoints_or_peers() {
    let mut e = chain();
    let mut no_ip = pod("shop", "web-pending", "web", "n1", "10.0.1.9");
    no_ip.ip = None;
    let mut done = pod("shop", "web-done", "web", "n1", "10.0.1.8");
    done.finished = true;
    let mut host = pod("shop", "web-host", "web", "n1", "192.168.0.1");
    host.host_network = true;
    let mut unscheduled = pod("shop", "api-floating", "api", "n1", "10.0.9.9");
    unscheduled.node = None;
    for (i, p) in [no_ip, done, host].into_iter().enumerate() {
        assert!(
            e.apply(2 + i as u64, Command::UpsertPod(p)).is_empty(),
            "not a peer"
        );
    }
    // A pod with an address but no node is a peer of others (db accepts api pods) but is
    // enforced nowhere: n3 learns its address, no node gains an endpoint.
    let updates = e.apply(9, Command::UpsertPod(unscheduled));
    assert_eq!(updates.len(), 1);
    assert_eq!(&*updates[0].node, "n3");
    assert!(updates[0].delta.endpoints.is_empty());
    assert_eq!(
        updates[0].delta.members[0].added,
        vec![Member::host(ip("10.0.9.9"))]
    );
}

#[test]
fn egress_named_ports_resolve_per_destination_pod() {
    let mut a = pod("shop", "web-a", "backend", "n1", "10.0.1.1");
    a.named_ports = vec![NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
    }];
    let mut b = pod("shop", "web-b", "backend", "n2", "10.0.2.1");
    b.named_ports = vec![NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    let client = pod("shop", "client", "client", "n3", "10.0.3.1");
    let policy = NetworkPolicy {
        key: ObjKey::new("shop", "client-egress"),
        pod_selector: app("client"),
        ingress: None,
        egress: Some(vec![PolicyRule {
            peers: Some(vec![Peer::Pods {
                namespaces: None,
                pods: app("backend"),
            }]),
            ports: Some(vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Named("http".into()),
            }]),
        }]),
        ignored: Default::default(),
    };
    let e = Engine::load(
        1,
        [a, b, client]
            .map(Command::UpsertPod)
            .into_iter()
            .chain([Command::UpsertPolicy(policy)]),
    );
    let s = e.slice("n3");
    let ep = &s.endpoints[&ip("10.0.3.1")];
    let rule = ep.egress.as_ref().unwrap().rules.iter().next().unwrap();
    assert_eq!(
        rule.ports,
        PortMatch::Named {
            protocol: Protocol::Tcp
        }
    );
    let PeerRef::Set(id) = rule.peer else {
        panic!()
    };
    let members: Vec<String> = s.sets[&id].members.iter().map(|m| m.to_string()).collect();
    assert_eq!(members, vec!["10.0.1.1:80", "10.0.2.1:8080"]);
}

#[test]
fn deny_all_isolates_without_sets() {
    let deny = NetworkPolicy {
        key: ObjKey::new("shop", "deny"),
        pod_selector: Selector::everything(),
        ingress: Some(vec![]),
        egress: Some(vec![]),
        ignored: Default::default(),
    };
    let mut e = chain();
    let updates = e.apply(2, Command::UpsertPolicy(deny));
    assert_eq!(
        updates.iter().map(|u| &*u.node).collect::<Vec<_>>(),
        vec!["n1", "n2", "n3"]
    );
    let s = e.slice("n1");
    let ep = &s.endpoints[&ip("10.0.1.1")];
    assert!(ep.ingress.as_ref().unwrap().rules.is_empty());
    assert!(ep.egress.as_ref().unwrap().rules.is_empty());
    assert!(s.sets.is_empty());
}

#[test]
fn canonical_encoding_is_stable() {
    let a = chain().slice("n2");
    let b = chain().slice("n2");
    assert_eq!(a.encode(), b.encode());
    assert_eq!(a.digest(), b.digest());
    let mut c = a.clone();
    c.endpoints.clear();
    assert_ne!(a.encode(), c.encode());
    assert_ne!(a.digest(), c.digest());
}

/// Batches large enough to take the parallel paths (policy compilation, endpoint
/// computation) give the same slices as applying the same commands one at a time.
#[test]
fn large_batches_equal_one_command_at_a_time() {
    let mut commands = Vec::new();
    for ns in 0..40 {
        let ns_name = format!("ns{ns}");
        for i in 0..20 {
            let name = format!("p{i}");
            let ip = format!("10.{}.{}.{}", ns / 200, ns % 200, i + 1);
            let mut p = pod(
                &ns_name,
                &name,
                &format!("a{}", i % 4),
                &format!("n{}", (ns * 7 + i) % 13),
                &ip,
            );
            p.named_ports = vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8000 + (i % 3) as u16,
            }];
            commands.push(Command::UpsertPod(p));
        }
        for q in 0..16 {
            let mut policy = allow_from(
                &ns_name,
                &format!("q{q}"),
                &format!("a{}", q % 4),
                &format!("a{}", (q + 1) % 4),
                80 + q as u16,
            );
            if q % 3 == 0 {
                policy.egress = Some(vec![PolicyRule {
                    peers: Some(vec![Peer::Pods {
                        namespaces: Some(Selector::everything()),
                        pods: app(&format!("a{}", q % 4)),
                    }]),
                    ports: Some(vec![PortSpec {
                        protocol: Protocol::Tcp,
                        port: PortRef::Named("http".into()),
                    }]),
                }]);
            }
            commands.push(Command::UpsertPolicy(policy));
        }
    }
    assert!(commands.len() > 1200);
    let batch = Engine::load(1, commands.clone());
    let mut one_by_one = Engine::new();
    for (i, c) in commands.into_iter().enumerate() {
        one_by_one.apply(1 + i as u64, c);
    }
    let nodes = batch.nodes();
    assert_eq!(nodes.len(), 13);
    for n in nodes {
        let (mut a, mut b) = (batch.slice(&n.node), one_by_one.slice(&n.node));
        assert!(
            a.endpoints.len() > 20,
            "node {} enforces many endpoints",
            n.node
        );
        (a.version, b.version) = (0, 0);
        assert_eq!(a, b, "node {}", n.node);
        assert_eq!(n.digest, a.digest());
        assert_eq!(one_by_one.node(&n.node).unwrap().digest, b.digest());
    }
}

#[test]
fn a_slice_with_more_endpoints_than_the_map_holds_does_not_fit() {
    use palisade_policy::lower::{fit, Capacities, FitError, Identities};
    let slice = chain().slice("n2");
    let caps = Capacities {
        endpoints: Some(0),
        ..Capacities::default()
    };
    assert_eq!(
        fit(&slice, &Identities::default(), &caps),
        Err(FitError::Endpoints {
            needed: 1,
            capacity: 0
        })
    );
    let caps = Capacities {
        endpoints: Some(1),
        rules: Some(0),
        ..Capacities::default()
    };
    let fitted = fit(&slice, &Identities::default(), &caps).unwrap();
    assert_eq!(
        fitted.failed_closed.into_iter().collect::<Vec<_>>(),
        [ip("10.0.2.1")]
    );
    assert!(fitted.image.rules.is_empty() && fitted.image.identities.is_empty());
}

#[test]
fn a_restore_refuses_versions_that_do_not_fit() {
    let e = chain();
    let versions = e.node_versions();
    assert!(Engine::restore(e.revision(), e.objects(), &versions).is_ok());
    let mut later = versions.clone();
    later.insert("n2".into(), e.revision() + 5);
    let err = Engine::restore(e.revision(), e.objects(), &later)
        .err()
        .unwrap();
    assert!(err.contains("after the snapshot"), "{err}");
    let mut missing = versions;
    missing.remove("n2");
    let err = Engine::restore(e.revision(), e.objects(), &missing)
        .err()
        .unwrap();
    assert!(err.contains("n2") && err.contains("no version"), "{err}");
}
