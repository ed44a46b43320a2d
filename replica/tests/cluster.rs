//! Replicas in a deterministic in-process cluster (tests/support/cluster.rs): elections,
//! leader loss, partitions, restarts from the data directory, snapshots for lagging replicas;
//! every replica at the same index holds the same versions and digests.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{pods, Cluster};
use palisade_replica::{Event, Options, ProposeError};

fn options() -> Options {
    Options {
        snapshot_every: 1_000,
        ..Options::default()
    }
}

#[test]
fn one_leader_is_elected_and_every_replica_applies_the_same_at_the_same_index() {
    let mut c = Cluster::new(3, options());
    let leader = c.elect();
    for id in &c.ids.clone() {
        assert_eq!(c.replica(*id).status().leader, leader);
    }
    let p = c.propose(leader, pods(0, 12)).unwrap();
    assert_eq!(p.replica, leader);
    c.propose(leader, pods(12, 6)).unwrap();
    assert!(c.run_until(50, Cluster::converged));
    // Every replica at the same index holds the same (version, digest) per node: what lets
    // replicas merge their agents' acks per node by highest version (controller `acks`).
    let digests = c.digests(1);
    assert!(digests.len() >= 3, "{digests:?}");
    assert!(digests.values().any(|(v, _)| *v > 0));
    // The proposal was applied at one index, the same everywhere, as one revision.
    for id in c.ids.clone() {
        let applied: Vec<u64> = c.events[&id]
            .iter()
            .filter_map(|e| match e {
                Event::Committed {
                    index,
                    batch: Some(b),
                    ..
                } if b.id == p => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(applied.len(), 1, "replica {id}");
    }
    // A follower takes no proposals and names the leader.
    let follower = c.ids.iter().copied().find(|i| *i != leader).unwrap();
    assert_eq!(
        c.propose(follower, pods(100, 1)),
        Err(ProposeError::NotLeader {
            leader: Some(leader)
        })
    );
    assert!(c.revisions_never_went_back());
}

#[test]
fn a_lost_leader_is_replaced_and_rejoins_without_losing_anything() {
    let mut c = Cluster::new(3, options());
    let first = c.elect();
    c.propose(first, pods(0, 10)).unwrap();
    assert!(c.run_until(50, Cluster::converged));
    let before = c.applied_index(first);
    c.crash(first);
    let second = c.elect();
    assert_ne!(second, first);
    c.propose(second, pods(10, 10)).unwrap();
    assert!(c.run_until(50, Cluster::converged));
    c.restart(first);
    assert!(c.run_until(200, |c| c.converged() && c.applied_index(first) > before));
    assert!(c.revisions_never_went_back());
}

#[test]
fn a_minority_cannot_commit_and_a_healed_partition_converges() {
    let mut c = Cluster::new(3, options());
    let old = c.elect();
    c.propose(old, pods(0, 6)).unwrap();
    assert!(c.run_until(50, Cluster::converged));
    let committed = c.applied_index(old);
    c.isolate(old);
    // The cut-off leader still takes a proposal, but it can never commit it.
    let lost = c.replicas_propose_anyway(old);
    assert!(c.run_until(300, |c| c.leader().is_some_and(
        |l| l != old && c.replica(l).status().term > c.replica(old).status().term
    )));
    let new = c.leader().unwrap();
    c.propose(new, pods(6, 6)).unwrap();
    c.run_until(20, |_| false);
    assert_eq!(
        c.applied_index(old),
        committed,
        "the minority applied nothing"
    );
    assert!(
        !c.replica(old).is_leader(),
        "check-quorum: a leader that hears no quorum steps down"
    );
    c.heal();
    assert!(c.run_until(300, Cluster::converged));
    // The minority's proposal was never applied anywhere.
    for id in c.ids.clone() {
        assert!(!c.events[&id].iter().any(|e| matches!(
            e,
            Event::Committed { batch: Some(b), .. } if Some(b.id) == lost
        )));
    }
    assert!(c.revisions_never_went_back());
}

#[test]
fn a_cluster_restarted_whole_keeps_every_committed_revision() {
    let mut c = Cluster::new(3, options());
    let leader = c.elect();
    for i in 0..5 {
        c.propose(leader, pods(i * 4, 4)).unwrap();
    }
    assert!(c.run_until(50, Cluster::converged));
    let digests = c.digests(leader);
    let applied = c.applied_index(leader);
    for id in c.ids.clone() {
        c.crash(id);
    }
    for id in c.ids.clone() {
        c.restart(id);
    }
    let leader = c.elect();
    assert!(c.run_until(300, |c| c.converged() && c.applied_index(leader) >= applied));
    let now = c.digests(leader);
    // The same objects at the same versions (a new leader's empty entry changes no slice).
    assert_eq!(now, digests);
}

#[test]
fn a_lagging_replica_catches_up_by_snapshot() {
    let mut c = Cluster::new(
        3,
        Options {
            snapshot_every: 4,
            keep_entries: 1,
            ..Options::default()
        },
    );
    let leader = c.elect();
    let lagging = c.ids.iter().copied().find(|i| *i != leader).unwrap();
    c.crash(lagging);
    for i in 0..20 {
        c.propose(leader, pods(i * 3, 3)).unwrap();
    }
    assert!(!c.snapshots[&leader].is_empty());
    c.restart(lagging);
    assert!(c.run_until(300, Cluster::converged));
    assert!(
        c.events[&lagging]
            .iter()
            .any(|e| matches!(e, Event::Install { .. })),
        "caught up by a snapshot, not by replaying entries the leader no longer has"
    );
    assert_eq!(c.digests(lagging), c.digests(leader));
}

/// A read index is confirmed by the leader for a follower and for itself, at the commit index
/// or later; a leader cut off from its group never confirms one, before or after others
/// elected a leader and committed more.
#[test]
fn a_read_index_is_confirmed_by_a_quorum_and_never_by_a_deposed_leader() {
    let mut c = Cluster::new(3, options());
    let leader = c.elect();
    c.propose(leader, pods(0, 6)).unwrap();
    assert!(c.run_until(50, Cluster::converged));
    let commit = c.replica(leader).status().commit;
    let follower = *c.ids.iter().find(|id| **id != leader).unwrap();
    let at = c
        .read_index(follower, 7)
        .expect("the follower's read is confirmed");
    assert!(at >= commit, "{at} < {commit}");
    let at = c
        .read_index(leader, 8)
        .expect("the leader's read is confirmed");
    assert!(at >= commit);
    // Every replica numbers its reads alike: the leader tells them apart (it drops a read
    // whose context it holds pending already).
    for id in c.ids.clone() {
        c.ask_read(id, 20);
    }
    c.settle();
    for id in c.ids.clone() {
        assert!(c.read_answered(id, 20).is_some(), "replica {id}'s read 20");
    }

    c.isolate(leader);
    assert_eq!(
        c.read_index(leader, 9),
        None,
        "cut off: no quorum confirms it"
    );
    assert!(c.run_until(500, |c| c.leader().is_some_and(|l| l != leader)));
    let new = c.leader().unwrap();
    c.propose(new, pods(6, 3)).unwrap();
    for _ in 0..40 {
        c.tick();
    }
    assert_eq!(c.read_answered(leader, 9), None, "never, while cut off");
    assert_eq!(c.read_index(leader, 10), None);
    let later = c.replica(new).status().commit;
    let at = c
        .read_index(new, 11)
        .expect("the new leader confirms reads");
    assert!(at >= later && later > commit);
}
