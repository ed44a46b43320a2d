//! Per-node history of recent updates: what lets an agent that reconnects, or fell behind,
//! catch up with one delta instead of a snapshot.
//!
//! Each node keeps its last updates (a chain: each starts where the previous ended), bounded in
//! count and in encoded bytes, so the controller's memory per node is bounded whatever agents
//! do. An agent at a version inside the chain gets the composition of the updates after it
//! (one pre-encoded update when it is a single one, shared with every other send of it).
//!
//! The history is persistent: a clone costs nothing and shares every node's chain, and a
//! push copies only the one chain it changes when a clone still holds it. So each applied
//! revision publishes its history to readers ([`crate::view::View`]) without copying it.

use std::collections::VecDeque;
use std::sync::Arc;

use palisade_policy::delta::{compose, SliceDelta};
use palisade_policy::model::Name;
use palisade_policy::Digest;
use palisade_proto::Encoded;

/// One update of one node.
#[derive(Clone, Debug)]
pub struct Entry {
    pub from: u64,
    pub from_digest: Digest,
    pub to: u64,
    pub digest: Digest,
    pub delta: Arc<SliceDelta>,
    /// The `ControllerMessage` carrying this update, encoded once.
    pub encoded: Encoded,
}

/// How to bring an agent from its version to the latest.
#[derive(Debug)]
pub enum Catchup {
    /// It holds the latest version.
    UpToDate,
    /// One recorded update, pre-encoded.
    One(Entry),
    /// Several updates, oldest first, to be composed into one ([`compose_chain`]); handed
    /// out as cheap clones so the composition happens in the stream's task.
    Chain(Vec<Entry>),
}

/// The composition of a chain of updates (each starting where the previous ended).
pub fn compose_chain(chain: &[Entry]) -> Option<SliceDelta> {
    let (first, rest) = chain.split_first()?;
    let mut delta = SliceDelta::clone(&first.delta);
    for e in rest {
        delta = compose(&delta, &e.delta).ok()?;
    }
    Some(delta)
}

#[derive(Clone, Default)]
struct NodeHistory {
    entries: VecDeque<Entry>,
    bytes: usize,
}

/// Bounds on each node's history.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub entries: usize,
    pub bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            entries: 64,
            bytes: 1 << 20,
        }
    }
}

#[derive(Clone)]
pub struct History {
    nodes: imbl::HashMap<Name, Arc<NodeHistory>>,
    limits: Limits,
}

impl History {
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn new(limits: Limits) -> History {
        History {
            nodes: imbl::HashMap::new(),
            limits,
        }
    }

    pub fn push(&mut self, node: &Name, entry: Entry) {
        let h = Arc::make_mut(self.nodes.entry(node.clone()).or_default());
        if h.entries.back().is_some_and(|last| last.to != entry.from) {
            // Not a continuation (cannot happen with one engine): restart the chain.
            h.entries.clear();
            h.bytes = 0;
        }
        h.bytes += entry.encoded.len();
        h.entries.push_back(entry);
        while h.entries.len() > self.limits.entries
            || (h.bytes > self.limits.bytes && h.entries.len() > 1)
        {
            let old = h.entries.pop_front().expect("non-empty");
            h.bytes -= old.encoded.len();
        }
    }

    /// The digest the node's slice had at `version`, if the history still knows it.
    pub fn digest_at(&self, node: &str, version: u64) -> Option<Digest> {
        let h = self.nodes.get(node)?;
        h.entries.iter().find_map(|e| {
            if e.to == version {
                Some(e.digest)
            } else if e.from == version {
                Some(e.from_digest)
            } else {
                None
            }
        })
    }

    /// How to bring an agent holding `version` with `digest` to the node's latest, if the
    /// history reaches back to it and the digests agree; `None` means: send a snapshot.
    pub fn catch_up(&self, node: &str, version: u64, digest: &Digest) -> Option<Catchup> {
        let h = self.nodes.get(node)?;
        let last = h.entries.back()?;
        if last.to == version {
            return (last.digest == *digest).then_some(Catchup::UpToDate);
        }
        let start = h.entries.iter().position(|e| e.from == version)?;
        if h.entries[start].from_digest != *digest {
            return None;
        }
        if start + 1 == h.entries.len() {
            return Some(Catchup::One(h.entries[start].clone()));
        }
        Some(Catchup::Chain(h.entries.range(start..).cloned().collect()))
    }

    /// Keep only the chains that still end at each node's current version and digest
    /// (`current`), after the state machine was replaced by a snapshot: the log is the same,
    /// so those updates are still the node's history; the others miss what the snapshot
    /// skipped over.
    pub fn retain_current(&mut self, current: impl Fn(&str) -> Option<(u64, Digest)>) {
        self.nodes.retain(|node, h| {
            h.entries
                .back()
                .is_some_and(|last| current(node) == Some((last.to, last.digest)))
        });
    }

    /// Updates held across all nodes, for metrics.
    pub fn updates_held(&self) -> usize {
        self.nodes.values().map(|h| h.entries.len()).sum()
    }
}
