//! The checker, run at the end of every scenario once the churn has stopped and every fault
//! is healed:
//!
//! 1. every change the store acknowledged is in its final state (a dry run of every object
//!    the model holds changes nothing; a dry-run delete of every object it deleted finds
//!    nothing);
//! 2. every replica's desired digest of every node is that of a fresh compile of the model's
//!    final objects;
//! 3. every agent's versions only ever went up;
//! 4. no agent acked a digest that differs from the one its node's slice has at that
//!    version (the model's replay of the acknowledged changes, which check 2 ties to the
//!    replicas);
//! 5. every agent ends at the digest of the fresh compile.

use std::collections::BTreeMap;

use palisade_policy::engine::Engine;
use palisade_policy::Digest;
use serde::Serialize;

use super::faults::Shared;
use super::model::Model;
use super::store::Store;
use crate::fleet::Running;
use crate::manifests;

const EXAMPLES: usize = 10;

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub checked: u64,
    pub failures: u64,
    /// The first few failures, each saying what differs where.
    pub examples: Vec<String>,
}

impl Check {
    fn new(name: &'static str) -> Check {
        Check {
            name,
            checked: 0,
            failures: 0,
            examples: Vec::new(),
        }
    }

    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.failures += 1;
            if self.examples.len() < EXAMPLES {
                self.examples.push(what());
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub passed: bool,
    pub checks: Vec<Check>,
}

/// The digest of every agent's node in a fresh compile of the model's final objects.
pub fn fresh(model: &Model, nodes: &[String]) -> BTreeMap<String, Digest> {
    let engine = Engine::load(1, model.objects());
    nodes
        .iter()
        .map(|n| (n.clone(), engine.slice(n).digest()))
        .collect()
}

async fn in_store(model: &Model, store: &mut Store, replicas: &Shared) -> anyhow::Result<Check> {
    let mut check = Check::new("acknowledged changes are in the final state");
    let present: Vec<String> = model
        .objects()
        .iter()
        .filter_map(manifests::document)
        .collect();
    let deleted: Vec<String> = model
        .deleted
        .values()
        .filter_map(manifests::document)
        .collect();
    for (docs, delete, want) in [(present, false, "unchanged"), (deleted, true, "not found")] {
        for chunk in docs.chunks(500) {
            for (kind, name, action) in store.dry_run(replicas, chunk.to_vec(), delete).await? {
                check.expect(action == want, || {
                    format!("{kind} {name}: {action} (expected {want})")
                });
            }
        }
    }
    Ok(check)
}

async fn replicas_agree(
    fresh: &BTreeMap<String, Digest>,
    replicas: &Shared,
) -> anyhow::Result<Check> {
    let mut check = Check::new("every replica's slices are a fresh compile's");
    let handle = replicas.lock().expect("replicas").handle();
    for id in handle.ids() {
        let mut client = palisadectl::remote::client(&handle.conn(id)).await?;
        let nodes = client
            .list_nodes(palisade_proto::v1::ListNodesRequest::default())
            .await?
            .into_inner()
            .nodes;
        let desired: BTreeMap<&str, &str> = nodes
            .iter()
            .map(|n| (n.node.as_str(), n.desired_digest.as_str()))
            .collect();
        for (node, want) in fresh {
            let got = desired
                .get(node.as_str())
                .copied()
                .unwrap_or("(no such node)");
            check.expect(got == want.to_hex(), || {
                format!("replica {id}, node {node}: digest {got}, a fresh compile gives {want}")
            });
        }
    }
    Ok(check)
}

/// Run every check. `agents` must have stopped changing (churn over, faults healed).
pub async fn run(
    model: &Model,
    fresh: &BTreeMap<String, Digest>,
    agents: &[Running],
    store: &mut Store,
    replicas: &Shared,
) -> anyhow::Result<CheckReport> {
    let mut checks = vec![
        in_store(model, store, replicas).await?,
        replicas_agree(fresh, replicas).await?,
    ];
    let mut up = Check::new("every agent's versions only went up");
    let mut acks = Check::new("every ack names its version's digest");
    let mut end = Check::new("every agent ends at a fresh compile's digest");
    for a in agents {
        let installs = a.installs.lock().expect("installs").clone();
        for w in installs.windows(2) {
            up.expect(w[1].version >= w[0].version, || {
                format!(
                    "{}: version {} after {}",
                    a.node, w[1].version, w[0].version
                )
            });
        }
        for i in &installs {
            let want = model.expected(&a.node, i.version);
            acks.expect(want == Some(i.digest), || match want {
                Some(w) => format!(
                    "{} acked version {} with digest {}; the slice at that version has {w}",
                    a.node, i.version, i.digest
                ),
                None => format!(
                    "{} acked version {}, at which its slice did not change",
                    a.node, i.version
                ),
            });
        }
        let held = a.status.borrow().digest;
        let want = fresh.get(&a.node).copied().unwrap_or_default();
        end.expect(held == want, || {
            format!("{} holds {held}; a fresh compile gives {want}", a.node)
        });
    }
    checks.extend([up, acks, end]);
    Ok(CheckReport {
        passed: checks.iter().all(|c| c.failures == 0),
        checks,
    })
}
