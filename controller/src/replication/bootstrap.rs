//! The I/O around [`super::identity`]: reads and writes the identity record of the Raft
//! directory, asks the peers who they are while a new group is bootstrapped, takes the
//! group's identity from its creator, and answers the same questions for the peers
//! ([`Membership`], served by the Raft service, and by [`Waiting`] before the replica runs).
//!
//! Durability is decided here: the identity record is flushed to disk (`set_identity`)
//! before the replica takes any part in its group, and the creator records who took the
//! group's identity before it answers them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use palisade_proto::v1::raft_server::Raft;
use palisade_proto::v1::{
    AckTable, AcksRequest, AdoptRequest, AdoptResponse, IdentifyRequest, IdentifyResponse, RaftAck,
    RaftBatch, RaftStatusRequest, ReplicaStatus,
};
use palisade_storage::{ConfState, GroupId, Identity, SledStorage, StorageError, Write};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::identity::{self, Answer, Bootstrap, Joining};
use super::transport::Transport;
use crate::auth::{self, Identity as Caller};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Store(#[from] StorageError),
    #[error("{dir}: this directory belongs to replica {found}, not {id}: give the --id it was created with, or a blank directory under a new id")]
    OtherId { dir: String, found: u64, id: u64 },
    #[error("{dir}: the directory holds no group, and replica {id} has peers: a replica never joins a group on a blank directory by itself (it may have lost its state). To create a new group, start every replica of it with --bootstrap; to add this replica to a running group, run `palisadectl replicas add {id}=HOST:PORT` against it first (its peers must answer); to replace a replica whose directory was lost, `palisadectl replicas replace OLD NEW=HOST:PORT` (docs/architecture.md, \"Membership\")")]
    Blank { dir: String, id: u64 },
    #[error("{0}")]
    Refused(String),
    #[error("stopped while waiting to bootstrap the group")]
    Stopped,
}

/// This replica's identity record, shared by the Raft service (which answers `Identify`
/// and, on the group's creator, `Adopt`).
pub struct Membership {
    store: SledStorage,
    identity: Mutex<Identity>,
    /// The group as Raft batches carry it (it never changes once settled).
    group: String,
    /// The ids of the group as configured (`--peers`), for answers before the directory
    /// holds a configuration.
    configured: Vec<u64>,
}

impl Membership {
    pub fn new(store: SledStorage, identity: Identity, configured: Vec<u64>) -> Membership {
        Membership {
            store,
            group: identity.group.map(|g| g.to_string()).unwrap_or_default(),
            identity: Mutex::new(identity),
            configured,
        }
    }

    pub fn identity(&self) -> Identity {
        self.identity.lock().expect("identity lock").clone()
    }

    /// The group, as Raft messages carry it ("" while none).
    pub fn group_text(&self) -> &str {
        &self.group
    }

    /// Voters and learners of the configuration the directory holds (else as configured).
    fn members(&self) -> (Vec<u64>, Vec<u64>) {
        let cs = self.store.conf_state();
        if cs.voters.is_empty() {
            (self.configured.clone(), Vec::new())
        } else {
            (cs.voters.clone(), cs.learners.clone())
        }
    }

    /// The answer to `Identify`.
    /// The answer to `Identify`, at `applied` with `leader` known.
    pub fn answer(&self, applied: u64, leader: u64) -> IdentifyResponse {
        let own = self.identity();
        let (voters, learners) = self.members();
        IdentifyResponse {
            id: own.id,
            group: own.group.map(|g| g.to_string()).unwrap_or_default(),
            voters,
            learners,
            applied,
            leader,
        }
    }

    /// The answer to `Adopt` from a caller with `ids`, `insecure` or not: a learner of this
    /// replica's configuration takes the identity from any member; an initial member of a
    /// new group from its creator, once per directory.
    pub fn adopt(&self, ids: &[Caller], req: &AdoptRequest) -> Result<AdoptResponse, Status> {
        let named = ids.iter().any(|i| match i {
            Caller::Anonymous => true,
            Caller::Replica(n) => *n == req.id,
            _ => false,
        });
        if !named {
            return Err(Status::permission_denied(format!(
                "taking replica {}'s identity needs its replica certificate",
                req.id
            )));
        }
        let group: GroupId = req.group.parse().map_err(Status::invalid_argument)?;
        let initial_voters = self
            .store
            .initial_conf()
            .map(|c| c.voters)
            .unwrap_or_default();
        let answer = AdoptResponse {
            initial_voters: initial_voters.clone(),
            ..AdoptResponse::default()
        };
        let mut own = self.identity.lock().expect("identity lock");
        let (_, learners) = self.members();
        if learners.contains(&req.id) && own.group == Some(group) {
            if initial_voters.is_empty() {
                return Err(Status::failed_precondition(
                    "this replica cannot tell the configuration the group's log starts from; ask another member",
                ));
            }
            info!(replica = req.id, %group, "a learner took the group's identity");
            return Ok(answer);
        }
        // An initial member: one of the voters the group was created with (a voter promoted
        // later took part already, so a blank directory under its id lost that part).
        let initial = if initial_voters.is_empty() {
            self.configured.clone()
        } else {
            initial_voters
        };
        match identity::adopt(&own, &initial, req.id, group, req.nonce) {
            Ok(None) => Ok(answer),
            Ok(Some(next)) => {
                self.store
                    .set_identity(&next)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                info!(replica = req.id, %group, "an initial member took the group's identity");
                *own = next;
                Ok(answer)
            }
            Err(why) => {
                warn!(
                    replica = req.id,
                    "refused to hand out the group's identity: {why}"
                );
                Err(Status::failed_precondition(why))
            }
        }
    }
}

/// Draw a number no other directory or group is likely to have.
fn random_u128() -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    fastrand::u128(..) ^ t ^ (u128::from(std::process::id()) << 64)
}

/// A directory's nonce: never [`identity::TOOK_PART`].
fn nonce() -> u64 {
    (random_u128() as u64).max(1)
}

/// The identity this replica takes part with, settled before it does: read from the
/// directory, recorded for a directory of an older version or a new group of one, or, for a
/// blank directory with peers and `bootstrap`, agreed with the peers (asked through
/// `transport` until they answer; `waiting` serves their questions meanwhile).
pub async fn settle(
    store: &SledStorage,
    id: u64,
    ids: &[u64],
    bootstrap: bool,
    transport: &Transport,
    shutdown: &CancellationToken,
) -> Result<Identity, IdentityError> {
    let dir = store.path().display().to_string();
    let found = store.identity()?;
    if let Some(found) = &found {
        if found.id != id {
            return Err(IdentityError::OtherId {
                dir,
                found: found.id,
                id,
            });
        }
        if let Some(group) = found.group {
            // A peer that answers for another group: one of the two directories is not
            // this group's (the peers' word wins over a single directory's).
            // Refused only when no peer answers for this directory's group and one answers
            // for another, so one foreign replica cannot keep the others from starting.
            if ids.len() > 1 {
                let answers = ask_all(transport, id, ids).await;
                let groups = answers.iter().filter_map(|(p, a)| match a {
                    Answer::Member { group, .. } => Some((*p, *group)),
                    _ => None,
                });
                let (same, other): (Vec<_>, Vec<_>) = groups.partition(|(_, g)| *g == group);
                if let (true, Some((peer, theirs))) = (same.is_empty(), other.first()) {
                    return Err(IdentityError::Refused(format!(
                        "{dir}: this directory belongs to group {group}, but replica {peer} answers for group {theirs} and no peer for this one: it is not this group's directory"
                    )));
                }
            }
            return Ok(found.clone());
        }
    }
    if !store.is_blank() {
        // Written before directories recorded their identity: every replica of that group
        // derives the same one from the configuration.
        let cs = store.conf_state();
        let voters = if cs.voters.is_empty() {
            ids.to_vec()
        } else {
            cs.voters.clone()
        };
        // Every other member took part already: on the lowest id (whom a blank directory
        // would ask), each is recorded as adopted under nonce 0, which no directory draws, so
        // one of them that loses its directory is refused like any other.
        let record = Identity {
            id,
            group: Some(identity::legacy_group(&voters)),
            nonce: nonce(),
            adopted: voters
                .iter()
                .filter(|v| **v != id)
                .map(|v| (*v, identity::TOOK_PART))
                .collect(),
        };
        store.set_identity(&record)?;
        info!(group = %record.group.expect("a group"), "recorded the identity of a directory written by an earlier version");
        return Ok(record);
    }
    if ids.len() <= 1 {
        let record = Identity {
            id,
            group: Some(GroupId(random_u128())),
            nonce: nonce(),
            ..Identity::default()
        };
        store.set_identity(&record)?;
        info!(group = %record.group.expect("a group"), "created a new group of one");
        return Ok(record);
    }
    // The nonce is durable before anyone is asked: a directory retrying after a crash asks
    // with the same one; a directory that lost it cannot.
    let mut record = found.unwrap_or(Identity {
        id,
        nonce: nonce(),
        ..Identity::default()
    });
    store.set_identity(&record)?;
    let mut said = String::new();
    let mut say = |why: String| {
        if why != said {
            match bootstrap {
                true => info!("bootstrap: {why}"),
                false => info!("joining the group: {why}"),
            }
            said = why;
        }
    };
    loop {
        let answers = ask_all(transport, id, ids).await;
        // Added as a learner: join, whether or not told to bootstrap.
        let joined = match identity::joining(id, &answers) {
            Joining::Adopt { group, from } => Some((group, from)),
            _ if bootstrap => None,
            Joining::Refuse(why) | Joining::NotMember(why) => {
                return Err(IdentityError::Refused(why))
            }
            Joining::Nobody => return Err(IdentityError::Blank { dir, id }),
        };
        let step = match joined {
            Some((group, from)) => Bootstrap::Adopt {
                group,
                creator: from,
            },
            None => identity::bootstrap(id, ids, &answers),
        };
        match step {
            Bootstrap::Create => {
                record.group = Some(GroupId(random_u128()));
                store.set_identity(&record)?;
                info!(group = %record.group.expect("a group"), "created a new group: every peer's directory is blank");
                return Ok(record);
            }
            Bootstrap::Adopt { group, creator } => {
                let req = AdoptRequest {
                    id,
                    group: group.to_string(),
                    nonce: record.nonce,
                };
                match transport.adopt(creator, req, Duration::from_secs(2)).await {
                    Ok(answer) => {
                        // The configuration the group's log starts from, before the identity:
                        // a directory that holds the identity never starts from another one.
                        if !answer.initial_voters.is_empty() {
                            let mut c0 = ConfState::default();
                            c0.set_voters(answer.initial_voters);
                            store.write(Write {
                                conf_state: Some(c0.clone()),
                                initial_conf: Some(c0),
                                ..Write::default()
                            })?;
                        } else if joined.is_some() {
                            return Err(IdentityError::Refused(format!(
                                "replica {creator} did not say which configuration the group's log starts from"
                            )));
                        }
                        // Replicas added since --peers was written: where they are.
                        for id in &answer.retired {
                            transport.retire(*id);
                        }
                        for (id, address) in &answer.addresses {
                            if let Err(e) = transport.learn(*id, address) {
                                warn!(
                                    replica = id,
                                    "cannot reach a member at the address the group gives: {e}"
                                );
                            }
                        }
                        record.group = Some(group);
                        store.set_identity(&record)?;
                        match joined {
                            Some(_) => {
                                info!(%group, from = creator, "joined the group as a learner: catching up from the leader; it promotes this replica to voter once caught up")
                            }
                            None => {
                                info!(%group, creator, "took the group's identity from the replica that created it")
                            }
                        }
                        return Ok(record);
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        return Err(IdentityError::Refused(format!(
                            "replica {creator} refuses: {}",
                            s.message()
                        )));
                    }
                    Err(s) => say(format!(
                        "replica {creator} does not answer: {}",
                        s.message()
                    )),
                }
            }
            Bootstrap::Wait(why) => say(why),
            Bootstrap::Refuse(why) => return Err(IdentityError::Refused(why)),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = shutdown.cancelled() => return Err(IdentityError::Stopped),
        }
    }
}

/// Whether settling this replica's identity means asking its peers (a blank directory of a
/// group of several, told to `--bootstrap`): the replica then answers them meanwhile.
pub fn needs_protocol(
    store: &SledStorage,
    ids: &[u64],
    bootstrap: bool,
) -> Result<bool, IdentityError> {
    let grouped = store.identity()?.is_some_and(|i| i.group.is_some());
    Ok(bootstrap && ids.len() > 1 && !grouped && store.is_blank())
}

/// While the group's membership never changed and the directory counts this replica: refuse
/// a directory whose voters are not those of `--peers` (a
/// directory of another group). Once membership changed, the directory's configuration is
/// the truth, and `--peers` only says where replicas are. A blank directory that joined as
/// a learner holds the configuration its log starts from, which need not hold it yet.
pub fn check_membership(
    store: &SledStorage,
    identity: &Identity,
    ids: &[u64],
) -> Result<(), IdentityError> {
    let cs = store.conf_state();
    if cs.voters.is_empty() || store.is_blank() {
        return Ok(());
    }
    let group = identity.group.map(|g| g.to_string()).unwrap_or_default();
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let member = cs.voters.contains(&identity.id) || cs.learners.contains(&identity.id);
    if store.conf_index() > 0 || !member {
        // A learner still replaying the log may not have reached its own addition (its
        // directory holds the configuration the log starts from, without it); a replica
        // removed is refused once its state machine is restored (it keeps the retired ids),
        // and by its peers. A directory of another group or id was refused already.
        return Ok(());
    }
    if ids.len() > 1 && cs.voters.iter().any(|v| !ids.contains(v))
        || ids.len() > 1 && cs.voters.len() == 1
    {
        return Err(IdentityError::Refused(format!(
            "{}: this directory belongs to group {group} of replicas {}, but --peers names {}: it is not this group's directory",
            store.path().display(),
            list(&cs.voters),
            list(ids)
        )));
    }
    if ids.len() <= 1 && cs.voters.len() > 1 {
        return Err(IdentityError::Refused(format!(
            "{}: this directory belongs to group {group} of replicas {}: give --peers with their addresses",
            store.path().display(),
            list(&cs.voters)
        )));
    }
    Ok(())
}

/// Every peer's answer to `Identify`.
async fn ask_all(transport: &Transport, id: u64, ids: &[u64]) -> BTreeMap<u64, Answer> {
    let asks = ids.iter().filter(|p| **p != id).map(|p| async move {
        let answer = match transport.identify(*p, Duration::from_secs(1)).await {
            Err(why) => Answer::Unreachable(why),
            // Someone else at that address: not an answer from that replica.
            Ok(r) if r.id != *p => Answer::Unreachable(format!(
                "replica {} answers at replica {p}'s address: check --peers",
                r.id
            )),
            Ok(r) if r.group.is_empty() => Answer::Blank,
            Ok(r) => match r.group.parse::<GroupId>() {
                Ok(group) => Answer::Member {
                    group,
                    members: r
                        .voters
                        .into_iter()
                        .chain(r.learners.iter().copied())
                        .collect(),
                    learners: r.learners,
                    applied: r.applied,
                    leader: r.leader,
                },
                Err(e) => Answer::Unreachable(e),
            },
        };
        (*p, answer)
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// The Raft service of a replica still settling its identity: it answers who it is, and
/// nothing else yet.
pub struct Waiting {
    pub membership: std::sync::Arc<Membership>,
    pub insecure: bool,
}

impl Waiting {
    fn not_yet<T>(&self) -> Result<T, Status> {
        Err(Status::unavailable(format!(
            "replica {} is waiting to bootstrap its group",
            self.membership.identity().id
        )))
    }
}

#[tonic::async_trait]
impl Raft for Waiting {
    async fn step(&self, _: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        self.not_yet()
    }
    async fn status(
        &self,
        _: Request<RaftStatusRequest>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        self.not_yet()
    }
    async fn acks(&self, _: Request<AcksRequest>) -> Result<Response<AckTable>, Status> {
        self.not_yet()
    }
    async fn identify(
        &self,
        req: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        require_replica(&req, self.insecure)?;
        Ok(Response::new(self.membership.answer(0, 0)))
    }
    async fn adopt(&self, _: Request<AdoptRequest>) -> Result<Response<AdoptResponse>, Status> {
        Err(Status::failed_precondition(
            "this replica holds no group yet: ask the one that created it",
        ))
    }
}

/// The caller must hold a replica certificate (any replica's).
pub fn require_replica<T>(req: &Request<T>, insecure: bool) -> Result<Vec<Caller>, Status> {
    let ids = auth::caller(req, insecure)?;
    if ids
        .iter()
        .any(|i| matches!(i, Caller::Anonymous | Caller::Replica(_)))
    {
        Ok(ids)
    } else {
        Err(Status::permission_denied(
            "the Raft service needs a replica certificate",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_replica::{Options, Replica};
    use palisade_storage::Create;

    /// A directory written before identities existed: its group is derived, and the lowest
    /// id records every other member as having taken part, so one of them that loses its
    /// directory cannot take the identity again.
    #[tokio::test]
    async fn a_directory_of_an_earlier_version_refuses_its_members_lost_directories() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStorage::open(&dir.path().join("raft"), Create::IfMissing).unwrap();
        // What an earlier version left: a configuration, a term and a vote, no identity.
        Replica::open(1, &[1, 2, 3], store.clone(), Options::default()).unwrap();
        let mut hs = raft::eraftpb::HardState::default();
        hs.set_term(4);
        hs.set_vote(2);
        store
            .write(palisade_storage::Write {
                hard_state: Some(hs),
                ..Default::default()
            })
            .unwrap();
        assert!(!store.is_blank() && store.identity().unwrap().is_none());
        let peers = (1..=3u64).map(|i| (i, "127.0.0.1:1".to_string())).collect();
        let transport = Transport::new(1, &peers, None).unwrap();
        let stop = CancellationToken::new();
        let found = settle(&store, 1, &[1, 2, 3], true, &transport, &stop)
            .await
            .unwrap();
        let group = identity::legacy_group(&[1, 2, 3]);
        assert_eq!(found.group, Some(group));
        assert_eq!(store.identity().unwrap(), Some(found.clone()));
        let members = Membership::new(store.clone(), found, vec![1, 2, 3]);
        let err = members
            .adopt(
                &[Caller::Anonymous],
                &AdoptRequest {
                    id: 2,
                    group: group.to_string(),
                    nonce: nonce(),
                },
            )
            .unwrap_err();
        assert!(err.message().contains("already took part"), "{err}");
    }
}
