//! Membership changes with real replica processes: a replica whose disk was lost is replaced
//! under a new id (`palisadectl replicas replace`), the new one joins as a learner, catches
//! up and is promoted, and then counts in the quorum; a removed id is never used again; the
//! leader removed hands leadership over first.

#[path = "support/replicas.rs"]
mod replicas;

use std::time::{Duration, Instant};

use palisadectl::members::{self, NewReplica};
use replicas::{pod, Replicas, SHOP, WAIT};
use serde_json::Value;

/// Apply through the leader of `r`, retrying while it is being elected: the revision.
async fn apply(r: &Replicas, text: &str) -> u64 {
    r.apply_to_leader(text).await
}

/// Replica `id`'s row in `palisadectl replicas` as `from` answers it.
async fn row(r: &Replicas, from: u64, id: u64) -> Option<Value> {
    let v = r.replicas(from).await?;
    v["replicas"]
        .as_array()?
        .iter()
        .find(|x| x["id"].as_u64() == Some(id))
        .cloned()
}

/// Wait until `leader` reports replica `id` as a voter (a follower, no longer a learner).
async fn until_voter(r: &Replicas, leader: u64, id: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = row(r, leader, id).await;
        if seen.as_ref().is_some_and(|v| v["role"] == "follower") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {id} never became a voter: {seen:?}\n{}",
            r.log(id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replica_is_replaced_under_a_new_id_and_the_new_one_counts() {
    let mut r = Replicas::start(3, false);
    let leader = r.leader().await;
    apply(&r, SHOP).await;
    for i in 0..5 {
        apply(&r, &pod(i)).await;
    }
    let lost = (1..=3).find(|i| *i != leader).unwrap();
    let other = (1..=3).find(|i| *i != leader && *i != lost).unwrap();
    // Its disk is lost.
    r.kill(lost);
    r.wipe(lost);
    // The same id again is refused (by the operator's tool, before anything is sent).
    let address = r.reserve(4);
    let new = NewReplica {
        id: 4,
        address: address.clone(),
    };
    let same = NewReplica {
        id: lost,
        address: address.clone(),
    };
    let err = members::replace(&r.conn(leader), lost, &same)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("new id"), "{err}");
    let out = members::replace(&r.conn(other), lost, &new)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.log(leader)));
    assert!(
        out.contains(&format!("replica {lost} removed"))
            && out.contains("replica 4 added as a learner"),
        "{out}"
    );
    // Run again after it went through: neither half is an error the second time.
    let again = members::replace(&r.conn(leader), lost, &new).await.unwrap();
    assert!(
        again.contains("removed already") && again.contains("added already"),
        "{again}"
    );
    // The removed id is never used again.
    let back = members::add(
        &r.conn(leader),
        &NewReplica {
            id: lost,
            address: r.addr(lost),
        },
    )
    .await
    .unwrap_err();
    assert!(back.to_string().contains("never comes back"), "{back}");
    // Started again on its blank directory, it is refused: the group does not count it.
    r.restart_without_bootstrap(lost);
    assert!(!r.exited(lost).await.success());
    let log = r.log(lost);
    assert!(log.contains("does not count replica"), "{log}");
    r.forget(lost);
    // The new replica joins from a blank directory, without --bootstrap; killed as soon as
    // it has joined (it may not have applied its own addition yet), it starts again.
    r.join(4);
    let deadline = Instant::now() + WAIT;
    while !r.log(4).contains("joined the group as a learner") {
        assert!(Instant::now() < deadline, "{}", r.log(4));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.kill(4);
    r.restart_without_bootstrap(4);
    until_voter(&r, leader, 4).await;
    let log = r.log(4);
    assert!(log.contains("joined the group as a learner"), "{log}");
    let revision = apply(&r, &pod(10)).await;
    r.converged_among(&[leader, other, 4], revision).await;
    // 4 counts in the quorum: with `other` down, the leader and 4 still commit.
    r.kill(other);
    let revision = apply(&r, &pod(11)).await;
    r.converged_among(&[leader, 4], revision).await;
    r.restart(other);
    r.converged_among(&[leader, other, 4], revision).await;
    // The leader removed: it hands leadership over first, then leaves.
    let out = members::remove(&r.conn(leader), leader)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.log(leader)));
    assert!(out.contains(&format!("replica {leader} removed")), "{out}");
    let next = r.leader_among(&[other, 4]).await;
    assert_ne!(next, leader);
    let deadline = Instant::now() + WAIT;
    while !r.log(leader).contains("was removed from the group") {
        assert!(Instant::now() < deadline, "{}", r.log(leader));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let revision = r.apply(next, &pod(12), false).await.unwrap();
    r.converged_among(&[other, 4], revision).await;
    // Failed (removed), it still answers, saying so; and SIGTERM stops it promptly.
    let got = palisadectl::get::get(
        &r.conn(leader),
        "pod",
        &["shop/p0".into()],
        "shop",
        Default::default(),
        palisadectl::output::Output::Json,
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&got.text).unwrap();
    assert_eq!(v["freshness"]["current"], false, "{v}");
    assert!(
        v["freshness"]["reason"]
            .as_str()
            .unwrap()
            .contains("has failed"),
        "{v}"
    );
    r.terminate(leader);
    let asked = Instant::now();
    r.exited(leader).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "a failed replica took {:?} to stop on SIGTERM",
        asked.elapsed()
    );
}

/// The StatefulSet's way (deploy/replace-replica.sh): the pod whose volume was lost keeps its
/// address and its arguments (`--ordinal`, the same `--peers`, `--bootstrap`), and runs the
/// new id read from `--id-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_volume_was_lost_runs_a_new_replica_in_its_place() {
    let mut r = Replicas::start(3, false);
    let leader = r.leader().await;
    apply(&r, SHOP).await;
    let lost = (1..=3).find(|i| *i != leader).unwrap();
    r.kill(lost);
    r.wipe(lost);
    // As the StatefulSet restarts it: refused, it lost what it took part with.
    r.restart(lost);
    assert!(!r.exited(lost).await.success());
    assert!(r.log(lost).contains("already took part"), "{}", r.log(lost));
    r.mint(4);
    let out = members::replace(
        &r.conn(leader),
        lost,
        &NewReplica {
            id: 4,
            address: r.addr(lost),
        },
    )
    .await
    .unwrap();
    assert!(out.contains("replica 4 added as a learner"), "{out}");
    r.join_in_slot(4, lost);
    until_voter(&r, leader, 4).await;
    let revision = apply(&r, &pod(1)).await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != lost).collect();
    r.converged_among(&[others[0], others[1], 4], revision)
        .await;
}
