//! The `palisade.v1.Raft` service of a replica: peers' batches of Raft messages into the
//! driver (the caller's certificate must name the replica a batch is from, and every message
//! must be from it to this one), their questions (status, identity, adoption), and the ack
//! table's long poll.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use palisade_proto::v1::raft_server::Raft;
use palisade_proto::v1::{
    AckTable, AcksRequest, AdoptRequest, AdoptResponse, IdentifyRequest, IdentifyResponse, RaftAck,
    RaftBatch, RaftStatusRequest, ReplicaStatus,
};
use palisade_replica::decode_message;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::driver::Input;
use super::transport::{Transport, RETIRED};
use super::{role_name, GroupStatus};
use crate::auth::{self, Identity};

/// The `palisade.v1.Raft` service: messages from peers into the driver.
pub struct RaftService {
    pub id: u64,
    pub insecure: bool,
    pub inbox: Mutex<Sender<Input>>,
    pub transport: Arc<Transport>,
    pub status: watch::Receiver<GroupStatus>,
    pub address: String,
    pub hub: Arc<crate::hub::Hub>,
    /// What the sources report (the Kubernetes watches' states, in the status).
    pub reports: Arc<crate::reports::Reports>,
    /// Why this replica refuses agents, when it does.
    pub refusing: watch::Receiver<Option<String>>,
    /// Who this replica is (its group), answered to peers and checked on their messages.
    pub membership: Arc<super::bootstrap::Membership>,
}

impl RaftService {
    fn authorize<T>(&self, req: &Request<T>, from: Option<u64>) -> Result<(), Status> {
        let ids = auth::caller(req, self.insecure)?;
        let ok = ids.iter().any(|i| match i {
            Identity::Anonymous => true,
            Identity::Replica(n) => from.is_none_or(|f| f == *n),
            _ => false,
        });
        if ok {
            return Ok(());
        }
        Err(Status::permission_denied(match from {
            Some(f) => format!(
                "Raft messages from replica {f} need its replica certificate (a URI SAN {})",
                palisade_proto::identity::replica_uri(f)
            ),
            None => "the Raft service needs a replica certificate".to_string(),
        }))
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn step(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let from = req.get_ref().from;
        self.authorize(&req, Some(from))?;
        let batch = req.into_inner();
        let own = self.membership.group_text();
        if !batch.group.is_empty() && batch.group != own {
            return Err(Status::failed_precondition(format!(
                "replica {from} is of another group ({}) than replica {} ({own}): its directory is not this group's",
                batch.group, self.id
            )));
        }
        if batch.to != self.id {
            return Err(Status::failed_precondition(format!(
                "this is replica {}, not {}: check --peers",
                self.id, batch.to
            )));
        }
        if self.transport.is_retired(from) {
            return Err(Status::failed_precondition(format!(
                "replica {from} {RETIRED}"
            )));
        }
        let mut decoded = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            let m = decode_message(bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))?;
            if m.from != from || m.to != self.id {
                return Err(Status::permission_denied(format!(
                    "a message from {} to {} in a batch from {from} to {}",
                    m.from, m.to, self.id
                )));
            }
            decoded.push(m);
        }
        self.transport.heard(from);
        let inbox = self.inbox.lock().expect("inbox lock").clone();
        for m in decoded {
            inbox
                .send(Input::Step(m))
                .map_err(|_| Status::unavailable("this replica is shutting down"))?;
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn status(
        &self,
        req: Request<RaftStatusRequest>,
    ) -> Result<Response<ReplicaStatus>, Status> {
        self.authorize(&req, None)?;
        // Copies first: a borrow held while waiting for the ack table's lock would hold up
        // the Raft driver's status updates.
        let status = self.status.borrow().clone();
        let refusing = self.refusing.borrow().clone();
        Ok(Response::new(own_status(
            &status,
            &self.address,
            &self.hub,
            &self.reports,
            refusing.as_deref(),
        )))
    }

    async fn acks(&self, req: Request<AcksRequest>) -> Result<Response<AckTable>, Status> {
        let from = req.get_ref().from;
        self.authorize(&req, Some(from))?;
        Ok(Response::new(
            super::exchange::answer(&self.hub, req.get_ref()).await,
        ))
    }

    async fn identify(
        &self,
        req: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        super::bootstrap::require_replica(&req, self.insecure)?;
        let (applied, leader) = {
            let s = self.status.borrow();
            (s.applied, s.raft.leader)
        };
        Ok(Response::new(self.membership.answer(applied, leader)))
    }

    async fn adopt(&self, req: Request<AdoptRequest>) -> Result<Response<AdoptResponse>, Status> {
        let ids = super::bootstrap::require_replica(&req, self.insecure)?;
        let id = req.get_ref().id;
        let status = self.status.borrow().clone();
        if status.members.learners.contains(&id) {
            // Only the leader hands a learner the group's identity, and only while it has
            // sent it nothing: a learner it sent entries to and that asks again lost its
            // directory (the leader would send it a commit index beyond its empty log).
            if !status.is_leader() {
                return Err(Status::unavailable(format!(
                    "a learner takes the group's identity from the leader (replica {})",
                    status.raft.leader
                )));
            }
            let matched = status
                .progress
                .iter()
                .find(|(p, _, _)| *p == id)
                .map_or(0, |(_, m, _)| *m);
            if matched > 0 {
                return Err(Status::failed_precondition(format!(
                    "learner {id} received the log up to {matched} already, and its directory no longer holds it: remove it (palisadectl replicas remove {id}) and add the replica under a new id"
                )));
            }
        }
        let mut answer = self.membership.adopt(&ids, req.get_ref())?;
        answer.addresses = self.transport.addresses().into_iter().collect();
        answer.addresses.insert(self.id, self.address.clone());
        answer.retired = self.transport.retired().into_iter().collect();
        Ok(Response::new(answer))
    }
}

/// This replica's status as introspection shows it.
pub fn own_status(
    s: &GroupStatus,
    address: &str,
    hub: &crate::hub::Hub,
    reports: &crate::reports::Reports,
    refusing: Option<&str>,
) -> ReplicaStatus {
    let agents = hub.acks().connected() as u64;
    ReplicaStatus {
        id: s.raft.id,
        address: address.to_string(),
        role: if s.members.learners.contains(&s.raft.id) {
            "learner".to_string()
        } else {
            role_name(s.raft.role).to_string()
        },
        term: s.raft.term,
        commit: s.raft.commit,
        applied: s.applied,
        last_contact_ms: Some(0),
        snapshot: s.raft.snapshot,
        failure: s.failure.clone().unwrap_or_default(),
        matched: s.raft.last_index,
        agents,
        refusing_agents: refusing.unwrap_or_default().to_string(),
        watches: reports.kube.to_pb(),
    }
}
