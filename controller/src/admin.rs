//! The standalone store's API (`palisade.v1.Admin`): objects operators send with
//! `palisadectl apply -f` / `delete -f`, validated as the Kubernetes API server would
//! (strict fields included), committed through the Raft log as one entry owned by
//! [`OWNER`], answered once applied with the revision. Any replica takes the call; a follower
//! forwards it to the leader. Objects another source owns (a manifests directory, later
//! Kubernetes) are refused by name: one source never overwrites or deletes another's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use palisade_policy::manifest::{Key, Limits, Object};
use palisade_proto::v1::admin_client::AdminClient;
use palisade_proto::v1::admin_server::Admin;
use palisade_proto::v1::{
    ApplyRequest, ApplyResponse, ObjectChange, ReplicaChangeRequest, ReplicaChangeResponse,
};
use palisade_replica::membership::{Kind, Refused};
use palisade_replica::Change;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::applied::State;
use crate::auth::{self, Identity};
use crate::hub::Hub;
use crate::replication::{ChangeFailed, Group, ProposeFailed};
use crate::source::file;
use crate::source::watch::rejection_line;

/// The owner of objects sent through the admin API.
pub const OWNER: &str = "palisadectl";

pub struct AdminService {
    pub hub: Arc<Hub>,
    pub group: Group,
    pub insecure: bool,
    pub limits: Limits,
}

fn authorize<T>(req: &Request<T>, insecure: bool) -> Result<(), Status> {
    let ids = auth::caller(req, insecure)?;
    if ids.iter().any(|i| {
        matches!(
            i,
            Identity::Operator(_) | Identity::Replica(_) | Identity::Anonymous
        )
    }) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "apply and delete need an operator certificate (a URI SAN {}NAME)",
        palisade_proto::identity::OPERATOR
    )))
}

impl AdminService {
    /// Parse and validate every document; every problem is reported, and nothing is taken
    /// unless all are valid.
    fn objects(&self, req: &ApplyRequest) -> Result<(BTreeMap<Key, Object>, Vec<String>), Status> {
        let ns = if req.default_namespace.is_empty() {
            "default"
        } else {
            &req.default_namespace
        };
        let mut objects = BTreeMap::new();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        for doc in &req.documents {
            if doc.text.len() > self.limits.max_bytes {
                problems.push(format!(
                    "{}: {} bytes, more than the {} allowed",
                    doc.source,
                    doc.text.len(),
                    self.limits.max_bytes
                ));
                continue;
            }
            let content = file::parse(&doc.source, &doc.text, &self.limits, ns);
            problems.extend(content.problems.iter().map(rejection_line));
            warnings.extend(content.warnings);
            for (k, o) in content.objects {
                if objects.contains_key(&k) {
                    problems.push(format!(
                        "{}: {} {} is given more than once",
                        doc.source, k.0, k.1
                    ));
                    continue;
                }
                objects.insert(k, o);
            }
        }
        if !problems.is_empty() {
            return Err(Status::invalid_argument(format!(
                "nothing was applied; {} problem(s):\n{}",
                problems.len(),
                problems.join("\n")
            )));
        }
        if objects.is_empty() {
            return Err(Status::invalid_argument(
                "no Namespace, Pod or NetworkPolicy in what was given",
            ));
        }
        Ok((objects, warnings))
    }

    /// The admin client of `leader`, to forward a call that went through `hops` replicas
    /// (at most `max_hops`) already; or why there is none.
    fn leader_client(
        &self,
        leader: u64,
        hops: u32,
        max_hops: u32,
    ) -> Result<AdminClient<Channel>, Status> {
        if hops > max_hops || leader == 0 || leader == self.group.id() {
            return Err(Status::unavailable(
                "no leader is elected right now (the group may be electing one, or lack a quorum); retry shortly",
            ));
        }
        self.group
            .transport
            .admin(leader)
            .ok_or_else(|| Status::unavailable(format!("the leader {leader} is not a known peer")))
    }

    async fn forward(
        &self,
        mut req: ApplyRequest,
        leader: u64,
    ) -> Result<Response<ApplyResponse>, Status> {
        let mut client = self.leader_client(leader, req.hops, 0)?;
        req.hops += 1;
        client.apply(req).await
    }

    /// Wait (a few seconds at most) for a leader other than this replica, after handing
    /// leadership over.
    async fn new_leader(&self) -> u64 {
        self.leader_known(true).await
    }

    /// Wait (10 s at most) until this replica knows a leader (`other`: one other than
    /// itself); 0 when it does not.
    async fn leader_known(&self, other: bool) -> u64 {
        let mut w = self.group.watch();
        let me = self.group.id();
        let found = tokio::time::timeout(
            Duration::from_secs(10),
            w.wait_for(|s| s.raft.leader != 0 && !(other && s.raft.leader == me)),
        )
        .await;
        match found {
            Ok(Ok(s)) => s.raft.leader,
            _ => 0,
        }
    }
}

/// Membership changes are an operator's (or a replica forwarding one's).
fn authorize_change(req: &Request<ReplicaChangeRequest>, insecure: bool) -> Result<(), Status> {
    let ids = auth::caller(req, insecure)?;
    let forwarded = req.get_ref().hops > 0;
    if ids.iter().any(|i| match i {
        Identity::Operator(_) | Identity::Anonymous => true,
        Identity::Replica(_) => forwarded,
        _ => false,
    }) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "changing the group's membership needs an operator certificate (a URI SAN {}NAME)",
        palisade_proto::identity::OPERATOR
    )))
}

/// The change an operator's request asks for, or what is wrong with it.
fn requested_change(req: &ReplicaChangeRequest) -> Result<Change, Status> {
    let kind = match req.action.as_str() {
        "add" => Kind::AddLearner,
        "remove" => Kind::Remove,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown membership action {other:?}: \"add\" or \"remove\""
            )))
        }
    };
    if req.id == 0 {
        return Err(Status::invalid_argument("a replica id is a number from 1"));
    }
    if kind == Kind::AddLearner {
        crate::replication::parse_peers(&format!("{}={}", req.id, req.address), req.id)
            .map_err(|e| Status::invalid_argument(e.to_string().replace("--peers: ", "")))?;
    }
    Ok(Change {
        kind,
        id: req.id,
        address: req.address.trim().to_string(),
        request: 0,
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn change_replicas(
        &self,
        req: Request<ReplicaChangeRequest>,
    ) -> Result<Response<ReplicaChangeResponse>, Status> {
        authorize_change(&req, self.insecure)?;
        let mut req = req.into_inner();
        let change = requested_change(&req)?;
        let mut leader = self.group.status().raft.leader;
        if leader == 0 {
            // An election (a leader that just handed over forwards here before this replica
            // has heard it won): wait for it rather than refuse.
            leader = self.leader_known(false).await;
        }
        if self.group.status().is_leader() {
            // A change still being committed (or a new leader's first entry, before which
            // raft-rs takes none) clears within moments: wait a little for it. So does a
            // quorum that looks short because a replica just came back (it answers within an
            // election timeout or two): looked at again for a few seconds before refusing.
            let until = std::time::Instant::now() + Duration::from_secs(5);
            let quorum_until = std::time::Instant::now() + Duration::from_secs(3);
            let answer = loop {
                // Removals applied here, and those handed out and not applied yet.
                let mut retired = self.hub.ask(|st| st.machine().retired().clone()).await?;
                retired.extend(self.group.transport.retired());
                match self.group.change(change.clone(), retired).await {
                    Err(ChangeFailed::Refused(Refused::Pending))
                        if std::time::Instant::now() < until =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(ChangeFailed::Refused(Refused::NoQuorum { .. }))
                        if std::time::Instant::now() < quorum_until =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    other => break other,
                }
            };
            match answer {
                Ok((index, members)) => {
                    info!(index, replica = change.id, kind = ?change.kind, "membership changed by an operator");
                    return Ok(Response::new(ReplicaChangeResponse {
                        index,
                        voters: members.voters.into_iter().collect(),
                        learners: members.learners.into_iter().collect(),
                        leader: self.group.id(),
                    }));
                }
                Err(ChangeFailed::Handing { .. }) => leader = self.new_leader().await,
                Err(e @ ChangeFailed::Refused(_)) => {
                    return Err(Status::failed_precondition(e.to_string()))
                }
                Err(e @ ChangeFailed::Propose(ProposeFailed::NotLeader { .. })) => {
                    return Err(Status::unavailable(e.to_string()))
                }
                Err(e) => return Err(Status::unavailable(e.to_string())),
            }
        }
        // Twice at most: a follower to the leader, which may hand leadership over once.
        let mut client = self.leader_client(leader, req.hops, 1)?;
        req.hops += 1;
        client.change_replicas(req).await
    }

    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        authorize(&req, self.insecure)?;
        let received = std::time::Instant::now();
        let req = req.into_inner();
        let (objects, mut warnings) = self.objects(&req)?;
        let status = self.group.status();
        if !status.is_leader() {
            return self.forward(req, status.raft.leader).await;
        }
        if !self.group.caught_up(Duration::from_secs(5)).await {
            return Err(Status::unavailable(
                "this leader has not applied what was committed before it yet; retry shortly",
            ));
        }
        let delete = req.delete;
        let Planned {
            mut changes,
            keys,
            upserts,
            deletes,
            foreign,
            revision: applied,
        } = self.hub.ask(move |st| plan(st, objects, delete)).await?;
        if !foreign.is_empty() {
            return Err(Status::failed_precondition(format!(
                "nothing was applied: {}; change it there",
                foreign.join(", ")
            )));
        }
        let commands = file::commands(upserts, deletes);
        let revision = if commands.is_empty() || req.dry_run {
            applied
        } else {
            let n = commands.len();
            self.hub.metrics.stage("ingest", received.elapsed());
            let committed = self
                .group
                .propose(OWNER, commands)
                .await
                .map_err(|e| match e {
                    ProposeFailed::NotLeader { .. } | ProposeFailed::Lost => {
                        Status::unavailable(e.to_string())
                    }
                    ProposeFailed::Stopped(_) => Status::internal(e.to_string()),
                })?;
            // What was read above only saved a useless proposal: the state machine decides.
            // Another source may have taken an object between that read and the commit.
            for (c, key) in changes.iter_mut().zip(&keys) {
                if let Some(o) = committed.refused.get(key) {
                    warnings.push(format!(
                        "{} {} was taken by {o} before this apply committed: it was not applied; change it there",
                        c.kind, c.name
                    ));
                    c.action = "refused".into();
                }
            }
            info!(
                revision = committed.revision,
                changes = n,
                refused = committed.refused.len(),
                delete = req.delete,
                "applied by an operator"
            );
            committed.revision
        };
        Ok(Response::new(ApplyResponse {
            revision,
            changes,
            warnings,
            leader: self.group.id(),
        }))
    }
}

/// What an apply of `objects` (or their delete) would do, read from the applied state: each
/// change with its key, what to upsert and delete, the objects another source holds, and the
/// revision read. Only a look ahead: the state machine decides ownership when it applies.
struct Planned {
    changes: Vec<ObjectChange>,
    /// The key of each change, in the same order.
    keys: Vec<Key>,
    upserts: Vec<Object>,
    deletes: Vec<Object>,
    foreign: Vec<String>,
    revision: u64,
}

fn plan(st: &State, objects: BTreeMap<Key, Object>, delete: bool) -> Planned {
    let mut p = Planned {
        changes: Vec::new(),
        keys: Vec::new(),
        upserts: Vec::new(),
        deletes: Vec::new(),
        foreign: Vec::new(),
        revision: st.revision(),
    };
    for (key, object) in objects {
        let owner = st.machine().owner(&key);
        if let Some(o) = owner.filter(|o| *o != OWNER) {
            p.foreign
                .push(format!("{} {} is managed by {o}", key.0, key.1));
            continue;
        }
        let current = owner.and_then(|_| st.machine().object(&key));
        let action = match (delete, current) {
            (true, Some(c)) => {
                p.deletes.push(c);
                "deleted"
            }
            (true, None) => "not found",
            (false, Some(c)) if c == object => "unchanged",
            (false, Some(_)) => {
                p.upserts.push(object);
                "configured"
            }
            (false, None) => {
                p.upserts.push(object);
                "created"
            }
        };
        p.keys.push(key.clone());
        p.changes.push(ObjectChange {
            kind: key.0.to_string(),
            name: key.1,
            action: action.into(),
        });
    }
    p
}
