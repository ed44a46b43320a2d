//! What readers need of one node in the applied state, as a small trait: its desired
//! version and digest, the digests its history still knows, how to catch an agent up, and
//! its slice. The hub's applied state ([`crate::hub::State`]) implements it; the agent
//! stream's protocol ([`crate::sync`]) decides through it alone, so it steps without the
//! hub, its locks or any I/O.

use palisade_policy::{Digest, NodeSlice};

use crate::history::Catchup;

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
    /// The node's whole slice.
    fn slice(&self, node: &str) -> NodeSlice;
}
