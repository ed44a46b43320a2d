//! What a run must never show, checked as it goes: two replicas that applied the same index
//! with different slices, a node version with two digests, an agent holding a version no
//! replica computed or with another digest, an agent moving back.

use std::collections::BTreeMap;

use palisade_policy::model::Name;
use palisade_policy::{Digest, NodeSlice};

/// Each node's version and digest.
pub type Versions = BTreeMap<Name, (u64, Digest)>;

/// `digests` without the nodes at version 0 holding the empty slice: the same as a node
/// nothing is known of (an engine may list one a pod passed through; one restored from a
/// snapshot does not).
pub fn normalized(mut digests: Versions) -> Versions {
    digests.retain(|node, (v, d)| *v > 0 || *d != NodeSlice::empty(node).digest());
    digests
}

#[derive(Default)]
pub struct Ledger {
    /// Each node's version and digest after each applied index, as the first replica to
    /// apply it had them.
    by_index: BTreeMap<u64, (u64, Versions)>,
    /// The digest of each node's slice at each version.
    versions: BTreeMap<(Name, u64), Digest>,
    /// The latest version each agent held.
    agents: BTreeMap<Name, u64>,
    pub divergences: Vec<String>,
}

impl Ledger {
    /// Replica `replica` applied `index`, after which the nodes are at `digests`.
    pub fn applied(&mut self, replica: u64, index: u64, digests: Versions) {
        let digests = normalized(digests);
        for (node, (v, d)) in &digests {
            match self.versions.get(&(node.clone(), *v)) {
                Some(known) if known != d => self.divergences.push(format!(
                    "replica {replica}: node {node} at version {v} has digest {d}, another replica had {known}"
                )),
                Some(_) => {}
                None => {
                    self.versions.insert((node.clone(), *v), *d);
                }
            }
        }
        match self.by_index.get(&index) {
            Some((first, known)) if *known != digests => {
                let show = |m: &Versions| {
                    m.iter()
                        .map(|(n, (v, d))| format!("{n}@{v}:{}", &d.to_hex()[..6]))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                self.divergences.push(format!(
                    "replica {replica} applied index {index} to other slices than replica {first} did: {} against {}",
                    show(&digests),
                    show(known)
                ))
            }
            Some(_) => {}
            None => {
                self.by_index.insert(index, (replica, digests));
            }
        }
    }

    /// Node `node`'s agent now holds `version` with `digest`.
    pub fn agent_holds(&mut self, node: &Name, version: u64, digest: Digest) {
        if version > 0 {
            match self.versions.get(&(node.clone(), version)) {
                Some(d) if *d == digest => {}
                Some(d) => self.divergences.push(format!(
                    "agent {node} holds version {version} with digest {digest}; the replicas computed {d}"
                )),
                None => self.divergences.push(format!(
                    "agent {node} holds version {version}, which no replica computed"
                )),
            }
        }
        let last = self.agents.entry(node.clone()).or_default();
        if version < *last {
            self.divergences.push(format!(
                "agent {node} went back from version {last} to {version}"
            ));
        }
        *last = (*last).max(version);
    }
}
