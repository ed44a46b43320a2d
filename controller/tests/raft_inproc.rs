//! Three replicas in one process (the real server, plaintext loopback), to hold one replica's
//! hub lock from the test: Raft's thread never waits on it, so a leader whose state machine is
//! busy (a long compile, a slow reader) keeps its leadership and the group keeps committing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use palisade_controller::replication;
use palisade_controller::server::{self, Config, Running};
use palisade_policy::model::{Command, Namespace};
use tokio_util::sync::CancellationToken;

async fn group() -> (Vec<Running>, CancellationToken, tempfile::TempDir) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_state_machine_is_locked_keeps_leading_and_committing() {
    let (running, shutdown, _dir) = group().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(r) = running.iter().find(|r| r.group.status().is_leader()) {
            break r;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let term = leader.group.status().raft.term;
    let follower = running
        .iter()
        .find(|r| r.group.id() != leader.group.id())
        .unwrap();
    let before = follower.hub.read(|st| st.revision());
    // Hold the leader's hub lock for 2 s (a reader that takes long): 20 election timeouts'
    // worth of ticks at 50 ms.
    let hub = leader.hub.clone();
    let held = std::thread::spawn(move || {
        hub.read(|_| std::thread::sleep(Duration::from_secs(2)));
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
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
        .expect("committed and applied on a follower while the leader's hub is locked")
        .unwrap();
    held.join().unwrap();
    let index = proposal.await.unwrap().unwrap();
    assert!(index > before);
    let s = leader.group.status();
    assert!(s.is_leader(), "still the leader");
    assert_eq!(s.raft.term, term, "no election happened");
    shutdown.cancel();
    for r in running {
        r.wait().await.unwrap();
    }
}
