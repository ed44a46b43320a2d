//! The replicated state machine: the policy engine, at the index of the last applied entry.
//! A committed entry is one revision: its commands are applied together at its index, so the
//! node versions, slices and digests are the same on every replica at the same index.

use std::collections::BTreeMap;

use palisade_policy::engine::{Engine, NodeUpdate};
use palisade_policy::model::{Command, Name};
use palisade_policy::Digest;
use serde::{Deserialize, Serialize};

use crate::entry::Batch;

#[derive(Default)]
pub struct Machine {
    engine: Engine,
    applied: u64,
}

/// A snapshot's content: the objects and each node's version, at an index.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    v: u32,
    index: u64,
    objects: Vec<Command>,
    versions: BTreeMap<Name, u64>,
}

const VERSION: u32 = 1;

impl Machine {
    pub fn new() -> Machine {
        Machine::default()
    }

    /// The index of the last entry applied (the latest revision).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Apply the entry at `index`: its commands (`None` for an entry that carries none, such
    /// as a new leader's empty entry) all at revision `index`. Returns the nodes whose slices
    /// changed. An index at or below the applied one is not applied again.
    pub fn apply(&mut self, index: u64, batch: Option<&Batch>) -> Vec<NodeUpdate> {
        if index <= self.applied {
            return Vec::new();
        }
        self.applied = index;
        match batch {
            Some(b) if !b.commands.is_empty() => {
                self.engine.apply_batch(index, b.commands.iter().cloned())
            }
            _ => Vec::new(),
        }
    }

    /// The state at the applied index, canonically encoded (the same bytes on every replica at
    /// the same index).
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&Snapshot {
            v: VERSION,
            index: self.applied,
            objects: self.engine.objects(),
            versions: self.engine.node_versions(),
        })
        .expect("the policy model serialises")
    }

    /// The machine a snapshot holds.
    pub fn restore(bytes: &[u8]) -> Result<Machine, String> {
        let s: Snapshot =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable snapshot: {e}"))?;
        if s.v != VERSION {
            return Err(format!(
                "snapshot format {} (this replica reads {VERSION})",
                s.v
            ));
        }
        let engine = Engine::restore(s.index, s.objects, &s.versions)?;
        Ok(Machine {
            engine,
            applied: s.index,
        })
    }

    /// Every node's version and digest (what replicas compare).
    pub fn digests(&self) -> BTreeMap<Name, (u64, Digest)> {
        self.engine
            .nodes()
            .into_iter()
            .map(|n| (n.node, (n.version, n.digest)))
            .collect()
    }
}
