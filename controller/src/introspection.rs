//! The `palisade.v1.Introspection` service (contracts.md §7): nodes, slices, rollout
//! state, revisions, flow explanations and rejected objects. Operators only (see `auth`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::k8s::Kind;
use palisade_policy::manifest::{Key, Object};
use palisade_policy::model::{Name, ObjKey};
use palisade_proto::convert;
use palisade_proto::v1::introspection_server::Introspection;
use palisade_proto::v1::{self as pb};
use tonic::{Request, Response, Status};

use palisade_policy::engine::NodeSummary;
use palisade_policy::NodeSlice;

use crate::hub::{Hub, Progress};
use crate::lint::Linter;
use crate::reports::Reports;

mod explain;
use crate::replication::{Freshness, Group};

pub struct IntrospectionService {
    hub: Arc<Hub>,
    group: Group,
    reports: Arc<Reports>,
    linter: Arc<Linter>,
}

impl IntrospectionService {
    pub fn new(
        hub: Arc<Hub>,
        group: Group,
        reports: Arc<Reports>,
        linter: Arc<Linter>,
    ) -> IntrospectionService {
        IntrospectionService {
            hub,
            group,
            reports,
            linter,
        }
    }
}

/// Longest a WaitRevision may wait.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Longest a consistent read waits for the leader's confirmation and for this replica to
/// apply what it confirmed.
const CONFIRM_WAIT: Duration = Duration::from_secs(3);

/// Most objects one GetObjects call may ask for.
const MAX_OBJECTS: usize = 10_000;

/// The keys a GetObjects request names, each checked (the position of a bad one is named).
fn object_keys(req: &pb::GetObjectsRequest) -> Result<Vec<Key>, Status> {
    if req.objects.len() > MAX_OBJECTS {
        return Err(Status::invalid_argument(format!(
            "objects: {} asked for, at most {MAX_OBJECTS} a call",
            req.objects.len()
        )));
    }
    req.objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let kind: Kind = o
                .kind
                .parse()
                .map_err(|e| Status::invalid_argument(format!("objects[{i}].kind: {e}")))?;
            if kind != Kind::Namespace {
                o.name
                    .parse::<ObjKey>()
                    .map_err(|e| Status::invalid_argument(format!("objects[{i}].name: {e}")))?;
            } else if o.name.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "objects[{i}].name: a namespace's name is required"
                )));
            }
            Ok((kind, o.name.clone()))
        })
        .collect()
}

/// `node`'s status: its slice's `summary` (from the applied state; `None` for a node without
/// a slice) and what its agent and the peers said.
fn node_status(
    summary: Option<&NodeSummary>,
    p: &Progress,
    node: &str,
    now: Instant,
) -> pb::NodeStatus {
    let (desired, desired_digest) = summary.map_or_else(
        || (0, NodeSlice::empty(node).digest()),
        |s| (s.version, s.digest),
    );
    let r = p.rollout().node(node);
    let at = p.connected_at(node);
    let acked = r.map_or(0, |r| r.acked_version);
    pb::NodeStatus {
        node: node.to_string(),
        desired_version: desired,
        desired_digest: desired_digest.to_hex(),
        acked_version: acked,
        acked_digest: r
            .and_then(|r| r.acked_digest)
            .map(|d| d.to_hex())
            .unwrap_or_default(),
        connected: at.is_some(),
        replica: at.unwrap_or(0),
        lag_revisions: desired.saturating_sub(acked),
        lag_seconds: r.map_or(0.0, |r| r.lag(now).as_secs_f64()),
        nack_version: r.and_then(|r| r.nack.as_ref()).map_or(0, |(v, _)| *v),
        nack_error: r
            .and_then(|r| r.nack.as_ref())
            .map(|(_, e)| e.clone())
            .unwrap_or_default(),
        pods: summary.as_ref().map_or(0, |s| s.pods as u32),
        endpoints: summary.as_ref().map_or(0, |s| s.endpoints as u32),
        sets: summary.as_ref().map_or(0, |s| s.sets as u32),
        agent_version: r.map(|r| r.agent.version.clone()).unwrap_or_default(),
        slice: None,
        failed_closed: r.map(|r| r.failed_closed.clone()).unwrap_or_default(),
        capacity_warning: r.map(|r| r.capacity_warning.clone()).unwrap_or_default(),
        capacities: r.map(|r| pb::Capacities {
            endpoints: r.agent.capacities[0],
            identities: r.agent.capacities[1],
            rules: r.agent.capacities[2],
        }),
        dataplane: r.map_or(0, |r| r.agent.dataplane),
        freshness: None,
    }
}

/// Nodes the controller knows: with pods, or with an agent that connected.
fn known_nodes<'a>(slices: impl Iterator<Item = &'a Name>, p: &Progress) -> BTreeSet<Name> {
    let mut names: BTreeSet<Name> = slices.cloned().collect();
    names.extend(p.rollout().nodes().map(|(n, _)| n.clone()));
    names
}

/// Where `revision` stands, with `latest` the latest revision applied (read after `p`'s lock
/// was taken: the writer publishes a revision before the rollout hears of it).
fn revision_status(latest: u64, p: &Progress, revision: u64) -> pb::RevisionStatus {
    pb::RevisionStatus {
        revision,
        latest_revision: latest,
        realized: p.rollout().is_realized(revision) && revision <= latest,
        realized_through: p.rollout().realized_through(),
        lagging: p
            .rollout()
            .lagging(revision)
            .into_iter()
            .map(|l| pb::LaggingNode {
                node: l.node.to_string(),
                needed_version: l.needed_version,
                acked_version: l.acked_version,
                connected: p.connected_at(&l.node).is_some(),
                nack_error: l.nack.unwrap_or_default(),
            })
            .collect(),
    }
}

impl IntrospectionService {
    /// Where `revision` stands now.
    fn revision_status(&self, revision: u64) -> pb::RevisionStatus {
        self.hub
            .progress(|p| revision_status(self.hub.view().revision(), p, revision))
    }

    /// How fresh an answer served now is; with `consistent`, confirmed with the leader first
    /// (or UNAVAILABLE, saying why).
    async fn freshness(&self, consistent: bool) -> Result<Freshness, Status> {
        if !consistent {
            return Ok(self.group.freshness());
        }
        self.group.read_index(CONFIRM_WAIT).await.map_err(|why| {
            Status::unavailable(format!(
                "replica {} cannot confirm a consistent read: {why}; ask another replica, or read without --consistent",
                self.group.id()
            ))
        })
    }
}

/// `f` for an answer served at `revision` (read under the same lock as the answer).
fn stamp(mut f: Freshness, revision: u64) -> Option<pb::Freshness> {
    f.revision = revision;
    f.commit = f.commit.max(revision);
    Some(f.to_pb())
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let fresh = self.freshness(req.get_ref().consistent).await?;
        let now = Instant::now();
        let (revision, slices) = self
            .hub
            .ask(|st| (st.revision(), st.engine().nodes()))
            .await?;
        let slices: std::collections::HashMap<&Name, &NodeSummary> =
            slices.iter().map(|s| (&s.node, s)).collect();
        let nodes = self.hub.progress(|p| {
            known_nodes(slices.keys().copied(), p)
                .iter()
                .map(|n| node_status(slices.get(n).copied(), p, n, now))
                .collect()
        });
        Ok(Response::new(pb::ListNodesResponse {
            revision,
            nodes,
            freshness: stamp(fresh, revision),
        }))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let req = req.into_inner();
        let fresh = self.freshness(req.consistent).await?;
        let (node, include_slice) = (req.node.clone(), req.include_slice);
        let (revision, summary, slice) = self
            .hub
            .ask(move |st| {
                let slice = include_slice.then(|| st.engine().slice(&node));
                (st.revision(), st.engine().node(&node), slice)
            })
            .await?;
        let mut status = self.hub.progress(|p| {
            if summary.is_none() && p.rollout().node(&req.node).is_none() {
                return Err(Status::not_found(format!(
                    "no node {} (no pod is scheduled there and no agent connected)",
                    req.node
                )));
            }
            Ok(node_status(summary.as_ref(), p, &req.node, Instant::now()))
        })?;
        status.slice = slice.as_ref().map(convert::slice_to_pb);
        status.freshness = stamp(fresh, revision);
        Ok(Response::new(status))
    }

    async fn get_revision(
        &self,
        req: Request<pb::RevisionRequest>,
    ) -> Result<Response<pb::RevisionStatus>, Status> {
        let revision = req.into_inner().revision;
        Ok(Response::new(self.revision_status(revision)))
    }

    async fn wait_revision(
        &self,
        req: Request<pb::WaitRevisionRequest>,
    ) -> Result<Response<pb::RevisionStatus>, Status> {
        let req = req.into_inner();
        let timeout = Duration::from_millis(req.timeout_ms).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut realized = self.hub.realized();
        let mut revisions = self.hub.revisions();
        loop {
            let status = self.revision_status(req.revision);
            if status.realized || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(status));
            }
            tokio::select! {
                _ = realized.changed() => {}
                _ = revisions.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn explain_flow(
        &self,
        req: Request<pb::ExplainFlowRequest>,
    ) -> Result<Response<pb::FlowExplanation>, Status> {
        let req = req.into_inner();
        let fresh = self.freshness(req.consistent).await?;
        let (revision, mut answer) = self
            .hub
            .ask(move |st| explain::flow(st, &req).map(|a| (st.revision(), a)))
            .await??;
        answer.freshness = stamp(fresh, revision);
        Ok(Response::new(answer))
    }

    async fn list_rejected(
        &self,
        _req: Request<pb::ListRejectedRequest>,
    ) -> Result<Response<pb::ListRejectedResponse>, Status> {
        let objects = self
            .reports
            .rejected()
            .into_iter()
            .map(|r| pb::RejectedObject {
                source: r.source,
                kind: r.kind,
                object: r.object,
                errors: r.errors,
                applied: r.applied,
            })
            .collect();
        let linter = self.linter.clone();
        let lint =
            tokio::task::spawn_blocking(move || linter.lint(crate::lint::ASKED_AT_MOST_EVERY))
                .await
                .map_err(|e| Status::internal(format!("lint failed: {e}")))?;
        let findings = lint
            .findings
            .iter()
            .map(|f| pb::LintFinding {
                kind: f.kind.clone(),
                object: f.object.clone(),
                field: f.field.clone(),
                check: f.check.to_string(),
                message: f.message.clone(),
                suggestion: f.suggestion.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListRejectedResponse {
            objects,
            findings,
            lint_revision: lint.revision,
        }))
    }

    async fn get_objects(
        &self,
        req: Request<pb::GetObjectsRequest>,
    ) -> Result<Response<pb::GetObjectsResponse>, Status> {
        let keys = object_keys(req.get_ref())?;
        let fresh = self.freshness(req.get_ref().consistent).await?;
        // Cloned by the apply thread, encoded here.
        let (revision, held): (u64, Vec<_>) = self
            .hub
            .ask(move |st| {
                let held = keys
                    .into_iter()
                    .map(|key| {
                        let owner = st.machine().owner(&key).map(str::to_string);
                        let object = owner.as_ref().and_then(|_| st.machine().object(&key));
                        (key, owner, object)
                    })
                    .collect();
                (st.revision(), held)
            })
            .await?;
        let objects = held
            .into_iter()
            .map(|((kind, name), owner, object)| pb::HeldObject {
                kind: kind.to_string(),
                name,
                found: object.is_some(),
                owner: owner.unwrap_or_default(),
                json: object.as_ref().map(Object::to_json).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::GetObjectsResponse {
            revision,
            objects,
            freshness: stamp(fresh, revision),
        }))
    }

    async fn list_replicas(
        &self,
        _req: Request<pb::ListReplicasRequest>,
    ) -> Result<Response<pb::ListReplicasResponse>, Status> {
        Ok(Response::new(
            crate::replication::report::list(&self.group, &self.hub, &self.reports).await,
        ))
    }
}
