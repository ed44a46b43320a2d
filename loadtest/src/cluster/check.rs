//! The checker, run at the end of every scenario once the churn has stopped and every fault
//! is healed:
//!
//! 1. every acknowledged change is in every replica's final state (each replica holds every
//!    object the model holds, as the model holds it and owned by the source that wrote it,
//!    and none of the objects the model deleted);
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

use super::channels::Channels;
use super::faults::Shared;
use super::model::Model;
use crate::fleet::Running;

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

/// Objects per GetObjects call (the controller takes at most 10,000).
const OBJECTS_PER_CALL: usize = 5_000;

async fn held(model: &Model, owner: &str, replicas: &Shared) -> anyhow::Result<Check> {
    let mut check = Check::new("acknowledged changes are in every replica's final state");
    let present: Vec<_> = model
        .objects()
        .into_iter()
        .filter_map(palisade_policy::manifest::Object::from_command)
        .collect();
    let keys: Vec<_> = present
        .iter()
        .map(|o| o.key())
        .chain(model.deleted.iter().cloned())
        .collect();
    let handle = replicas.lock().expect("replicas").handle();
    let mut channels = Channels::default();
    for id in handle.ids() {
        for (n, chunk) in keys.chunks(OBJECTS_PER_CALL).enumerate() {
            let (_, held) = channels.objects(&handle, id, chunk).await?;
            for (i, ((kind, name), got)) in chunk.iter().zip(held).enumerate() {
                let want = present.get(n * OBJECTS_PER_CALL + i);
                check.expect(
                    got.as_ref().map(|(w, o)| (w.as_str(), o)) == want.map(|o| (owner, o)),
                    || match (&got, want) {
                        (None, _) => format!("replica {id}: {kind} {name} is missing"),
                        (Some(_), None) => {
                            format!("replica {id}: {kind} {name} was deleted but is held")
                        }
                        (Some((w, o)), Some(want)) if w == owner => format!(
                            "replica {id}: {kind} {name} is held as {}; written as {}",
                            o.to_json(),
                            want.to_json()
                        ),
                        (Some((w, _)), Some(_)) => {
                            format!("replica {id}: {kind} {name} is owned by {w:?}, not {owner:?}")
                        }
                    },
                );
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
    owner: &str,
    replicas: &Shared,
) -> anyhow::Result<CheckReport> {
    let mut checks = vec![
        held(model, owner, replicas).await?,
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
