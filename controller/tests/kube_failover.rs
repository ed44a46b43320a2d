//! The Kubernetes source follows the Raft leader: three replica processes of the real binary
//! given the same kubeconfig (an API server emulated over HTTP in this process); only the
//! leader lists and watches; when it is SIGKILLed, the new leader lists again and reconciles
//! against the replicated state: what was deleted meanwhile is deleted, what was added is
//! added, what is unchanged proposes nothing, and every replica serves what a fresh compile of
//! the API server's objects gives.

#[path = "support/replicas.rs"]
mod replicas;

#[path = "kubernetes/objects.rs"]
mod objects;

use std::time::{Duration, Instant};

use palisade_kube_emulator::{Emulator, Resource};
use replicas::{Options, Replicas, WAIT};

/// What a fresh compile of the emulator's objects gives node `node`, as a hex digest.
fn fresh_digest(e: &Emulator, node: &str) -> String {
    let text: Vec<String> = Resource::ALL
        .iter()
        .flat_map(|r| e.objects(*r))
        .map(|o| serde_json::to_string(&o).unwrap())
        .collect();
    let loaded =
        palisadectl::load::parse_sources(&[("api.yaml".into(), text.join("\n---\n"))], "default");
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.engine().slice(node).digest().to_hex()
}

/// Wait until every live replica serves `want` for n1.
async fn serving(r: &Replicas, want: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut revisions = Vec::new();
        for id in r.alive() {
            match r.digests(id).await {
                Some((rev, nodes)) if nodes.get("n1").is_some_and(|(_, d)| d == want) => {
                    revisions.push(rev)
                }
                _ => break,
            }
        }
        if revisions.len() == r.alive().len() {
            return revisions.into_iter().max().unwrap_or(0);
        }
        assert!(
            Instant::now() < deadline,
            "replicas do not serve {want} for n1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lists(e: &Emulator) -> usize {
    e.requests()
        .iter()
        .filter(|q| !q.contains("watch=true"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_moves_the_watch_and_reconciles() {
    let e = Emulator::start(Default::default()).await.unwrap();
    objects::seed(&e);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    e.write_kubeconfig(&kubeconfig).unwrap();
    let mut r = Replicas::start_with(
        3,
        Options {
            kubeconfig: Some(kubeconfig),
            ..Options::default()
        },
    );
    let leader = r.leader().await;
    let synced = serving(&r, &fresh_digest(&e, "n1")).await;
    // Only the leader listed: one list per kind.
    assert_eq!(lists(&e), 3, "{:?}", e.requests());
    let status = r.replicas(leader).await.unwrap();
    let watches = status["replicas"][0]["watches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(watches.len(), 3, "the leader shows its watches: {status}");
    for id in r.alive().into_iter().filter(|id| *id != leader) {
        let s = r.replicas(id).await.unwrap();
        assert!(
            s["replicas"][0]["watches"]
                .as_array()
                .is_none_or(|w| w.is_empty()),
            "a follower watches nothing: {s}"
        );
    }

    // The leader dies; meanwhile a pod goes, a policy comes.
    r.kill(leader);
    e.delete(Resource::Pods, "bank/db");
    e.apply(
        Resource::NetworkPolicies,
        objects::allow("shop", "client", "client", "web", 80),
    );
    let next = r.leader().await;
    assert_ne!(next, leader);
    let after = serving(&r, &fresh_digest(&e, "n1")).await;
    assert!(after > synced);
    assert_eq!(lists(&e), 6, "the new leader listed every kind once");
    // Unchanged objects proposed nothing: the new leader's own (empty) entry, then one batch
    // with the two differences.
    assert_eq!(after, synced + 2, "one revision for what differed");
    let logs = r.log(next);
    assert!(
        logs.contains("deleted=1") && logs.contains("changed=1"),
        "the new leader says what it compared:\n{logs}"
    );
    // And the killed replica, restarted, follows without watching.
    r.restart(leader);
    serving(&r, &fresh_digest(&e, "n1")).await;
    assert_eq!(lists(&e), 6, "a follower does not list");
}
