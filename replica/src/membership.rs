//! Changes to the group's membership, as Raft configuration changes: a new replica joins as
//! a learner (it receives the log, or a snapshot, and votes on nothing), is promoted to voter
//! once it has caught up, and a replica is removed for good. Each change is one entry
//! (raft-rs's `ConfChangeV2` with one change, so no joint configuration is needed) whose
//! context carries the replica's address, so every replica learns where a new one is from
//! the log itself (and from the state machine's snapshot, which keeps the addresses).
//!
//! [`check`] is the leader's decision whether a change may be proposed now: pure, tested
//! without a group.

use std::collections::BTreeSet;

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};

/// What a change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A new replica joins as a learner, reached at the change's address.
    AddLearner,
    /// A learner that caught up becomes a voter.
    Promote,
    /// The replica leaves the group; its id is never used again.
    Remove,
}

/// One membership change, as the entry's context holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: Kind,
    pub id: u64,
    /// Where the replica is reached (`HOST:PORT`); empty for promotions and removals.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Who asked (0: the leader itself, promoting a learner): the proposer answers its caller
    /// when the entry with this number is applied.
    #[serde(default)]
    pub request: u64,
}

/// The group's configuration: who votes and who only learns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
}

impl Members {
    pub fn contains(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    pub fn from_conf(cs: &raft::eraftpb::ConfState) -> Members {
        Members {
            voters: cs.voters.iter().copied().collect(),
            learners: cs.learners.iter().copied().collect(),
        }
    }
}

impl Change {
    /// The configuration change raft-rs applies, with this change as its context.
    pub fn to_conf_change(&self) -> ConfChangeV2 {
        let mut single = ConfChangeSingle {
            node_id: self.id,
            ..Default::default()
        };
        single.set_change_type(match self.kind {
            Kind::AddLearner => ConfChangeType::AddLearnerNode,
            Kind::Promote => ConfChangeType::AddNode,
            Kind::Remove => ConfChangeType::RemoveNode,
        });
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.set_context(self.encode().into());
        cc
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a change serialises")
    }

    /// The change an entry's context holds (`None`: an empty context, such as raft-rs's own
    /// entry leaving a joint configuration).
    pub fn decode(context: &[u8]) -> Result<Option<Change>, String> {
        if context.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(context)
            .map(Some)
            .map_err(|e| format!("an undecodable membership change: {e}"))
    }
}

/// Why a change may not be proposed now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("replica {0} is a member already")]
    Member(u64),
    #[error("replica {0} was a member of this group and was removed: a replica never comes back under an id it used (its old votes could count twice); add it under a new id")]
    Retired(u64),
    #[error("replica {0} is not a member of the group")]
    NotMember(u64),
    #[error("replica {0} is a voter already")]
    Voter(u64),
    #[error("replica {0} is the last voter: a group cannot remove its last voter")]
    LastVoter(u64),
    #[error("a new replica needs its address (ID=HOST:PORT)")]
    NoAddress,
    #[error("another membership change is still being committed; try again once it is (palisadectl replicas)")]
    Pending,
    #[error("removing replica {id} would leave voters {left:?} of which only {active:?} answer: fewer than a quorum, and the group could commit nothing more (not even another change). Bring replicas back first, or remove one that does not answer")]
    NoQuorum {
        id: u64,
        left: Vec<u64>,
        active: Vec<u64>,
    },
}

/// Whether the leader may propose `change` to a group of `members`, with `retired` ids
/// (removed before), the members heard from recently (`active`, the leader included) and
/// whether a change is still pending.
pub fn check(
    change: &Change,
    members: &Members,
    retired: &BTreeSet<u64>,
    active: &BTreeSet<u64>,
    pending: bool,
) -> Result<(), Refused> {
    if pending {
        return Err(Refused::Pending);
    }
    let id = change.id;
    match change.kind {
        Kind::AddLearner => {
            if members.contains(id) {
                return Err(Refused::Member(id));
            }
            if retired.contains(&id) {
                return Err(Refused::Retired(id));
            }
            if change.address.trim().is_empty() {
                return Err(Refused::NoAddress);
            }
        }
        Kind::Promote => {
            if members.voters.contains(&id) {
                return Err(Refused::Voter(id));
            }
            if !members.learners.contains(&id) {
                return Err(Refused::NotMember(id));
            }
        }
        Kind::Remove => {
            if !members.contains(id) {
                return Err(if retired.contains(&id) {
                    Refused::Retired(id)
                } else {
                    Refused::NotMember(id)
                });
            }
            if members.voters.len() == 1 && members.voters.contains(&id) {
                return Err(Refused::LastVoter(id));
            }
            let left: Vec<u64> = members
                .voters
                .iter()
                .copied()
                .filter(|v| *v != id)
                .collect();
            let answering: Vec<u64> = left
                .iter()
                .copied()
                .filter(|v| active.contains(v))
                .collect();
            if answering.len() < left.len() / 2 + 1 {
                return Err(Refused::NoQuorum {
                    id,
                    left,
                    active: answering,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(voters: &[u64], learners: &[u64]) -> Members {
        Members {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
        }
    }

    fn change(kind: Kind, id: u64, address: &str) -> Change {
        Change {
            kind,
            id,
            address: address.into(),
            request: 9,
        }
    }

    #[test]
    fn changes_round_trip_through_a_conf_change() {
        let c = change(Kind::AddLearner, 4, "10.0.0.4:7443");
        let cc = c.to_conf_change();
        assert_eq!(cc.changes.len(), 1);
        assert_eq!(cc.changes[0].node_id, 4);
        assert_eq!(
            cc.changes[0].get_change_type(),
            ConfChangeType::AddLearnerNode
        );
        assert_eq!(Change::decode(&cc.context).unwrap(), Some(c));
        assert_eq!(Change::decode(b"").unwrap(), None);
        assert!(Change::decode(b"{").is_err());
    }

    #[test]
    fn the_leader_refuses_what_would_break_the_group() {
        let m = members(&[1, 2, 3], &[4]);
        let retired: BTreeSet<u64> = [5].into();
        let all: BTreeSet<u64> = [1, 2, 3, 4].into();
        let ok = |c: Change| check(&c, &m, &retired, &all, false);
        assert_eq!(ok(change(Kind::AddLearner, 6, "h:1")), Ok(()));
        assert_eq!(
            ok(change(Kind::AddLearner, 3, "h:1")),
            Err(Refused::Member(3))
        );
        assert_eq!(
            ok(change(Kind::AddLearner, 5, "h:1")),
            Err(Refused::Retired(5))
        );
        assert_eq!(
            ok(change(Kind::AddLearner, 6, " ")),
            Err(Refused::NoAddress)
        );
        assert_eq!(ok(change(Kind::Promote, 4, "")), Ok(()));
        assert_eq!(ok(change(Kind::Promote, 2, "")), Err(Refused::Voter(2)));
        assert_eq!(ok(change(Kind::Promote, 7, "")), Err(Refused::NotMember(7)));
        assert_eq!(ok(change(Kind::Remove, 2, "")), Ok(()));
        assert_eq!(ok(change(Kind::Remove, 4, "")), Ok(()));
        assert_eq!(ok(change(Kind::Remove, 5, "")), Err(Refused::Retired(5)));
        assert_eq!(ok(change(Kind::Remove, 8, "")), Err(Refused::NotMember(8)));
        assert_eq!(
            check(
                &change(Kind::Remove, 1, ""),
                &members(&[1], &[]),
                &retired,
                &all,
                false
            ),
            Err(Refused::LastVoter(1))
        );
        assert_eq!(
            check(
                &change(Kind::AddLearner, 6, "h:1"),
                &m,
                &retired,
                &all,
                true
            ),
            Err(Refused::Pending)
        );
        // 3 does not answer: removing 3 leaves 1 and 2, both answering; removing 2 would
        // leave 1 and 3, one answering: no quorum.
        let without_3: BTreeSet<u64> = [1, 2].into();
        assert_eq!(
            check(
                &change(Kind::Remove, 3, ""),
                &m,
                &retired,
                &without_3,
                false
            ),
            Ok(())
        );
        assert!(matches!(
            check(
                &change(Kind::Remove, 2, ""),
                &m,
                &retired,
                &without_3,
                false
            ),
            Err(Refused::NoQuorum { id: 2, .. })
        ));
    }
}
