//! Per-node state: which pods claim which local address, the endpoints enforced there, how
//! many rules reference each address set, and the running digest.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::delta::{EndpointDelta, MemberChange, SliceDelta};
use crate::digest::{Accumulator, Digest};
use crate::model::{Name, ObjKey};
use crate::slice::{AddressSet, Endpoint, SetId};

pub(crate) struct NodeState {
    pub name: Name,
    pub version: u64,
    /// Pods scheduled here with an address, by address, sorted (normally one pod per address;
    /// the smallest key wins when several claim one).
    pub claims: BTreeMap<Ipv4Addr, Vec<ObjKey>>,
    /// Isolated endpoints with their digest parts.
    pub endpoints: BTreeMap<Ipv4Addr, (Endpoint, Accumulator)>,
    /// Address sets held → number of rules referencing them.
    pub set_refs: FxHashMap<SetId, u32>,
    pub acc: Accumulator,
}

impl NodeState {
    /// Count one more rule referencing `id`, noting in `w` whether the node held it before.
    pub fn add_ref(&mut self, id: SetId, w: &mut Work) {
        let c = self.set_refs.entry(id).or_insert(0);
        if *c == 0 {
            w.refs_before.entry(id).or_insert(false);
        }
        *c += 1;
    }

    pub fn drop_ref(&mut self, id: SetId, w: &mut Work) {
        let c = self.set_refs.get_mut(&id).expect("dropping a held set");
        *c -= 1;
        if *c == 0 {
            self.set_refs.remove(&id);
            w.refs_before.entry(id).or_insert(true);
        }
    }
}

#[derive(Default)]
pub(crate) struct Nodes {
    pub list: Vec<NodeState>,
    pub index: FxHashMap<Name, u32>,
}

impl Nodes {
    pub fn get_or_create(&mut self, name: &Name) -> u32 {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let i = u32::try_from(self.list.len()).expect("fewer than 2^32 nodes");
        self.list.push(NodeState {
            name: name.clone(),
            version: 0,
            claims: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            set_refs: FxHashMap::default(),
            acc: Accumulator::default(),
        });
        self.index.insert(name.clone(), i);
        i
    }

    pub fn get(&self, name: &str) -> Option<&NodeState> {
        self.index.get(name).map(|i| &self.list[*i as usize])
    }
}

/// What one revision changes on one node.
pub(crate) struct Work {
    /// The node's digest accumulator before the revision.
    pub acc_before: Accumulator,
    pub changed: bool,
    pub endpoints: Vec<EndpointDelta>,
    /// First-touched sets → whether the node held them before the revision.
    pub refs_before: FxHashMap<SetId, bool>,
    pub sets_added: Vec<SetId>,
    pub sets_removed: Vec<SetId>,
    pub members: Vec<Arc<MemberChange>>,
}

impl Work {
    pub fn new(acc_before: Accumulator) -> Work {
        Work {
            acc_before,
            changed: false,
            endpoints: Vec::new(),
            refs_before: FxHashMap::default(),
            sets_added: Vec::new(),
            sets_removed: Vec::new(),
            members: Vec::new(),
        }
    }

    pub fn into_delta(mut self, snapshot: &mut impl FnMut(SetId) -> Arc<AddressSet>) -> SliceDelta {
        self.endpoints.sort_by_key(EndpointDelta::ip);
        self.members.sort_by_key(|c| c.set);
        self.sets_added.sort();
        self.sets_removed.sort();
        SliceDelta {
            sets_added: self.sets_added.into_iter().map(snapshot).collect(),
            sets_replaced: Vec::new(),
            members: self.members,
            endpoints: self.endpoints,
            sets_removed: self.sets_removed,
        }
    }
}

/// A node's slice changed at a revision.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeUpdate {
    pub node: Name,
    /// The node's version before this revision.
    pub from_version: u64,
    /// This revision.
    pub to_version: u64,
    /// Digest accumulator of the slice before; see [`NodeUpdate::from_digest`].
    pub from_accumulator: Accumulator,
    /// Digest accumulator of the new slice; see [`NodeUpdate::digest`].
    pub accumulator: Accumulator,
    /// Empty when the engine was asked not to build deltas (bulk loads).
    pub delta: SliceDelta,
}

impl NodeUpdate {
    /// Digest of the slice after this update.
    pub fn digest(&self) -> Digest {
        self.accumulator.digest()
    }

    /// Digest of the slice this update starts from.
    pub fn from_digest(&self) -> Digest {
        self.from_accumulator.digest()
    }
}

/// A node as introspection shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    pub node: Name,
    pub version: u64,
    pub digest: Digest,
    /// Pods scheduled on the node with an address.
    pub pods: usize,
    /// Isolated endpoints in its slice.
    pub endpoints: usize,
    /// Address sets in its slice.
    pub sets: usize,
}

impl NodeState {
    pub fn summary(&self) -> NodeSummary {
        NodeSummary {
            node: self.name.clone(),
            version: self.version,
            digest: self.acc.digest(),
            pods: self.claims.values().map(Vec::len).sum(),
            endpoints: self.endpoints.len(),
            sets: self.set_refs.len(),
        }
    }
}
