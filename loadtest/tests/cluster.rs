//! The scale and chaos scenario, small enough for CI: three replica processes of the real
//! controller (built beside this test by `cargo test --workspace`), a few hundred real
//! agents, churn with a leader kill; the checker must pass. And with a planted fault (one
//! replica skips one committed entry) the checker must fail.

use std::time::Duration;

use palisade_loadtest::cluster::feed::Source;
use palisade_loadtest::cluster::{self, churn::Mix, faults::FaultPlan, ClusterOptions};
use palisade_loadtest::replicas::beside_executable;
use palisade_loadtest::synth::Shape;

fn options(agents: usize, duration: Duration) -> ClusterOptions {
    ClusterOptions {
        shape: Shape {
            nodes: agents,
            pods: agents * 10,
            namespaces: agents / 2,
            policies: agents * 2,
            seed: 7,
        },
        source: Source::Store,
        replicas: 3,
        duration,
        rate: 10.0,
        mix: "pod-add=3,pod-delete=3,pod-label=2,policy-add=1,policy-delete=1,ns-label=1"
            .parse::<Mix>()
            .unwrap(),
        faults: FaultPlan {
            down_for: Duration::from_secs(3),
            partition_for: Duration::from_secs(3),
            agent_fraction: 0.1,
            ..FaultPlan::default()
        },
        plant_fault: false,
        settle: Duration::from_secs(120),
        plots: None,
        bin_dir: beside_executable(),
        controller_args: Vec::new(),
    }
}

fn progress(m: &str) {
    eprintln!("{m}");
}

/// The checker passed, some leader was killed, and after each kill a new leader came and
/// every agent streamed from a live replica again.
fn passed_through_leader_kills(r: &cluster::report::ClusterReport) {
    assert!(r.check.passed, "the checker failed");
    let kills: Vec<_> = r
        .faults
        .iter()
        .filter(|f| f.kind == cluster::faults::Kind::KillLeader)
        .collect();
    assert!(!kills.is_empty(), "no leader was killed");
    for k in &kills {
        assert!(k.new_leader_ms.is_some(), "no new leader after {k:?}");
        assert!(k.all_streaming_ms.is_some(), "agents stranded after {k:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cluster_survives_a_leader_kill_and_the_checker_passes() {
    let mut o = options(200, Duration::from_secs(30));
    o.faults.kill_leader_every = Some(Duration::from_secs(12));
    o.faults.restart_agents_every = Some(Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    o.plots = Some(dir.path().to_path_buf());
    let r = cluster::run(&o, &progress).await.unwrap();
    eprintln!("{}", cluster::report::table(&r));
    passed_through_leader_kills(&r);
    assert!(r.change_to_acked.changes > 100);
    assert_eq!(r.change_to_acked.never_acked, 0);
    // Every check looked at something.
    assert!(
        r.check.checks.iter().all(|c| c.checked > 0),
        "{:?}",
        r.check
    );
    assert_eq!(r.plots.len(), 5);
    for p in &r.plots {
        let svg = std::fs::read_to_string(p).unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_through_the_kubernetes_api_survives_a_leader_kill_and_the_checker_passes() {
    let mut o = options(100, Duration::from_secs(20));
    o.source = Source::Kubernetes;
    o.faults.kill_leader_every = Some(Duration::from_secs(8));
    let r = cluster::run(&o, &progress).await.unwrap();
    eprintln!("{}", cluster::report::table(&r));
    passed_through_leader_kills(&r);
    // Changes went through the API server and reached the agents.
    assert!(
        r.change_to_acked.changes > 50,
        "{}",
        r.change_to_acked.changes
    );
    assert_eq!(r.change_to_acked.never_acked, 0);
    assert!(
        r.check.checks.iter().all(|c| c.checked > 0),
        "{:?}",
        r.check
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_skips_a_committed_entry_fails_the_checker() {
    let mut o = options(40, Duration::from_secs(8));
    o.mix = "pod-add=1".parse().unwrap();
    o.plant_fault = true;
    // The faulty replica's agents never reach the final digests: do not wait long for
    // them (the checker reports them).
    o.settle = Duration::from_secs(10);
    let r = cluster::run(&o, &progress).await.unwrap();
    eprintln!("{}", cluster::report::table(&r));
    assert!(!r.check.passed, "the planted fault went unnoticed");
    let failed: Vec<&str> = r
        .check
        .checks
        .iter()
        .filter(|c| c.failures > 0)
        .map(|c| c.name)
        .collect();
    assert!(
        failed.contains(&"every replica's slices are a fresh compile's"),
        "{failed:?}"
    );
}
