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
use palisade_proto::v1::admin_server::Admin;
use palisade_proto::v1::{ApplyRequest, ApplyResponse, ObjectChange};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::{self, Identity};
use crate::hub::Hub;
use crate::replication::{Group, ProposeFailed};
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

    async fn forward(
        &self,
        mut req: ApplyRequest,
        leader: u64,
    ) -> Result<Response<ApplyResponse>, Status> {
        if req.hops > 0 || leader == 0 || leader == self.group.id() {
            return Err(Status::unavailable(
                "no leader is elected right now (the group may be electing one, or lack a quorum); retry shortly",
            ));
        }
        let mut client = self.group.transport.admin(leader).ok_or_else(|| {
            Status::unavailable(format!("the leader {leader} is not a known peer"))
        })?;
        req.hops += 1;
        client.apply(req).await
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        authorize(&req, self.insecure)?;
        let received = std::time::Instant::now();
        let req = req.into_inner();
        let (objects, warnings) = self.objects(&req)?;
        let status = self.group.status();
        if !status.is_leader() {
            return self.forward(req, status.raft.leader).await;
        }
        if !self.group.caught_up(Duration::from_secs(5)).await {
            return Err(Status::unavailable(
                "this leader has not applied what was committed before it yet; retry shortly",
            ));
        }
        let mut changes = Vec::new();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        let mut foreign = Vec::new();
        let applied = {
            let st = self.hub.lock();
            for (key, object) in objects {
                let owner = st.machine.owner(&key);
                if let Some(o) = owner.filter(|o| *o != OWNER) {
                    foreign.push(format!("{} {} is managed by {o}", key.0, key.1));
                    continue;
                }
                let current = owner.and_then(|_| st.machine.object(&key));
                let action = match (req.delete, current) {
                    (true, Some(c)) => {
                        deletes.push(c);
                        "deleted"
                    }
                    (true, None) => "not found",
                    (false, Some(c)) if c == object => "unchanged",
                    (false, Some(_)) => {
                        upserts.push(object);
                        "configured"
                    }
                    (false, None) => {
                        upserts.push(object);
                        "created"
                    }
                };
                changes.push(ObjectChange {
                    kind: key.0.to_string(),
                    name: key.1,
                    action: action.into(),
                });
            }
            st.revision()
        };
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
            let revision = self
                .group
                .propose(OWNER, commands)
                .await
                .map_err(|e| match e {
                    ProposeFailed::NotLeader { .. } | ProposeFailed::Lost => {
                        Status::unavailable(e.to_string())
                    }
                    ProposeFailed::Stopped(_) => Status::internal(e.to_string()),
                })?;
            info!(
                revision,
                changes = n,
                delete = req.delete,
                "applied by an operator"
            );
            revision
        };
        Ok(Response::new(ApplyResponse {
            revision,
            changes,
            warnings,
            leader: self.group.id(),
        }))
    }
}
