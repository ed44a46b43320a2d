//! What a log entry holds: a batch of commands from one source, applied together at the
//! entry's index. The encoding is versioned JSON of the policy model, whose maps are ordered,
//! so every replica decodes the same commands from the same bytes.

use palisade_policy::model::Command;
use serde::{Deserialize, Serialize};

/// Who proposed an entry: the replica, the term it led in, and its proposal sequence, so the
/// proposer can tell its own proposals from others' when they are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub replica: u64,
    #[serde(default)]
    pub term: u64,
    pub seq: u64,
}

/// One entry's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: ProposalId,
    /// The source the commands come from (a manifests directory, `palisadectl apply`, …): a
    /// source's reconcile never touches another's objects.
    pub owner: String,
    pub commands: Vec<Command>,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    batch: Batch,
}

const VERSION: u32 = 1;

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            v: VERSION,
            batch: self.clone(),
        })
        .expect("the policy model serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Batch, String> {
        let e: Envelope = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if e.v != VERSION {
            return Err(format!(
                "entry format {} (this replica reads {VERSION})",
                e.v
            ));
        }
        Ok(e.batch)
    }
}

/// Split `commands` into batches of at most `max_bytes` encoded (a batch holds at least one
/// command, however large), so a 150,000-pod initial load is many bounded entries.
pub fn split(commands: Vec<Command>, max_bytes: usize) -> Vec<Vec<Command>> {
    let mut out: Vec<Vec<Command>> = Vec::new();
    let mut size = 0;
    for c in commands {
        let n = serde_json::to_vec(&c).map(|v| v.len()).unwrap_or(0) + 1;
        match out.last_mut() {
            Some(last) if size + n <= max_bytes => {
                last.push(c);
                size += n;
            }
            _ => {
                out.push(vec![c]);
                size = n;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::model::{Name, Namespace};

    fn ns(i: usize) -> Command {
        Command::UpsertNamespace(Namespace {
            name: Name::from(format!("ns-{i}").as_str()),
            labels: Default::default(),
        })
    }

    #[test]
    fn batches_round_trip_and_split_within_bounds() {
        let b = Batch {
            id: ProposalId {
                replica: 2,
                term: 3,
                seq: 7,
            },
            owner: "manifests".into(),
            commands: (0..3).map(ns).collect(),
        };
        assert_eq!(Batch::decode(&b.encode()).unwrap(), b);
        assert_eq!(b.encode(), b.clone().encode(), "deterministic");
        let mut future = serde_json::to_value(&Envelope { v: 1, batch: b }).unwrap();
        future["v"] = 2.into();
        let err = Batch::decode(&serde_json::to_vec(&future).unwrap()).unwrap_err();
        assert!(err.contains("format 2"), "{err}");

        let parts = split((0..100).map(ns).collect(), 200);
        assert!(parts.len() > 10);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 100);
        for p in &parts {
            let size: usize = p
                .iter()
                .map(|c| serde_json::to_vec(c).unwrap().len() + 1)
                .sum();
            assert!(size <= 200 || p.len() == 1);
        }
    }
}
