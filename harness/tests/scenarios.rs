//! The multi-party scenarios, deterministic: replicas, agents and the network stepped by
//! ticks, so each runs in milliseconds and replays exactly.

use palisade_controller::rebalance::excess;
use palisade_harness::schedule::{self, base, pod, NODES};
use palisade_harness::{feed, Cluster};
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

/// The leader, and a replica that follows it.
fn leader_and_follower(c: &Cluster) -> (u64, u64) {
    let leader = c.leader().expect("a leader");
    let follower = *c.ids.iter().find(|id| **id != leader).expect("a follower");
    (leader, follower)
}

/// Every agent's stream to replica `id` (each must be taken).
fn connect_all(c: &mut Cluster, id: u64) {
    for node in NODES {
        assert!(c.connect(&n(node), id), "{}", c.describe());
    }
}

/// Every agent got its slice whole once and moved by version after, and no replica diverged.
fn moved_by_version_without_divergence(c: &Cluster) {
    for a in c.agents.values() {
        assert_eq!(a.snapshots, 1, "agent {} moved by version", a.node);
    }
    no_divergence(c);
}

/// No replica or agent diverged in the run.
fn no_divergence(c: &Cluster) {
    assert!(
        c.ledger.divergences.is_empty(),
        "{:?}",
        c.ledger.divergences
    );
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
    no_divergence(&c);
}

#[test]
fn an_agent_ahead_of_a_replica_is_sent_away_until_it_catches_up() {
    let mut c = settled(2);
    c.auto_connect = false;
    let (leader, behind) = leader_and_follower(&c);
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
    no_divergence(&c);
}

#[test]
fn acks_taken_on_one_replica_are_realized_on_every_replica_through_the_tables() {
    let mut c = settled(3);
    c.auto_connect = false;
    let (leader, other) = leader_and_follower(&c);
    connect_all(&mut c, other);
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
fn a_replica_cut_from_its_group_sends_its_agents_away_and_serves_again_once_healed() {
    let mut c = settled(4);
    c.auto_connect = false;
    let (_, cut) = leader_and_follower(&c);
    connect_all(&mut c, cut);
    c.auto_connect = true;
    // Cut from its peers, reachable by agents: after the grace it refuses them, and every
    // agent moves to a replica that has a leader.
    c.cut_from_peers(cut);
    assert!(
        c.run_until(200, |c| c.core(cut).unwrap().refusing().is_some()
            && c.agents.values().all(|a| a.at.is_some_and(|at| at != cut))),
        "{}",
        c.describe()
    );
    // What the group commits meanwhile reaches them there, by version.
    let index = c.propose(pod(40, true, "n1")).expect("the leader takes it");
    let n1 = n("n1");
    assert!(
        c.run_until(300, |c| c.agents[&n1].holds().0 == index),
        "{}",
        c.describe()
    );
    // Healed: it has a leader again and serves agents again.
    c.net.heal();
    assert!(
        c.run_until(300, |c| c.core(cut).unwrap().refusing().is_none()),
        "{}",
        c.describe()
    );
    assert!(c.settle_past(index, 300), "{}", c.describe());
    moved_by_version_without_divergence(&c);
}

#[test]
fn a_crowded_replica_sends_agents_to_its_peers_until_they_are_in_balance() {
    let nodes: Vec<String> = (0..45).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let mut c = Cluster::new(5, 3, &names);
    c.auto_connect = false;
    assert!(c.run_until(500, |c| c.leader().is_some()), "a leader");
    let mut commands = base();
    for (i, node) in names.iter().enumerate() {
        commands.extend(pod(i as u64, true, node));
    }
    let index = c.propose(commands).expect("the leader takes it");
    // Every agent on one replica (as after two failures).
    let crowded = c.leader().expect("a leader");
    for node in &names {
        assert!(c.connect(&n(node), crowded), "{}", c.describe());
    }
    assert!(c.settle_past(index, 500), "{}", c.describe());
    c.auto_connect = true;
    let on = |c: &Cluster, id: u64| c.agents.values().filter(|a| a.at == Some(id)).count();
    let balanced = |c: &Cluster| {
        let peers: Vec<usize> = c
            .ids
            .iter()
            .filter(|i| **i != crowded)
            .map(|i| on(c, *i))
            .collect();
        c.agents.values().all(|a| a.at.is_some())
            && peers.iter().all(|p| *p > 0)
            && excess(on(c, crowded), &peers) == 0
    };
    assert!(c.run_until(1000, balanced), "{}", c.describe());
    assert!(c.settle_past(index, 300), "{}", c.describe());
    moved_by_version_without_divergence(&c);
}

#[test]
fn only_the_leader_ingests_and_a_new_leader_reconciles_what_changed_meanwhile() {
    let mut c = Cluster::new(6, 3, &NODES);
    assert!(c.run_until(500, |c| c.leader().is_some()), "a leader");
    let read = |pods: &[(u64, &str)]| {
        let mut commands = base();
        for (i, node) in pods {
            commands.extend(pod(*i, true, node));
        }
        feed::desired(commands)
    };
    // Every replica's source reads the same; only the leader's proposes it.
    let want = read(&[(0, "n1"), (1, "n2"), (2, "n3")]);
    c.feed = Some(want.clone());
    let holds = |c: &Cluster, want: &feed::Desired| {
        c.live()
            .iter()
            .all(|id| c.core(*id).unwrap().state().machine().owned_by(feed::OWNER) == *want)
    };
    assert!(c.run_until(500, |c| holds(c, &want)), "{}", c.describe());
    let leader = c.leader().expect("a leader");
    for id in c.live() {
        let proposals = c.core(id).unwrap().feed.proposals;
        assert_eq!(
            proposals > 0,
            id == leader,
            "replica {id}: {proposals} proposals"
        );
    }
    // The leader fails, and what the source reads changes meanwhile (a pod goes, another
    // comes): the next leader reconciles the replicated state with it.
    c.crash(leader);
    let changed = read(&[(1, "n2"), (2, "n3"), (50, "n1")]);
    c.feed = Some(changed.clone());
    assert!(
        c.run_until(500, |c| c.leader().is_some_and(|l| l != leader)
            && holds(c, &changed)),
        "{}",
        c.describe()
    );
    let next = c.leader().expect("a leader");
    assert!(c.core(next).unwrap().feed.proposals > 0, "it reconciled");
    // The old leader comes back a follower: it catches up and proposes nothing.
    c.restart(leader);
    assert!(
        c.run_until(500, |c| holds(c, &changed) && c.converged()),
        "{}",
        c.describe()
    );
    assert_eq!(c.core(leader).unwrap().feed.proposals, 0);
    no_divergence(&c);
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
