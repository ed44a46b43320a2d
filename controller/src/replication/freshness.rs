//! How fresh what this replica serves is. Every read (introspection, agents' slices) is served
//! from the replica's applied state; this says, with each answer, the revision it reflects and
//! whether the replica could confirm it is current: a leader that heard from a quorum of its
//! group within its lease, a follower whose leader confirmed a read within it (and which has
//! applied what the leader had committed then). A leader paused past its lease, or a follower
//! cut off, keeps answering from what it applied and says so.
//! A read that must be current asks the leader instead ([`super::Group::read_index`]).
//!
//! [`assess`] is pure: the group's status, when the driver last confirmed this replica's view
//! ([`palisade_replica::Lease`]), the time now and the lease.

use std::time::{Duration, Instant};

use palisade_proto::v1 as pb;
use palisade_replica::{Confirmed, Role};

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
pub fn assess(s: &GroupStatus, confirmed: Confirmed, now: Instant, lease: Duration) -> Freshness {
    let since = |at: Instant| now.saturating_duration_since(at);
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let stale = if let Some(f) = &s.failure {
        Some(format!("this replica has failed ({f})"))
    } else {
        match (s.raft.role, confirmed) {
            (_, Confirmed::Always) => None,
            (Role::Leader, Confirmed::At { at, .. }) if since(at) <= lease => None,
            (Role::Leader, Confirmed::At { at, .. }) => Some(format!(
                "this replica leads but has not heard from a quorum of its group for {} (its lease is {})",
                secs(since(at)),
                secs(lease)
            )),
            (Role::Leader, Confirmed::Never) => Some(
                "this replica was just elected leader and no quorum has answered it yet".into(),
            ),
            (_, _) if s.raft.leader == 0 => Some("this replica knows no leader".into()),
            (_, Confirmed::At { at, .. }) if since(at) > lease => Some(format!(
                "its leader (replica {}) last confirmed this replica's reads {} ago (its lease is {})",
                s.raft.leader,
                secs(since(at)),
                secs(lease)
            )),
            (_, Confirmed::At { index, .. }) if s.applied < index => Some(format!(
                "this replica is catching up: it has applied revision {} of the {index} its leader (replica {}) had committed",
                s.applied, s.raft.leader
            )),
            (_, Confirmed::At { .. }) => None,
            (_, Confirmed::Never) => Some(format!(
                "its leader (replica {}) has not confirmed this replica's reads yet",
                s.raft.leader
            )),
        }
    };
    Freshness {
        revision: s.applied,
        commit: s.raft.commit.max(s.applied),
        stale,
        confirmed: false,
        replica: s.raft.id,
        leader: s.raft.leader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, leader: u64) -> GroupStatus {
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
            ..GroupStatus::default()
        }
    }

    #[test]
    fn current_within_the_lease_and_says_why_not_past_it() {
        let now = Instant::now();
        let lease = Duration::from_secs(1);
        let at = |ms, index| Confirmed::At {
            at: now - Duration::from_millis(ms),
            index,
        };
        let f = assess(&status(Role::Leader, 1), at(300, 0), now, lease);
        assert!(f.current());
        assert_eq!((f.revision, f.commit, f.replica, f.leader), (10, 12, 1, 1));
        let f = assess(&status(Role::Leader, 1), at(10_000, 0), now, lease);
        assert!(f
            .stale
            .unwrap()
            .contains("has not heard from a quorum of its group for 10.0 s"));
        assert!(!assess(&status(Role::Leader, 1), Confirmed::Never, now, lease).current());
        assert!(assess(&status(Role::Leader, 1), Confirmed::Always, now, lease).current());
        // A follower: its leader confirmed a read within the lease, and it applied the index.
        assert!(assess(&status(Role::Follower, 2), at(900, 10), now, lease).current());
        let f = assess(&status(Role::Follower, 2), at(900, 11), now, lease);
        assert!(f
            .stale
            .unwrap()
            .contains("catching up: it has applied revision 10 of the 11"));
        let f = assess(&status(Role::Follower, 2), at(1500, 10), now, lease);
        assert!(f
            .stale
            .unwrap()
            .contains("(replica 2) last confirmed this replica's reads 1.5 s ago"));
        assert!(!assess(&status(Role::Follower, 2), Confirmed::Never, now, lease).current());
        let f = assess(&status(Role::Candidate, 0), at(1, 0), now, lease);
        assert_eq!(f.stale.as_deref(), Some("this replica knows no leader"));
        let mut failed = status(Role::Follower, 2);
        failed.failure = Some("the Raft log: no space".into());
        let f = assess(&failed, at(0, 0), now, lease);
        assert!(f
            .stale
            .unwrap()
            .contains("has failed (the Raft log: no space)"));
        // The pb form says the same.
        let p = assess(&status(Role::Follower, 0), Confirmed::Never, now, lease).to_pb();
        assert!(!p.current && p.reason == "this replica knows no leader");
    }
}
