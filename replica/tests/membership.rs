//! Membership changes in the deterministic in-process cluster (tests/support/cluster.rs): a
//! replica added joins as a learner (from the log, or from a snapshot when the log was
//! compacted), is promoted once caught up, keeps its configuration across restarts (a
//! change replayed from the log is not applied twice), and a group whose member was removed
//! commits without it.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{pods, Cluster};
use palisade_replica::membership::Kind;
use palisade_replica::{Change, Options};

fn change(kind: Kind, id: u64) -> Change {
    Change {
        kind,
        id,
        address: if kind == Kind::AddLearner {
            format!("r{id}:7443")
        } else {
            String::new()
        },
        request: 0,
    }
}

fn voters(c: &Cluster, id: u64) -> Vec<u64> {
    c.replica(id).members().voters.into_iter().collect()
}

fn learners(c: &Cluster, id: u64) -> Vec<u64> {
    c.replica(id).members().learners.into_iter().collect()
}

#[test]
fn a_replica_joins_as_a_learner_is_promoted_and_replaces_a_removed_one() {
    // From the whole log, and from a snapshot once the log is compacted.
    for (snapshot_every, keep_entries) in [(1_000, 1_000), (4, 1)] {
        let mut c = Cluster::new(
            3,
            Options {
                snapshot_every,
                keep_entries,
                ..Options::default()
            },
        );
        let leader = c.elect();
        for i in 0..6 {
            c.propose(leader, pods(i * 5, 5)).unwrap();
        }
        c.change(leader, change(Kind::AddLearner, 4)).unwrap();
        c.join(4);
        assert!(
            c.run_until(500, |c| c.applied_index(4) == c.applied_index(leader)),
            "the learner catches up (snapshot_every {snapshot_every}): {} of {}; its status {:?}",
            c.applied_index(4),
            c.applied_index(leader),
            c.replica(4).status()
        );
        assert_eq!(learners(&c, 4), vec![4], "it learns that it is a learner");
        assert_eq!(
            c.machine(4).addresses().get(&4).map(String::as_str),
            Some("r4:7443")
        );
        assert!(c.converged());
        c.change(leader, change(Kind::Promote, 4)).unwrap();
        assert!(c.run_until(100, |c| (1..=4).all(|i| voters(c, i) == vec![1, 2, 3, 4])));
        // Restarted, it replays the log: the addition is not applied again (it would demote).
        c.crash(4);
        c.restart(4);
        c.settle();
        assert_eq!(
            voters(&c, 4),
            vec![1, 2, 3, 4],
            "still a voter after a restart"
        );
        // Remove a follower (its disk lost, say); the group commits without it.
        let gone = (1..=3).find(|i| *i != leader).unwrap();
        c.change(leader, change(Kind::Remove, gone)).unwrap();
        c.crash(gone);
        assert!(c.machine(leader).retired().contains(&gone));
        let err = c
            .change(leader, change(Kind::AddLearner, gone))
            .unwrap_err();
        assert!(err.contains("never comes back"), "{err}");
        c.propose(leader, pods(100, 2)).unwrap();
        assert!(c.run_until(100, |c| c.converged()));
        let left: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != gone).collect();
        assert_eq!(voters(&c, 4), left);
        // With 4 a voter, losing one more of the three still leaves a quorum.
        c.crash(leader);
        let next = c.elect();
        assert_ne!(next, leader);
        c.propose(next, pods(200, 1)).unwrap();
        assert!(c.run_until(100, |c| c.converged()));
        assert!(c.revisions_never_went_back());
    }
}
