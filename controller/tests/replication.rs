//! Three controller replicas as real processes over loopback with mTLS: operators' applies
//! survive a SIGKILLed leader, every replica serves the same state at the same revision,
//! revisions never go back (not even when every replica restarts at once), only replica
//! certificates speak Raft, and the manifest source runs on the leader alone and reconciles
//! instead of replaying.

#[path = "support/replicas.rs"]
mod replicas;

use std::time::{Duration, Instant};

use palisade_proto::endpoint::{self, ClientTls};
use palisade_proto::v1::raft_client::RaftClient;
use palisade_proto::v1::RaftBatch;
use replicas::{pod, Options, Replicas, SHOP, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_that_returned_a_revision_survive_a_killed_leader_on_every_replica() {
    let mut r = Replicas::start(3, false);
    let leader = r.leader().await;
    let base = r.apply(leader, SHOP, false).await.unwrap();
    let mut acknowledged = Vec::new();
    let mut revisions = vec![base];
    let mut killed = None;
    let mut refused = Vec::new();
    for i in 0..45 {
        if i == 15 {
            // SIGKILL the leader in the middle of the burst.
            r.kill(leader);
            killed = Some(leader);
        }
        // Through every live replica in turn: followers forward to the leader. During the
        // election an apply is refused or lost, and says so; the client retries, as an
        // operator would.
        let deadline = Instant::now() + WAIT;
        loop {
            let alive = r.alive();
            let via = alive[(i + refused.len()) % alive.len()];
            match r.apply(via, &pod(i), false).await {
                Ok(rev) => {
                    acknowledged.push(i);
                    revisions.push(rev);
                    break;
                }
                Err(e) => {
                    assert!(
                        e.contains("leader") || e.contains("navailable") || e.contains("reach"),
                        "{e}"
                    );
                    refused.push(e);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no apply goes through: {refused:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(acknowledged.len(), 45);
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "each apply got a later revision: {revisions:?}"
    );
    let last = *revisions.last().unwrap();
    // The killed replica comes back from its data directory and catches up.
    r.restart(killed.unwrap());
    let digests = r.converged(last).await;
    assert!(digests.len() >= 3, "{digests:?}");
    // Every acknowledged object is in the final state (the leader says "unchanged" for each),
    // and every replica serves the same versions and digests (checked by `converged`).
    let leader = r.leader().await;
    for i in &acknowledged {
        assert_eq!(
            r.dry_run(leader, &pod(*i)).await,
            vec!["unchanged"],
            "pod {i}"
        );
    }
    for id in r.alive() {
        let v = r.replicas(id).await.unwrap();
        let me = v["replicas"][0].clone();
        assert_eq!(me["id"], id);
        assert!(me["applied"].as_u64().unwrap() >= last, "{v}");
        assert_eq!(v["replicas"].as_array().unwrap().len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_never_go_back_when_every_replica_restarts_at_once() {
    let mut r = Replicas::start(3, false);
    let leader = r.leader().await;
    r.apply(leader, SHOP, false).await.unwrap();
    let before = r.apply(leader, &pod(1), false).await.unwrap();
    let digests = r.converged(before).await;
    for id in r.alive() {
        r.kill(id);
    }
    for id in 1..=3 {
        r.restart(id);
    }
    let leader = r.leader().await;
    // Nothing committed is lost, and a new change lands after every earlier revision.
    assert_eq!(r.dry_run(leader, &pod(1)).await, vec!["unchanged"]);
    let after = r.apply(leader, &pod(2), false).await.unwrap();
    assert!(after > before, "{after} > {before}");
    let now = r.converged(after).await;
    assert_ne!(now.get("n3"), digests.get("n3"), "pod 2 is on n3");
    assert!(now.values().all(|(v, _)| *v <= after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_replica_certificates_speak_raft_and_only_as_themselves() {
    let r = Replicas::start(3, false);
    let leader = r.leader().await;
    let target = if leader == 1 { 2 } else { 1 };
    let certs = r.path("certs");
    let read = |f: &str| std::fs::read(certs.join(f)).unwrap();
    let step_as = |cert: &str, key: &str, from: u64, group: &str| {
        let group = group.to_string();
        let tls = ClientTls {
            ca: read("ca.pem"),
            cert: read(cert),
            key: read(key),
            domain: None,
        };
        let addr = r.addr(target);
        async move {
            let ep = endpoint::endpoint(
                &addr,
                Some(&tls),
                endpoint::Options {
                    connect_timeout: Duration::from_secs(2),
                    keepalive: None,
                },
            )
            .unwrap();
            let mut c = RaftClient::new(ep.connect().await.unwrap());
            c.step(RaftBatch {
                from,
                to: target,
                messages: vec![],
                group,
            })
            .await
        }
    };
    for (cert, key) in [
        ("node-n1.pem", "node-n1-key.pem"),
        ("operator-admin.pem", "operator-admin-key.pem"),
    ] {
        let err = step_as(cert, key, 3, "").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{cert}: {err}");
    }
    // A replica cannot speak for another.
    let other = (1..=3).find(|i| *i != target && *i != 3).unwrap();
    let err = step_as(
        &format!("replica-{other}.pem"),
        &format!("replica-{other}-key.pem"),
        3,
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("replica 3"), "{err}");
    // As itself but from another group (a directory of elsewhere, or a group bootstrapped
    // again), it is refused.
    let err = step_as(
        &format!("replica-{other}.pem"),
        &format!("replica-{other}-key.pem"),
        other,
        "0123456789abcdef0123456789abcdef",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("another group"), "{err}");
    // And as itself it is heard.
    step_as(
        &format!("replica-{other}.pem"),
        &format!("replica-{other}-key.pem"),
        other,
        "",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_source_runs_on_the_leader_and_a_new_leader_reconciles() {
    let mut r = Replicas::start(3, true);
    r.write_everywhere("shop.yaml", SHOP);
    r.write_everywhere(
        "pods.yaml",
        &(0..6).map(pod).collect::<Vec<_>>().join("---\n"),
    );
    let leader = r.leader().await;
    // The leader reads its directory; followers watch nothing.
    let deadline = Instant::now() + WAIT;
    let revision = loop {
        if let Some((rev, nodes)) = r.digests(leader).await {
            if nodes.len() == 3 {
                break rev;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the leader never read its manifests"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let digests = r.converged(revision).await;
    for id in r.alive().into_iter().filter(|i| *i != leader) {
        assert!(
            !r.log(id).contains("manifests changed"),
            "follower {id} proposed:\n{}",
            r.log(id)
        );
    }
    // The same objects from `palisadectl apply` are refused: the directory owns them.
    let err = r.apply(leader, &pod(0), false).await.unwrap_err();
    assert!(err.contains("managed by manifests"), "{err}");

    // A new leader reconciles its (identical) directory against the replicated state and
    // proposes nothing: the log grows only by its empty entry.
    r.kill(leader);
    let next = r.leader().await;
    let (after, _) = r.digests(next).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while !r.log(next).contains("reconciled with the replicated state") {
        assert!(Instant::now() < deadline, "the new leader never reconciled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        r.log(next)
            .contains("reconciled with the replicated state: nothing differs"),
        "{}",
        r.log(next)
    );
    let settled = r.converged(after).await;
    assert_eq!(settled, digests, "no slice changed");
    let (now, _) = r.digests(next).await.unwrap();
    assert!(
        now <= revision + 3,
        "{now} vs {revision}: only election entries"
    );
    assert!(
        !r.log(next).contains("manifests changed"),
        "the new leader replayed:\n{}",
        r.log(next)
    );
    // It runs the source from now on: an edit in its directory becomes a revision.
    r.write_everywhere("more.yaml", &pod(7));
    let deadline = Instant::now() + WAIT;
    loop {
        if r.digests(next).await.is_some_and(|(rev, _)| rev > now) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader never read the edit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Open a Sync stream to replica `id` as node n1, saying it holds `version`; the first
/// answer (a message, or the refusal).
async fn hello(r: &Replicas, id: u64, version: u64) -> Result<(), tonic::Status> {
    hello_at(&r.addr(id), &r.path("certs"), version).await
}

async fn hello_at(addr: &str, certs: &std::path::Path, version: u64) -> Result<(), tonic::Status> {
    use palisade_proto::v1::{self as pb, agent_message::Msg};
    let read = |f: &str| std::fs::read(certs.join(f)).unwrap();
    let tls = ClientTls {
        ca: read("ca.pem"),
        cert: read("node-n1.pem"),
        key: read("node-n1-key.pem"),
        domain: None,
    };
    let ep = endpoint::endpoint(
        addr,
        Some(&tls),
        endpoint::Options {
            connect_timeout: Duration::from_secs(2),
            keepalive: None,
        },
    )
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            node: "n1".into(),
            last_version: version,
            last_digest: "ab".repeat(32),
            ..pb::Hello::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = pb::sync_client::SyncClient::new(ep.connect().await.unwrap())
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    inbound.message().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_never_moves_an_agent_back_to_older_state() {
    let r = Replicas::start(3, false);
    let leader = r.leader().await;
    let at = r.apply(leader, SHOP, false).await.unwrap();
    r.converged(at).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    // An agent holding a version this follower has not applied is refused (it keeps what it
    // holds and tries again), not sent the follower's older state.
    let err = hello(&r, follower, at + 100).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(
        err.message().contains("has applied revisions up to"),
        "{err}"
    );
    // One at or below what it applied is served.
    hello(&r, follower, at).await.unwrap();
    // One just ahead waits (parked) until the follower applies that far, then is served.
    let parked = tokio::spawn({
        let addr = r.addr(follower);
        let certs = r.path("certs");
        async move { hello_at(&addr, &certs, at + 1).await }
    });
    let deadline = Instant::now() + WAIT;
    while !r.log(follower).contains("waiting for it") {
        assert!(Instant::now() < deadline, "the stream was not parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!parked.is_finished(), "parked, not answered");
    let next = r.apply(leader, &pod(1), false).await.unwrap();
    assert!(next > at);
    parked.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_of_values_at_the_level_asked() {
    let r = Replicas::start_with(
        1,
        Options {
            args: vec![
                "--log-format".into(),
                "json".into(),
                "--log-level".into(),
                "debug".into(),
            ],
            ..Options::default()
        },
    );
    let leader = r.leader().await;
    let at = r.apply(leader, SHOP, false).await.unwrap();
    r.converged(at).await;
    hello(&r, leader, 0).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while !r.log(leader).contains("agent connected") {
        assert!(Instant::now() < deadline, "no agent connected line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = r.log(leader);
    let mut levels = std::collections::BTreeSet::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        levels.insert(v["level"].as_str().unwrap().to_string());
        // Values as people read them, not Rust's Debug (in Palisade's own lines: libraries'
        // debug lines are theirs).
        if !v["target"].as_str().unwrap_or("").starts_with("palisade") {
            continue;
        }
        for debug in ["Some(", "None", "Holds(", "Duration {", "Ok(", "Err("] {
            assert!(!line.contains(debug), "{debug} in: {line}");
        }
    }
    assert!(levels.contains("DEBUG"), "--log-level debug: {levels:?}");
    let connected = log.lines().find(|l| l.contains("agent connected")).unwrap();
    assert!(
        connected.contains("\"holds\":\"unknown") || connected.contains("\"holds\":\"version"),
        "{connected}"
    );
}
