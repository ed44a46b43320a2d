//! A replica never takes part with a directory that lost its state (real replica processes).
//!
//! Before directories recorded their group, a replica whose state directory was deleted
//! started again under its old id with no log and no memory of its votes: in the sequence
//! below an acknowledged apply ended on one replica only and the replicas served different
//! digests at one revision for good.

#[path = "support/replicas.rs"]
mod replicas;

use std::time::{Duration, Instant};

use replicas::{pod, Replicas, SHOP, WAIT};

/// The followers of `leader` among 1..=3.
fn followers(leader: u64) -> (u64, u64) {
    let f: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    (f[0], f[1])
}

/// Apply through the leader of `r`, retrying while it is being elected: the revision.
async fn apply(r: &Replicas, text: &str) -> u64 {
    r.apply_to_leader(text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_directory_never_takes_part_again() {
    let mut r = Replicas::start(3, false);
    let leader = r.leader().await;
    apply(&r, SHOP).await;
    let (acking, down) = followers(leader);
    // One follower down; an apply acknowledged by the leader and the other follower.
    r.kill(down);
    let acknowledged = apply(&r, &pod(1)).await;
    // The leader and that follower killed; the follower's directory lost; it comes back
    // (asked to --bootstrap, as a StatefulSet would always ask) with the one that was down.
    r.kill(leader);
    r.kill(acking);
    r.wipe(acking);
    r.restart(acking);
    r.restart(down);
    // It can take part only by the group's consent: either its peers tell it at once that
    // it took part before, or it waits for the replica that created the group.
    let deadline = Instant::now() + WAIT;
    while r.running(acking) && !r.log(acking).contains("bootstrap: ") {
        assert!(Instant::now() < deadline, "{}", r.log(acking));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if r.running(acking) {
        // Once the replica that was down answers: it has no leader (no quorum without the
        // replica that waits).
        let answer = loop {
            if let Some(v) = r.replicas(down).await {
                break v;
            }
            assert!(Instant::now() < deadline, "{}", r.log(down));
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(answer["leader"], 0, "{answer}");
    }
    r.restart(leader);
    let status = r.exited(acking).await;
    assert!(!status.success());
    let log = r.log(acking);
    assert!(
        log.contains("already took part") && log.contains("lost that state"),
        "{log}"
    );
    // The group goes on with the two others, and the acknowledged apply is there.
    let new_leader = r.leader_among(&[leader, down]).await;
    assert_eq!(r.dry_run(new_leader, &pod(1)).await, vec!["unchanged"]);
    let after = apply(&r, &pod(2)).await;
    assert!(after > acknowledged);
    r.converged_among(&[leader, down], after).await;

    // Without --bootstrap too: the group counts it as a voter that lost its state.
    r.wipe(acking);
    let before = r.log(acking).len();
    r.restart_without_bootstrap(acking);
    assert!(!r.exited(acking).await.success());
    let log = r.log(acking)[before..].to_string();
    assert!(
        log.contains("already took part") && log.contains("new id"),
        "{log}"
    );
    // With nobody to ask, a blank directory is refused at once, naming what to do.
    for id in r.alive() {
        r.kill(id);
    }
    let before = r.log(acking).len();
    r.restart_without_bootstrap(acking);
    assert!(!r.exited(acking).await.success());
    let log = r.log(acking)[before..].to_string();
    assert!(
        log.contains("holds no group") && log.contains("--bootstrap"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_group_is_refused_by_its_peers() {
    let mut r = Replicas::start(3, false);
    let leader = r.leader().await;
    apply(&r, SHOP).await;
    let (f, _) = followers(leader);
    // Replica f's directory is replaced by one of a group of one (another group, same id).
    r.kill(f);
    r.wipe(f);
    let other = r.path(&format!("state-{f}"));
    let log_path = r.path("alone.log");
    let mut alone = std::process::Command::new(env!("CARGO_BIN_EXE_palisade-controller"))
        .args([
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--id")
        .arg(f.to_string())
        .arg("--state-dir")
        .arg(&other)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("created a new group of one")
    {
        assert!(Instant::now() < deadline, "the group of one never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alone.kill().unwrap();
    alone.wait().unwrap();
    // Back among its old peers with that directory: it holds a group, so it starts, but
    // every peer refuses its messages, and it is refused as a directory of a group of one.
    r.restart(f);
    let status = r.exited(f).await;
    assert!(!status.success());
    let log = r.log(f);
    assert!(log.contains("belongs to group"), "{log}");
    let l = r.leader().await;
    apply(&r, &pod(3)).await;
    assert_eq!(r.dry_run(l, &pod(3)).await, vec!["unchanged"]);
}

/// A seeded random schedule of SIGKILLs, restarts in random order, one lost directory and
/// applies throughout (`PALISADE_CRASH_SEED` replays one): every acknowledged apply is on
/// every replica that serves, and no two replicas ever serve different digests at one
/// revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_crash_schedule_never_loses_an_acknowledged_apply() {
    let seed = std::env::var("PALISADE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (PALISADE_CRASH_SEED={seed} replays this schedule)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut r = Replicas::start(3, false);
    r.leader().await;
    apply(&r, SHOP).await;
    let mut acknowledged = Vec::new();
    let mut seen: std::collections::BTreeMap<u64, (u64, _)> = Default::default();
    let mut lost: Option<u64> = None;
    let mut dead: Vec<u64> = Vec::new();
    let mut schedule = Vec::new();
    for step in 0..40usize {
        let serving: Vec<u64> = r.alive().into_iter().filter(|i| Some(*i) != lost).collect();
        let roll = rng.u8(..100);
        if roll < 50 && !serving.is_empty() {
            let via = serving[rng.usize(..serving.len())];
            let text = pod(100 + step);
            let call = r.apply(via, &text, false);
            match tokio::time::timeout(Duration::from_secs(10), call).await {
                Ok(Ok(rev)) => {
                    acknowledged.push((100 + step, rev));
                    schedule.push(format!("apply p{} via {via}: {rev}", 100 + step));
                }
                other => schedule.push(format!("apply p{} via {via}: {other:?}", 100 + step)),
            }
        } else if roll < 70 && !serving.is_empty() {
            let victim = serving[rng.usize(..serving.len())];
            r.kill(victim);
            dead.push(victim);
            schedule.push(format!("kill {victim}"));
        } else if !dead.is_empty() {
            let back = dead.remove(rng.usize(..dead.len()));
            if roll >= 90 && lost.is_none() {
                r.wipe(back);
                lost = Some(back);
                schedule.push(format!("wipe {back}, restart it"));
            } else {
                schedule.push(format!("restart {back}"));
            }
            r.restart(back);
        }
        // Often, let the group elect before the next step (bounded: it may lack a quorum).
        if rng.bool() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                let mut leaders = Vec::new();
                for id in r.alive() {
                    if let Some(v) = r.replicas(id).await {
                        leaders.push(v["leader"].as_u64().unwrap_or(0));
                    }
                }
                if leaders
                    .first()
                    .is_some_and(|l| *l != 0 && leaders.iter().all(|x| x == l))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // No two replicas at one revision with different digests.
        for id in r.alive() {
            if let Some((rev, nodes)) = r.digests(id).await {
                if let Some((other, theirs)) = seen.get(&rev) {
                    assert_eq!(
                        theirs, &nodes,
                        "replicas {id} and {other} differ at revision {rev} (seed {seed}): {schedule:?}"
                    );
                } else {
                    seen.insert(rev, (id, nodes));
                }
            }
        }
    }
    // Everyone but the lost replica back; the group takes a last change.
    for id in dead {
        r.restart(id);
    }
    let serving: Vec<u64> = (1..=3).filter(|i| Some(*i) != lost).collect();
    let last = apply(&r, &pod(99)).await;
    let leader = r.leader_among(&serving).await;
    r.converged_among(&serving, last).await;
    for (i, rev) in &acknowledged {
        assert_eq!(
            r.dry_run(leader, &pod(*i)).await,
            vec!["unchanged"],
            "p{i} (acknowledged at {rev}) is lost (seed {seed}): {schedule:?}"
        );
    }
    // The lost replica never took part again: it was refused, or waits for the replica
    // that created the group, which refuses it once it answers.
    if let Some(l) = lost {
        let status = r.exited(l).await;
        assert!(!status.success(), "seed {seed}: {schedule:?}");
        assert!(r.log(l).contains("already took part"), "{}", r.log(l));
    }
    println!(
        "seed {seed}: {} applies acknowledged; {schedule:?}",
        acknowledged.len()
    );
}
