//! Three replicas in one process (the real server, plaintext loopback), to keep one replica's
//! apply thread busy from the test: Raft's thread never waits on it, so a leader whose state
//! machine is busy (a long compile, a slow reader) keeps its leadership and the group keeps
//! committing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use palisade_controller::replication;
use palisade_controller::server::{self, Config, Running};
use palisade_policy::model::{Command, Namespace};
use tokio_util::sync::CancellationToken;

async fn group() -> (Vec<Running>, CancellationToken, tempfile::TempDir) {
    group_with(1 << 20).await
}

/// Three replicas whose proposals go into the log in entries of at most `entry_bytes`.
async fn group_with(entry_bytes: usize) -> (Vec<Running>, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        listeners.insert(
            id,
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
    }
    let peers: BTreeMap<u64, String> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
        .collect();
    let shutdown = CancellationToken::new();
    // Together: the first replica of a new group starts once every other answers.
    let starts = listeners.into_iter().map(|(id, l)| {
        let config = Config {
            state_dir: Some(dir.path().join(format!("r{id}"))),
            replication: replication::Config {
                id,
                peers: peers.clone(),
                tick: Duration::from_millis(50),
                bootstrap: true,
                entry_bytes,
                ..replication::Config::default()
            },
            ..Config::standalone()
        };
        server::start(config, l, None, shutdown.clone())
    });
    let running: Vec<_> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    (running, shutdown, dir)
}

/// The replica that leads, once one does (within 20 s).
async fn leader(running: &[Running]) -> &Running {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = running.iter().find(|r| r.group.status().is_leader()) {
            return r;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_apply_thread_is_busy_keeps_leading_and_committing() {
    let (running, shutdown, _dir) = group().await;
    let leader = leader(&running).await;
    let term = leader.group.status().raft.term;
    let follower = running
        .iter()
        .find(|r| r.group.id() != leader.group.id())
        .unwrap();
    let before = follower.hub.view().revision();
    // Keep the leader's apply thread busy for 2 s (a reader that takes long): 20 election
    // timeouts' worth of ticks at 50 ms.
    let hub = leader.hub.clone();
    let (inside_tx, inside) = tokio::sync::oneshot::channel();
    let held = std::thread::spawn(move || {
        hub.ask_blocking(|_| {
            let _ = inside_tx.send(());
            std::thread::sleep(Duration::from_secs(2))
        })
        .unwrap();
    });
    inside.await.unwrap();
    // A proposal meanwhile commits (the leader answers once it applies, after the lock).
    let group = leader.group.clone();
    let proposal = tokio::spawn(async move {
        group
            .propose(
                "test",
                vec![Command::UpsertNamespace(Namespace::implicit("busy"))],
            )
            .await
    });
    // Followers apply it while the leader's state machine is still locked.
    let mut w = follower.hub.revisions();
    tokio::time::timeout(Duration::from_millis(1500), w.wait_for(|r| *r > before))
        .await
        .expect("committed and applied on a follower while the leader's apply thread is busy")
        .unwrap();
    held.join().unwrap();
    let index = proposal.await.unwrap().unwrap().revision;
    assert!(index > before);
    let s = leader.group.status();
    assert!(s.is_leader(), "still the leader");
    assert_eq!(s.raft.term, term, "no election happened");
    shutdown.cancel();
    for r in running {
        r.wait().await.unwrap();
    }
}

/// Ownership is decided once, by the state machine, and its answer reaches the proposer:
/// every object another source holds is named, also when the proposal went into the log as
/// several entries (each entry's refusals are gathered into the one answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_is_told_what_the_state_machine_refused_of_all_its_entries() {
    let (running, shutdown, _dir) = group_with(256).await;
    let leader = leader(&running).await;
    let namespaces = |names: std::ops::Range<u32>| -> Vec<Command> {
        names
            .map(|i| Command::UpsertNamespace(Namespace::implicit(&format!("team-{i:03}"))))
            .collect()
    };
    let first = leader.group.propose("a", namespaces(0..40)).await.unwrap();
    assert!(first.refused.is_empty(), "{:?}", first.refused);
    // "b" names 20 of "a"'s namespaces among 60: spread over several entries of 256 bytes.
    let before = leader.hub.view().revision();
    let second = leader.group.propose("b", namespaces(20..80)).await.unwrap();
    assert!(
        second.revision > before + 1,
        "the proposal took several entries ({before} → {})",
        second.revision
    );
    let refused: Vec<(String, String)> = second
        .refused
        .iter()
        .map(|((kind, name), owner)| (format!("{kind}/{name}"), owner.clone()))
        .collect();
    let expected: Vec<(String, String)> = (20..40)
        .map(|i| (format!("Namespace/team-{i:03}"), "a".to_string()))
        .collect();
    assert_eq!(refused, expected);
    let owners = leader
        .hub
        .ask(|st| {
            (20..80)
                .map(|i| {
                    let key = (
                        palisade_policy::k8s::Kind::Namespace,
                        format!("team-{i:03}"),
                    );
                    st.machine().owner(&key).map(str::to_string)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    for (i, owner) in (20..80).zip(owners) {
        let expected = if i < 40 { "a" } else { "b" };
        assert_eq!(owner.as_deref(), Some(expected), "team-{i:03}");
    }
    shutdown.cancel();
    for r in running {
        r.wait().await.unwrap();
    }
}
