//! How fresh what this replica serves is. Every read (introspection, agents' slices) is served
//! from the replica's applied state; this says, with each answer, the revision it reflects and
//! whether the replica could confirm it is current: its leader (itself, leading) confirmed a
//! read index asked within the lease, and the replica has applied that index. A leader paused
//! past its lease, or a follower cut off, keeps answering from what it applied and says so.
//! A read that must be current asks for a read index of its own ([`super::Group::read_index`]).
//!
//! [`assess`] is pure: the group's status (with the reads confirmed, [`palisade_replica::Lease`]),
//! the time now and the lease.

use std::time::{Duration, Instant};

use palisade_proto::v1 as pb;

use super::GroupStatus;

/// An answer's freshness (introspection's `Freshness`, the agents' keepalives).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Freshness {
    /// The revision the answer reflects (applied here).
    pub revision: u64,
    /// The highest index known committed.
    pub commit: u64,
    /// Why the replica cannot confirm it is current; `None`: it is.
    pub stale: Option<String>,
    /// Not current only for a reason moving to another replica would not cure: applying what
    /// was committed, or an election under way. (A replica cut off from its group refuses
    /// agents, see [`super::standing`]; one that stops applying is left by the agents.)
    pub transient: bool,
    /// Confirmed with the leader's read index before answering.
    pub confirmed: bool,
    pub replica: u64,
    pub leader: u64,
}

impl Freshness {
    pub fn current(&self) -> bool {
        self.stale.is_none()
    }

    pub fn to_pb(&self) -> pb::Freshness {
        pb::Freshness {
            revision: self.revision,
            commit: self.commit,
            current: self.current(),
            reason: self.stale.clone().unwrap_or_default(),
            confirmed: self.confirmed,
            replica: self.replica,
            leader: self.leader,
        }
    }
}

/// Where this replica stands: current or not, and why, as of `now`.
pub fn assess(s: &GroupStatus, now: Instant, lease: Duration) -> Freshness {
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let within = |at: &Instant| now.saturating_duration_since(*at) <= lease;
    let newest = s.confirmed.newest().filter(|(at, _)| within(at));
    let (stale, transient) = if let Some(f) = &s.failure {
        (Some(format!("this replica has failed ({f})")), false)
    } else if s.raft.leader == 0 {
        (
            Some(
                "this replica knows no leader (an election, or cut off from its group)".to_string(),
            ),
            true,
        )
    } else if s
        .confirmed
        .applied_as_of(s.applied)
        .is_some_and(|at| within(&at))
    {
        (None, false)
    } else if let Some((_, index)) = newest {
        (
            Some(format!(
                "this replica is catching up: it has applied revision {} of the {index} committed when it last asked",
                s.applied
            )),
            true,
        )
    } else {
        let confirmer = if s.raft.role == palisade_replica::Role::Leader {
            "a quorum of its group has not confirmed this replica's leadership".to_string()
        } else {
            format!(
                "its leader (replica {}) has not confirmed this replica's reads",
                s.raft.leader
            )
        };
        (
            Some(format!("{confirmer} within its lease ({})", secs(lease))),
            false,
        )
    };
    Freshness {
        revision: s.applied,
        commit: s
            .raft
            .commit
            .max(s.applied)
            .max(newest.map_or(0, |(_, i)| i)),
        stale,
        transient,
        confirmed: false,
        replica: s.raft.id,
        leader: s.raft.leader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_replica::{Confirmed, Role};

    fn status(role: Role, leader: u64, confirmed: Vec<(Instant, u64)>) -> GroupStatus {
        GroupStatus {
            raft: palisade_replica::Status {
                id: 1,
                role,
                leader,
                term: 4,
                commit: 12,
                ..Default::default()
            },
            applied: 10,
            confirmed: Confirmed(confirmed),
            ..GroupStatus::default()
        }
    }

    #[test]
    fn current_once_a_read_asked_within_the_lease_is_applied() {
        let now = Instant::now();
        let lease = Duration::from_secs(1);
        let ago = |ms| now - Duration::from_millis(ms);
        for role in [Role::Leader, Role::Follower] {
            // The newest read is not applied yet, an older one is: current.
            let f = assess(
                &status(role, 1, vec![(ago(100), 11), (ago(400), 9)]),
                now,
                lease,
            );
            assert!(f.current(), "{f:?}");
            assert_eq!((f.revision, f.commit, f.replica, f.leader), (10, 12, 1, 1));
            // Only a read past the lease is applied.
            let f = assess(
                &status(role, 1, vec![(ago(100), 11), (ago(1500), 9)]),
                now,
                lease,
            );
            assert!(f
                .stale
                .unwrap()
                .contains("catching up: it has applied revision 10 of the 11"));
            assert!(f.transient);
            // Nothing confirmed within the lease: a paused leader, a follower cut off.
            let f = assess(&status(role, 2, vec![(ago(1500), 9)]), now, lease);
            assert!(!f.transient);
            let why = f.stale.unwrap();
            assert!(why.contains("within its lease (1.0 s)"), "{why}");
        }
        let f = assess(&status(Role::Leader, 1, vec![]), now, lease);
        assert!(f
            .stale
            .unwrap()
            .starts_with("a quorum of its group has not confirmed"));
        let f = assess(&status(Role::Follower, 2, vec![]), now, lease);
        assert!(f
            .stale
            .unwrap()
            .starts_with("its leader (replica 2) has not confirmed"));
        let f = assess(&status(Role::Candidate, 0, vec![(ago(1), 1)]), now, lease);
        assert!(f.stale.unwrap().starts_with("this replica knows no leader"));
        assert!(f.transient);
        let mut failed = status(Role::Follower, 2, vec![(ago(1), 1)]);
        failed.failure = Some("the Raft log: no space".into());
        let f = assess(&failed, now, lease);
        assert!(f
            .stale
            .unwrap()
            .contains("has failed (the Raft log: no space)"));
        assert!(!f.transient);
        // The pb form says the same.
        let p = assess(&status(Role::Follower, 0, vec![]), now, lease).to_pb();
        assert!(!p.current && p.reason.starts_with("this replica knows no leader"));
    }
}
