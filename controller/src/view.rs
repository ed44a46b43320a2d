//! What readers see of the applied state, per revision: each node's desired version and
//! digest and its recent history of updates ([`View`]), published by the one writer (the
//! apply thread, through [`crate::applied::State`]) after each applied revision and read
//! without any lock. [`NodeView`] is the small read trait the agent stream's protocol
//! ([`crate::sync`]) decides through, so it steps without the hub or any I/O.
//!
//! A view is immutable: a stream planning from it sees one revision, however many are
//! applied meanwhile. It is cheap to publish: its maps are persistent (a clone shares them,
//! a change copies only its path), so a batch costs what it changed, not the cluster's size.

use palisade_policy::model::Name;
use palisade_policy::{Digest, NodeSlice};

use crate::history::{Catchup, History, Limits};

pub trait NodeView {
    /// The latest revision applied.
    fn revision(&self) -> u64;
    /// The node's desired version and digest (0 and the empty slice's digest for a node
    /// nothing is known of).
    fn desired(&self, node: &str) -> (u64, Digest);
    /// The digest the node's slice had at `version`, when still known.
    fn digest_at(&self, node: &str, version: u64) -> Option<Digest>;
    /// How to bring an agent holding `version` with `digest` to the node's latest, when the
    /// recorded updates reach back to it (`None`: a snapshot will do).
    fn catch_up(&self, node: &str, version: u64, digest: &Digest) -> Option<Catchup>;
}

/// The applied state at one revision, as readers see it.
#[derive(Clone)]
pub struct View {
    revision: u64,
    /// Each node's desired version and digest (nodes without a slice are absent).
    desired: imbl::HashMap<Name, (u64, Digest)>,
    history: History,
}

impl View {
    /// The view of an empty state (revision 0), with histories bounded by `limits`.
    pub fn new(limits: Limits) -> View {
        View {
            revision: 0,
            desired: imbl::HashMap::new(),
            history: History::new(limits),
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The node's desired version and digest (0 and the empty digest for an unknown node).
    pub fn desired(&self, node: &str) -> (u64, Digest) {
        match self.desired.get(node) {
            Some(d) => *d,
            None => (0, NodeSlice::empty(node).digest()),
        }
    }

    /// The digest `node`'s slice had at `version`, when this replica still knows it.
    pub fn digest_at(&self, node: &str, version: u64) -> Option<Digest> {
        let (desired, digest) = self.desired(node);
        if desired == version {
            Some(digest)
        } else {
            self.history.digest_at(node, version)
        }
    }

    /// The per-node update history (catch-ups).
    pub fn history(&self) -> &History {
        &self.history
    }

    // The writer's side (the apply thread, on its own copy, published as a whole).

    pub(crate) fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    pub(crate) fn set_desired(&mut self, node: &Name, version: u64, digest: Digest) {
        self.desired.insert(node.clone(), (version, digest));
    }

    /// Every node's desired version and digest at once (a snapshot replaced the state).
    pub(crate) fn reset_desired(&mut self, nodes: impl IntoIterator<Item = (Name, (u64, Digest))>) {
        self.desired = nodes.into_iter().collect();
    }

    pub(crate) fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }
}

impl NodeView for View {
    fn revision(&self) -> u64 {
        View::revision(self)
    }
    fn desired(&self, node: &str) -> (u64, Digest) {
        View::desired(self, node)
    }
    fn digest_at(&self, node: &str, version: u64) -> Option<Digest> {
        View::digest_at(self, node, version)
    }
    fn catch_up(&self, node: &str, version: u64, digest: &Digest) -> Option<Catchup> {
        self.history.catch_up(node, version, digest)
    }
}
