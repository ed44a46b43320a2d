//! Whether a replica may take part in its group with the directory it has: pure decisions,
//! the I/O is in [`super::bootstrap`].
//!
//! A replica's Raft directory records its group and id ([`Identity`]). Raft is only safe
//! if a replica never forgets what it voted for or acknowledged; a directory that lost its
//! state (deleted, a new volume) looks exactly like a new one, so a blank directory never
//! takes part on its own word:
//! * A group of one (no peers) with a blank directory creates its group: there is nobody it
//!   could contradict.
//! * In a group of several, a blank directory takes part only at bootstrap, asked explicitly
//!   (`--bootstrap`): the replica with the lowest id creates the group once every other
//!   replica has answered that its own directory is blank too; each other replica takes the
//!   group's identity from the creator, who records durably who took it (with a nonce the
//!   taker's directory drew), so a replica that took it and lost its directory afterwards is
//!   refused. Every other case refuses to start, naming what to do.
//! * A directory of another group, or of another id, is refused; Raft messages carry the
//!   group, and a replica refuses those of another.

use std::collections::BTreeMap;

use palisade_storage::{GroupId, Identity};

/// The nonce recorded for members that took part before the creator kept records (a
/// directory of an earlier version): no directory draws it, so any asks again in vain.
pub const TOOK_PART: u64 = 0;

/// What a peer said when asked who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It could not be asked (down, unreachable, refusing): why.
    Unreachable(String),
    /// Its directory holds no group.
    Blank,
    /// It belongs to `group`, whose configuration (as its directory holds it) has these
    /// members, at its applied index.
    Member {
        group: GroupId,
        members: Vec<u64>,
        /// Those of `members` that only learn (added, not promoted yet).
        learners: Vec<u64>,
        applied: u64,
        /// The leader it knows (0: none).
        leader: u64,
    },
}

/// What a replica with a blank directory does when it asks a running group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Joining {
    /// Member `from` counts it as a learner (added by `palisadectl replicas add`): take the
    /// identity from it. A learner votes on nothing, so a learner's directory that is lost
    /// and joins again endangers nothing.
    Adopt { group: GroupId, from: u64 },
    /// Never take part with this directory: why, and what to do.
    Refuse(String),
    /// Members answer, and none counts this replica (not added yet): what to do.
    NotMember(String),
    /// No member of a group answered.
    Nobody,
}

/// What replica `me`, with a blank directory, does given its peers' `answers`, if a group
/// answers.
pub fn joining(me: u64, answers: &BTreeMap<u64, Answer>) -> Joining {
    /// A member's answer: its id, members, learners, applied index and leader.
    type Said<'a> = (u64, &'a Vec<u64>, &'a Vec<u64>, u64, u64);
    let mut groups: BTreeMap<GroupId, Vec<Said>> = BTreeMap::new();
    for (peer, a) in answers {
        if let Answer::Member {
            group,
            members,
            learners,
            applied,
            leader,
        } = a
        {
            groups
                .entry(*group)
                .or_default()
                .push((*peer, members, learners, *applied, *leader));
        }
    }
    if groups.len() > 1 {
        let list: Vec<String> = groups
            .iter()
            .map(|(g, v)| format!("replica {} in group {g}", v[0].0))
            .collect();
        return Joining::Refuse(format!(
            "the peers belong to different groups ({}): check --peers",
            list.join(", ")
        ));
    }
    let Some((group, answered)) = groups.into_iter().next() else {
        return Joining::Nobody;
    };
    // The member furthest along decides (another may not have applied the change yet).
    let Some(&(peer, members, learners, applied, leader)) = answered.iter().max_by_key(|a| a.3)
    else {
        return Joining::Nobody;
    };
    if learners.contains(&me) {
        // The leader hands a learner the identity (it can tell whether it sent it anything).
        let from = if leader != 0 { leader } else { peer };
        return Joining::Adopt { group, from };
    }
    if members.contains(&me) {
        return Joining::Refuse(lost(me, group, peer, applied));
    }
    Joining::NotMember(format!(
        "group {group} (replica {peer} answers for it at index {applied}) does not count replica {me} among its members ({}): add it first with `palisadectl replicas add {me}=HOST:PORT`, then start it again",
        join(members)
    ))
}

/// What a replica with a blank directory does next, at bootstrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Create the group (this is the lowest id, and every peer is blank).
    Create,
    /// Take the identity of `group` from `creator`.
    Adopt { group: GroupId, creator: u64 },
    /// Ask again later: why.
    Wait(String),
    /// Never take part with this directory: why, and what to do.
    Refuse(String),
}

/// The replica that creates a new group: the lowest id.
pub fn creator(ids: &[u64]) -> u64 {
    ids.iter().copied().min().unwrap_or(0)
}

/// What replica `me`, whose directory is blank and which was asked to `--bootstrap` a group
/// of `ids`, does given its peers' `answers`.
pub fn bootstrap(me: u64, ids: &[u64], answers: &BTreeMap<u64, Answer>) -> Bootstrap {
    let creator = creator(ids);
    let mut groups: BTreeMap<GroupId, (u64, Vec<u64>, u64)> = BTreeMap::new();
    for (peer, a) in answers {
        if let Answer::Member {
            group,
            members,
            applied,
            ..
        } = a
        {
            groups
                .entry(*group)
                .or_insert((*peer, members.clone(), *applied));
        }
    }
    if groups.len() > 1 {
        let list: Vec<String> = groups
            .iter()
            .map(|(g, (p, _, _))| format!("replica {p} in group {g}"))
            .collect();
        return Bootstrap::Refuse(format!(
            "the peers belong to different groups ({}): check --peers",
            list.join(", ")
        ));
    }
    if let Some((group, (peer, members, applied))) = groups.into_iter().next() {
        if !members.contains(&me) {
            return Bootstrap::Refuse(format!(
                "group {group} (replica {peer} answers for it at index {applied}) does not count replica {me} among its members ({}): a replica joins a running group through a membership change, under an id it never used",
                join(&members)
            ));
        }
        if me == creator {
            return Bootstrap::Refuse(lost(me, group, peer, applied));
        }
        return match answers.get(&creator) {
            Some(Answer::Member { .. }) => Bootstrap::Adopt { group, creator },
            _ => Bootstrap::Wait(format!(
                "group {group} exists (replica {peer} answers for it); its identity is taken from replica {creator}, which created it and does not answer"
            )),
        };
    }
    if me != creator {
        return Bootstrap::Wait(format!(
            "waiting for replica {creator} (the lowest id) to create the group: start it with --bootstrap"
        ));
    }
    let silent: Vec<String> = ids
        .iter()
        .filter(|p| **p != me)
        .filter_map(|p| match answers.get(p) {
            Some(Answer::Blank) => None,
            Some(Answer::Unreachable(why)) => Some(format!("replica {p} ({why})")),
            _ => Some(format!("replica {p} (not asked yet)")),
        })
        .collect();
    if silent.is_empty() {
        Bootstrap::Create
    } else {
        Bootstrap::Wait(format!(
            "a group is created only once every replica has said its directory is blank; waiting for {}",
            silent.join(", ")
        ))
    }
}

/// The creator's answer when replica `id` asks to take `group`'s identity with `nonce`:
/// the record to store (when it changes), or why not.
pub fn adopt(
    own: &Identity,
    members: &[u64],
    id: u64,
    group: GroupId,
    nonce: u64,
) -> Result<Option<Identity>, String> {
    let Some(own_group) = own.group else {
        return Err("this replica holds no group yet".into());
    };
    if own_group != group {
        return Err(format!(
            "this replica belongs to group {own_group}, not {group}"
        ));
    }
    if id == own.id || !members.contains(&id) {
        return Err(format!(
            "replica {id} is not an initial member of group {group} (members: {})",
            join(members)
        ));
    }
    match own.adopted.get(&id) {
        Some(n) if *n == nonce => Ok(None),
        Some(_) => Err(lost(id, group, own.id, 0)),
        None => {
            let mut next = own.clone();
            next.adopted.insert(id, nonce);
            Ok(Some(next))
        }
    }
}

/// The group a directory written before identities existed belongs to: the same for every
/// replica of one group (derived from its configuration), so they keep talking after an
/// upgrade.
pub fn legacy_group(voters: &[u64]) -> GroupId {
    let mut v = voters.to_vec();
    v.sort_unstable();
    let mut bytes = b"palisade legacy group".to_vec();
    for id in v {
        bytes.extend_from_slice(&id.to_be_bytes());
    }
    GroupId(xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// Why replica `id` may not take part again, and what to do.
pub fn lost(id: u64, group: GroupId, peer: u64, applied: u64) -> String {
    let at = if applied > 0 {
        format!(" at index {applied}")
    } else {
        String::new()
    };
    format!(
        "replica {id} already took part in group {group} (replica {peer} answers for it{at}), and this directory has lost that state (its log, its votes): taking part again under id {id} could lose acknowledged writes. The group keeps working on its other replicas; this one must come back under a new id through a membership change: `palisadectl replicas replace {id} NEW=HOST:PORT`, then start the new id with a blank directory (docs/architecture.md, \"Membership\"). To start a separate new group instead, give every replica of it a blank directory"
    )
}

fn join(ids: &[u64]) -> String {
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: GroupId = GroupId(7);

    fn member(ids: &[u64]) -> Answer {
        Answer::Member {
            group: G,
            members: ids.to_vec(),
            learners: Vec::new(),
            applied: 12,
            leader: 1,
        }
    }

    fn answers(list: &[(u64, Answer)]) -> BTreeMap<u64, Answer> {
        list.iter().cloned().collect()
    }

    #[test]
    fn the_lowest_id_creates_once_every_peer_is_blank() {
        let ids = [1, 2, 3];
        assert_eq!(
            bootstrap(1, &ids, &answers(&[(2, Answer::Blank), (3, Answer::Blank)])),
            Bootstrap::Create
        );
        let waiting = bootstrap(
            1,
            &ids,
            &answers(&[
                (2, Answer::Blank),
                (3, Answer::Unreachable("refused".into())),
            ]),
        );
        assert!(matches!(&waiting, Bootstrap::Wait(w) if w.contains("replica 3 (refused)")));
        assert!(matches!(
            bootstrap(1, &ids, &answers(&[(2, Answer::Blank)])),
            Bootstrap::Wait(_)
        ));
        // Others never create.
        assert!(matches!(
            bootstrap(2, &ids, &answers(&[(1, Answer::Blank), (3, Answer::Blank)])),
            Bootstrap::Wait(w) if w.contains("replica 1")
        ));
    }

    #[test]
    fn others_adopt_from_the_creator_only() {
        let ids = [1, 2, 3];
        assert_eq!(
            bootstrap(3, &ids, &answers(&[(1, member(&ids)), (2, Answer::Blank)])),
            Bootstrap::Adopt {
                group: G,
                creator: 1
            }
        );
        assert!(matches!(
            bootstrap(
                3,
                &ids,
                &answers(&[(1, Answer::Unreachable("down".into())), (2, member(&ids))])
            ),
            Bootstrap::Wait(_)
        ));
    }

    #[test]
    fn a_creator_that_lost_its_directory_is_refused() {
        let ids = [1, 2, 3];
        let r = bootstrap(
            1,
            &ids,
            &answers(&[(2, member(&ids)), (3, Answer::Unreachable("down".into()))]),
        );
        assert!(
            matches!(&r, Bootstrap::Refuse(w) if w.contains("already took part")),
            "{r:?}"
        );
    }

    #[test]
    fn a_group_without_this_id_or_two_groups_are_refused() {
        let r = bootstrap(3, &[1, 2, 3], &answers(&[(1, member(&[1, 2, 4]))]));
        assert!(matches!(&r, Bootstrap::Refuse(w) if w.contains("does not count replica 3")));
        let other = Answer::Member {
            group: GroupId(8),
            members: vec![1, 2, 3],
            learners: Vec::new(),
            applied: 1,
            leader: 0,
        };
        let r = bootstrap(
            3,
            &[1, 2, 3],
            &answers(&[(1, member(&[1, 2, 3])), (2, other)]),
        );
        assert!(matches!(&r, Bootstrap::Refuse(w) if w.contains("different groups")));
    }

    #[test]
    fn the_creator_hands_the_identity_out_once_per_directory() {
        let own = Identity {
            id: 1,
            group: Some(G),
            ..Identity::default()
        };
        let members = [1, 2, 3];
        let after = adopt(&own, &members, 2, G, 99).unwrap().unwrap();
        assert_eq!(after.adopted.get(&2), Some(&99));
        // The same directory again: nothing to store.
        assert_eq!(adopt(&after, &members, 2, G, 99), Ok(None));
        // Another directory under the same id: it lost its state.
        let err = adopt(&after, &members, 2, G, 100).unwrap_err();
        assert!(err.contains("already took part"), "{err}");
        assert!(adopt(&after, &members, 4, G, 1).is_err());
        assert!(adopt(&after, &members, 1, G, 1).is_err());
        assert!(adopt(&after, &members, 3, GroupId(8), 1).is_err());
    }

    #[test]
    fn a_blank_directory_joins_only_as_a_learner() {
        let with_learner = Answer::Member {
            group: G,
            members: vec![1, 2, 4],
            learners: vec![4],
            applied: 20,
            leader: 1,
        };
        assert_eq!(
            joining(
                4,
                &answers(&[(1, member(&[1, 2])), (2, with_learner.clone())])
            ),
            Joining::Adopt { group: G, from: 1 }
        );
        // Promoted already: a voter with a blank directory lost its state.
        let r = joining(2, &answers(&[(1, with_learner.clone())]));
        assert!(
            matches!(&r, Joining::Refuse(w) if w.contains("already took part")),
            "{r:?}"
        );
        let r = joining(5, &answers(&[(1, with_learner)]));
        assert!(
            matches!(&r, Joining::NotMember(w) if w.contains("replicas add 5=")),
            "{r:?}"
        );
        assert_eq!(
            joining(
                5,
                &answers(&[(1, Answer::Blank), (2, Answer::Unreachable("x".into()))])
            ),
            Joining::Nobody
        );
    }

    #[test]
    fn legacy_groups_agree_across_replicas() {
        assert_eq!(legacy_group(&[3, 1, 2]), legacy_group(&[1, 2, 3]));
        assert_ne!(legacy_group(&[1, 2, 3]), legacy_group(&[1, 2, 4]));
    }
}
