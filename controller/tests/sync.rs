//! The sync protocol over real sockets with mTLS: many agents against one controller, exactly
//! the affected nodes updated, resume by delta, snapshot on a wrong digest, nacks reported
//! without stalling others, unauthorized nodes refused, slow agents coalesced, controller
//! restarts resumed without snapshots.

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster::{allow, pod, AgentOpts, Cluster};
use palisade_agent::{Capacities, Phase, StateStore};
use palisadectl::output::Output;

const NODES: [&str; 8] = ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"];

/// Four namespaces t0..t3: a web pod on n{2i}, an api pod on n{2i+1}, and a policy letting
/// web reach api on 8080. So n1, n3, n5, n7 enforce something; the even nodes nothing.
fn manifests() -> Vec<(&'static str, String)> {
    let names = ["t0.yaml", "t1.yaml", "t2.yaml", "t3.yaml"];
    (0..4)
        .map(|i| (names[i], namespace_file(i, 8080, "")))
        .collect()
}

fn namespace_file(i: usize, port: u16, extra: &str) -> String {
    let ns = format!("t{i}");
    let mut docs = vec![
        pod(
            &ns,
            "web",
            "web",
            &format!("n{}", 2 * i),
            &format!("10.0.{i}.1"),
        ),
        pod(
            &ns,
            "api",
            "api",
            &format!("n{}", 2 * i + 1),
            &format!("10.0.{i}.2"),
        ),
        allow(&ns, "api", "api", "web", port),
    ];
    if !extra.is_empty() {
        docs.push(extra.to_string());
    }
    docs.join("---\n")
}

async fn running() -> Cluster {
    let mut c = Cluster::start(&manifests(), &NODES).await;
    for n in NODES {
        c.start_agent(n, AgentOpts::default());
    }
    c.all_in_sync().await;
    c
}

fn updates(c: &Cluster) -> BTreeMap<String, (u64, u64)> {
    c.agents
        .keys()
        .map(|n| (n.clone(), (c.status(n).updates, c.status(n).snapshots)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_exactly_the_affected_nodes() {
    let c = running().await;
    // Every agent got its initial state: a snapshot where there is policy, an empty
    // confirmation where there is none.
    for n in NODES {
        let s = c.status(n);
        assert_eq!(s.phase, Phase::Synced, "{n}");
        assert_eq!(s.snapshots + s.updates, 1, "{n}: {s:?}");
    }
    let before = updates(&c);
    let r0 = c.revision();
    c.write("t1.yaml", &namespace_file(1, 9090, ""));
    let r1 = c.next_revision(r0).await;
    c.realized(r1).await;
    c.all_in_sync().await;
    let after = updates(&c);
    let changed: Vec<&String> = NODES
        .iter()
        .map(|n| n.to_string())
        .filter(|n| before[n] != after[n])
        .map(|n| c.agents.get_key_value(&n).unwrap().0)
        .collect();
    assert_eq!(
        changed,
        vec!["n3"],
        "only t1's api node enforces t1's policy"
    );

    // A new web pod in t2 (on n0) joins the set n5 holds: n5 gets a member change, n0
    // (which enforces nothing) gets nothing.
    let before = updates(&c);
    c.write(
        "t2.yaml",
        &namespace_file(2, 8080, &pod("t2", "web2", "web", "n0", "10.0.2.9")),
    );
    let r2 = c.next_revision(r1).await;
    c.realized(r2).await;
    c.all_in_sync().await;
    let after = updates(&c);
    let changed: Vec<String> = NODES
        .iter()
        .map(|n| n.to_string())
        .filter(|n| before[n] != after[n])
        .collect();
    assert_eq!(changed, vec!["n5"]);
    let view = c.hub().view();
    c.hub().progress(|p| {
        for n in NODES {
            let (v, d) = view.desired(n);
            let r = p.rollout().node(n).unwrap();
            assert_eq!(
                (r.acked_version, r.acked_digest),
                (v, Some(d)),
                "{n} acked what it should hold"
            );
        }
    });
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_resumes_by_delta() {
    let mut c = running().await;
    c.stop_agent("n3").await;
    let mut r = c.revision();
    for port in [9090, 9091] {
        c.write("t1.yaml", &namespace_file(1, port, ""));
        r = c.next_revision(r).await;
    }
    assert!(
        !c.hub().progress(|p| p.rollout().is_realized(r)),
        "n3 is away"
    );
    c.start_agent("n3", AgentOpts::default());
    c.realized(r).await;
    let s = c
        .agent_until("n3", "synced", |s| s.phase == Phase::Synced)
        .await;
    assert_eq!(s.snapshots, 0, "resumed from its saved version: {s:?}");
    assert_eq!(s.updates, 1, "one coalesced delta for both revisions");
    assert_eq!((s.version, s.digest), c.hub().view().desired("n3"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_a_wrong_digest_gets_a_snapshot() {
    let mut c = running().await;
    c.stop_agent("n5").await;
    // The saved slice keeps its version but loses an endpoint: another content, another digest.
    let store = StateStore::open(&c.path("agents/n5")).unwrap();
    let mut saved = store.load().unwrap().expect("n5 saved its slice");
    assert!(!saved.endpoints.is_empty());
    saved.endpoints.clear();
    store.save(&saved).unwrap();
    c.start_agent("n5", AgentOpts::default());
    let s = c
        .agent_until("n5", "synced", |s| s.phase == Phase::Synced)
        .await;
    assert_eq!(s.snapshots, 1, "{s:?}");
    assert_eq!((s.version, s.digest), c.hub().view().desired("n5"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_reported_and_does_not_stall_others() {
    let mut c = Cluster::start(&manifests(), &NODES).await;
    for n in NODES {
        let capacities = if n == "n7" {
            // No room for even one endpoint: nothing can be failed closed, so it is refused.
            Capacities {
                endpoints: Some(0),
                ..Capacities::default()
            }
        } else {
            Capacities::default()
        };
        c.start_agent(
            n,
            AgentOpts {
                capacities,
                ..AgentOpts::default()
            },
        );
    }
    let s = c.agent_until("n7", "nacked", |s| s.nacks >= 1).await;
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("endpoint map holds 0"),
        "{s:?}"
    );
    for n in NODES.iter().filter(|n| **n != "n7") {
        c.in_sync(n).await;
    }
    let revision = c.revision();
    // The agent counts its nack before the controller has read it: wait for the controller.
    for _ in 0..200 {
        if c.hub()
            .progress(|p| p.rollout().node("n7").is_some_and(|r| r.nack.is_some()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lagging = c.hub().progress(|p| p.rollout().lagging(revision));
    assert_eq!(lagging.len(), 1, "{lagging:?}");
    assert_eq!(&*lagging[0].node, "n7");
    assert!(lagging[0]
        .nack
        .as_deref()
        .unwrap()
        .contains("endpoint map holds 0"));
    assert!(lagging[0].connected);

    // Changes for other nodes are still delivered and acked.
    c.write("t1.yaml", &namespace_file(1, 9090, ""));
    let r = c.next_revision(revision).await;
    let (v, d) = c.hub().view().desired("n3");
    assert_eq!(v, r);
    c.agent_until("n3", "acked the change", |s| {
        s.version == v && s.digest == d
    })
    .await;
    assert!(
        !c.hub().progress(|p| p.rollout().is_realized(r)),
        "n7 still holds nothing"
    );
    // n7's nack does not loop: a refused snapshot is not resent until its node changes.
    // (Until a keepalive reaches n7 after all this, its stream has had time to resend.)
    let keepalives = c.status("n7").keepalives;
    c.agent_until("n7", "a keepalive", |s| s.keepalives > keepalives)
        .await;
    assert!(c.status("n7").nacks <= 2, "{:?}", c.status("n7"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_certificate_is_refused() {
    let mut c = Cluster::start(&manifests(), &NODES).await;
    c.start_agent(
        "n2",
        AgentOpts {
            cert_of: Some("n1".into()),
            ..AgentOpts::default()
        },
    );
    let s = c
        .agent_until("n2", "refused", |s| s.last_error.is_some())
        .await;
    let err = s.last_error.unwrap();
    assert!(
        err.contains("PermissionDenied") && err.contains("certificate is for node n1, not n2"),
        "{err}"
    );
    assert_eq!(s.phase, Phase::Backoff);
    assert_eq!(s.snapshots + s.updates, 0);

    // Introspection needs an operator certificate: a node's is refused.
    let conn = palisadectl::remote::Conn {
        controller: c.addr.to_string(),
        ca: Some(c.path("certs/ca.pem")),
        cert: Some(c.path("certs/node-n1.pem")),
        key: Some(c.path("certs/node-n1-key.pem")),
        server_name: None,
        insecure: false,
    };
    let err =
        palisadectl::remote::nodes(&conn, &Default::default(), Default::default(), Output::Json)
            .await
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("PermissionDenied") && err.contains("operator certificate"),
        "{err}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_gets_coalesced_updates() {
    let mut c = Cluster::start(&manifests(), &NODES).await;
    c.start_agent(
        "n1",
        AgentOpts {
            delay: Some(Duration::from_millis(400)),
            ..AgentOpts::default()
        },
    );
    c.agent_until("n1", "synced", |s| s.phase == Phase::Synced)
        .await;
    let mut r = c.revision();
    for port in 9000..9008 {
        c.write("t0.yaml", &namespace_file(0, port, ""));
        r = c.next_revision(r).await;
    }
    let (v, d) = c.hub().view().desired("n1");
    assert_eq!(v, r, "every edit changed n1");
    let s = c
        .agent_until("n1", "at the latest version", |s| {
            s.version == v && s.digest == d
        })
        .await;
    assert!(
        s.updates <= 4,
        "8 revisions arrived as {} updates (coalesced): {s:?}",
        s.updates
    );
    assert_eq!(s.nacks, 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_controller_restart_agents_resume_without_snapshots() {
    let mut c = running().await;
    let before: BTreeMap<String, _> = NODES.iter().map(|n| (n.to_string(), c.status(n))).collect();
    let old_revision = c.revision();
    c.restart_controller().await;
    assert!(c.revision() > old_revision, "revisions never go backwards");
    c.realized(c.revision()).await;
    c.all_in_sync().await;
    for n in NODES {
        let (b, a) = (&before[n], c.status(n));
        assert_eq!(a.digest, b.digest, "{n} ends at the same digest");
        assert_eq!(a.snapshots, b.snapshots, "{n} took no snapshot");
        assert!(a.connects >= 2, "{n} reconnected");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edits_are_rejected_and_reported() {
    let c = running().await;
    let r0 = c.revision();
    let before = c.hub().view().desired("n3");
    c.write(
        "t1.yaml",
        &namespace_file(1, 8080, "").replace("port: 8080", "port: 0"),
    );
    // The rejection is reported; the previous policy stays in force, no revision moves.
    for _ in 0..100 {
        if !c.reports().rejected().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejected: Vec<_> = c.reports().rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].object, "t1/api");
    assert!(rejected[0].errors[0].contains("port"), "{:?}", rejected[0]);
    assert_eq!(c.revision(), r0);
    assert_eq!(c.hub().view().desired("n3"), before);
    c.shutdown().await;
}
