//! The multi-party scenarios, deterministic: replicas, agents and the network stepped by
//! ticks, so each runs in milliseconds and replays exactly.

use palisade_harness::schedule::{self, base, pod, NODES};
use palisade_harness::Cluster;
use palisade_policy::model::Name;

/// Three replicas with a leader, the base policy and a pod on each node applied, and every
/// agent holding its slice.
fn settled(seed: u64) -> Cluster {
    let mut c = Cluster::new(seed, 3, &NODES);
    assert!(c.run_until(500, |c| c.leader().is_some()), "a leader");
    let mut commands = base();
    for (i, node) in NODES.iter().enumerate() {
        commands.extend(pod(i as u64, true, node));
    }
    let index = c.propose(commands).expect("the leader takes it");
    assert!(c.settle_past(index, 500), "{}", c.describe());
    c
}

fn n(node: &str) -> Name {
    node.into()
}

#[test]
fn agents_resume_by_version_when_their_replica_fails() {
    let mut c = settled(1);
    let snapshots: Vec<u32> = c.agents.values().map(|a| a.snapshots).collect();
    assert!(
        snapshots.iter().all(|s| *s == 1),
        "each agent got its slice once: {snapshots:?}"
    );
    // Every agent's replica fails in turn (the leader among them), with changes meanwhile.
    for round in 0..3u64 {
        let at = c.agents[&n("n1")].at.expect("connected");
        c.crash(at);
        assert!(
            c.run_until(500, |c| c.leader().is_some()),
            "{}",
            c.describe()
        );
        let i = 10 + round;
        let index = c
            .propose(pod(i, true, NODES[round as usize]))
            .expect("the new leader takes it");
        assert!(c.settle_past(index, 500), "{}", c.describe());
        c.restart(at);
        assert!(c.settle_past(index, 500), "{}", c.describe());
    }
    for a in c.agents.values() {
        assert_eq!(
            a.snapshots, 1,
            "agent {} resumed by version, never by a whole slice again ({} updates)",
            a.node, a.updates
        );
    }
    assert!(
        c.ledger.divergences.is_empty(),
        "{:?}",
        c.ledger.divergences
    );
}

#[test]
fn an_agent_ahead_of_a_replica_is_sent_away_until_it_catches_up() {
    let mut c = settled(2);
    c.auto_connect = false;
    let leader = c.leader().expect("a leader");
    let behind = *c.ids.iter().find(|id| **id != leader).expect("a follower");
    c.isolate(behind);
    let index = c.propose(pod(20, true, "n1")).expect("the leader takes it");
    let n1 = n("n1");
    assert!(c.connect(&n1, leader));
    assert!(
        c.run_until(200, |c| c.agents[&n1].holds().0 == index),
        "{}",
        c.describe()
    );
    assert!(c.core(behind).unwrap().applied() < index);
    c.net.heal();
    // Before the cut replica has caught up, it sends the agent away: served from its older
    // state, the agent would move back.
    assert!(!c.connect(&n1, behind), "{}", c.describe());
    assert!(c.run_until(200, |c| c.core(behind).unwrap().applied() >= index));
    assert!(c.connect(&n1, behind));
    for node in NODES.iter().skip(1) {
        c.connect(&n(node), leader);
    }
    assert!(c.settle_past(index, 200), "{}", c.describe());
    assert!(
        c.ledger.divergences.is_empty(),
        "{:?}",
        c.ledger.divergences
    );
}

#[test]
fn acks_taken_on_one_replica_are_realized_on_every_replica_through_the_tables() {
    let mut c = settled(3);
    c.auto_connect = false;
    let leader = c.leader().expect("a leader");
    let other = *c.ids.iter().find(|id| **id != leader).expect("a follower");
    for node in NODES {
        c.connect(&n(node), other);
    }
    let index = c.propose(pod(30, true, "n2")).expect("the leader takes it");
    // The leader serves no agent: it knows they hold the change from the other's table.
    assert!(c.settle_past(index, 200), "{}", c.describe());
    assert_eq!(c.core(leader).unwrap().realized(), index);
    // Without the tables, it would not know.
    c.exchange_every = u64::MAX;
    let index = c.propose(pod(31, true, "n2")).expect("the leader takes it");
    assert!(
        c.run_until(200, |c| c.core(other).unwrap().realized() == index),
        "{}",
        c.describe()
    );
    assert!(
        c.core(leader).unwrap().realized() < index,
        "{}",
        c.describe()
    );
}

#[test]
fn a_seed_replays_the_same_run() {
    let run = |seed| {
        let out = schedule::run(seed, 300).expect("the run converges");
        format!("{out:?}")
    };
    for seed in [7, 8] {
        assert_eq!(run(seed), run(seed));
    }
}
