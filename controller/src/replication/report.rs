//! `ListReplicas`: every replica as the one asked sees it. Its own status first-hand; each
//! peer's own view of itself asked over the Raft service (bounded; an unreachable peer says
//! so), with when this replica last heard from it and, on the leader, how far its log is known
//! to be replicated.

use std::time::{Duration, Instant};

use futures::future::join_all;
use palisade_proto::v1::{ListReplicasResponse, ReplicaStatus};

use super::service::own_status;
use super::Group;

/// How long a peer may take to say where it stands.
const ASK: Duration = Duration::from_secs(1);

pub async fn list(
    group: &Group,
    hub: &crate::hub::Hub,
    reports: &crate::reports::Reports,
) -> ListReplicasResponse {
    let me = group.status();
    let contacts = group.contacts();
    let now = Instant::now();
    let refusing = group.refusing.borrow().clone();
    let mut replicas = vec![own_status(
        &me,
        group.address(),
        hub,
        reports,
        refusing.as_deref(),
    )];
    let peers: Vec<(u64, String)> = group
        .peers()
        .into_iter()
        .filter(|(id, _)| *id != group.id())
        .collect();
    let asked = join_all(
        peers
            .iter()
            .map(|(id, _)| group.transport.peer_status(*id, ASK)),
    )
    .await;
    for ((id, address), answer) in peers.into_iter().zip(asked) {
        let last_contact_ms = contacts
            .get(&id)
            .map(|t| now.saturating_duration_since(*t).as_millis() as u64);
        let matched = me
            .progress
            .iter()
            .find(|(p, _, _)| *p == id)
            .map_or(0, |(_, m, _)| *m);
        replicas.push(match answer {
            Ok(s) => ReplicaStatus {
                address,
                last_contact_ms,
                matched,
                ..s
            },
            Err(why) => ReplicaStatus {
                id,
                address,
                role: "unreachable".into(),
                // As its last table said (cleared once it has been unreachable a while).
                agents: hub.progress(|p| p.peers().agents(id)) as u64,
                last_contact_ms,
                matched,
                failure: why,
                ..ReplicaStatus::default()
            },
        });
    }
    ListReplicasResponse {
        self_id: me.raft.id,
        leader: me.raft.leader,
        term: me.raft.term,
        replicas,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
