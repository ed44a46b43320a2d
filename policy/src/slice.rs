//! `NodeSlice`: everything one node needs to enforce, and nothing more (contracts.md §3).
//!
//! A slice holds the node's *isolated* endpoints (local pods selected by some policy in some
//! direction), each with the policies isolating it and the rules allowing traffic per
//! direction, plus the address sets those rules reference. Rules never embed addresses; they
//! name an [`AddressSet`] by a content-derived [`SetId`], so a pod joining a set changes one
//! member list, shared by every node that references the set.

pub(crate) mod set;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::{Accumulator, Digest};
use crate::encode::{Canonical, Writer};
use crate::model::{Direction, Name, ObjKey, Protocol};
pub use set::{AddressSet, Member, NsScope, SetDef, SetId};
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Which peers a rule allows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerRef {
    /// Every address (the rule has no `from`/`to`).
    Any,
    /// The members of one address set.
    Set(SetId),
}

/// Which protocol and ports a rule allows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PortMatch {
    /// Every protocol (including ICMP) and port: the rule has no `ports`.
    Any,
    /// One protocol, ports `from..=to` (0..=65535 when the rule names only the protocol).
    Range {
        protocol: Protocol,
        from: u16,
        to: u16,
    },
    /// An egress named port: the port is the one the destination pod names, carried by the
    /// members of the rule's (named-port) address set.
    Named { protocol: Protocol },
}

impl PortMatch {
    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            PortMatch::Any => None,
            PortMatch::Range { protocol, .. } | PortMatch::Named { protocol } => Some(*protocol),
        }
    }
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMatch::Any => f.write_str("any"),
            PortMatch::Range {
                protocol,
                from: 0,
                to: 65535,
            } => write!(f, "{protocol}/*"),
            PortMatch::Range { protocol, from, to } if from == to => write!(f, "{protocol}/{from}"),
            PortMatch::Range { protocol, from, to } => write!(f, "{protocol}/{from}-{to}"),
            PortMatch::Named { protocol } => write!(f, "{protocol}/named"),
        }
    }
}

/// One allow rule of an endpoint in one direction, with its origin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    // Field order is the sort order: cheap comparisons first, the policy name last.
    pub peer: PeerRef,
    pub ports: PortMatch,
    /// Index of the rule in its policy's `ingress` or `egress` list.
    pub index: u32,
    /// The NetworkPolicy (in the endpoint's namespace) this rule comes from.
    pub policy: Name,
}

/// An endpoint's enforcement in one direction: it is isolated by `policies` and allows what
/// any of `rules` allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPolicy {
    pub policies: BTreeSet<Name>,
    pub rules: BTreeSet<Rule>,
}

impl DirPolicy {
    /// 128-bit hash of the canonical encoding (policies, then rules). Pods alike share a
    /// `DirPolicy`, so the engine computes this once per class of pods.
    pub fn content_hash(&self) -> u128 {
        let mut w = Writer::with_capacity(64 + 48 * self.rules.len());
        w.put(&self.policies).put(&self.rules);
        xxh3_128_with_seed(w.bytes(), 0)
    }
}

/// A local pod selected by at least one policy. Its directions are shared (`Arc`) with every
/// endpoint whose pod has the same namespace, labels and named ports: they get the same rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub pod: ObjKey,
    /// `None`: not isolated for ingress (everything may reach it).
    pub ingress: Option<Arc<DirPolicy>>,
    pub egress: Option<Arc<DirPolicy>>,
}

impl Endpoint {
    pub fn dir(&self, dir: Direction) -> Option<&DirPolicy> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    pub fn dir_mut(&mut self, dir: Direction) -> &mut Option<Arc<DirPolicy>> {
        match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }

    /// Address sets referenced by this endpoint's rules, with multiplicity.
    pub fn set_refs(&self) -> impl Iterator<Item = SetId> + '_ {
        Direction::BOTH
            .into_iter()
            .filter_map(|d| self.dir(d))
            .flat_map(|d| d.rules.iter())
            .filter_map(|r| match r.peer {
                PeerRef::Set(id) => Some(id),
                PeerRef::Any => None,
            })
    }

    /// The digest contribution of this endpoint: its header, and one element per isolated
    /// direction naming the hash of that direction's policies and rules.
    pub fn digest_part(&self, ip: Ipv4Addr) -> Accumulator {
        let hashes = Direction::BOTH.map(|d| self.dir(d).map(DirPolicy::content_hash));
        endpoint_hash(ip, &self.pod, hashes)
    }
}

/// A node's slice at a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlice {
    pub node: Name,
    /// The last revision that changed this slice (0: never).
    pub version: u64,
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    pub sets: BTreeMap<SetId, AddressSet>,
}

impl NodeSlice {
    pub fn empty(node: &str) -> NodeSlice {
        NodeSlice {
            node: node.into(),
            version: 0,
            endpoints: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    /// The digest of the slice's content (not its node name or version).
    pub fn digest(&self) -> Digest {
        self.accumulator().digest()
    }

    pub fn accumulator(&self) -> Accumulator {
        let eps: Accumulator = self
            .endpoints
            .iter()
            .map(|(ip, e)| e.digest_part(*ip))
            .sum();
        let sets: Accumulator = self.sets.values().map(AddressSet::digest_part).sum();
        eps.plus(sets)
    }

    /// The canonical encoding: byte-identical for equal slices on every machine.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str("PSL1").str(&self.node).u64(self.version);
        w.len(self.sets.len());
        for set in self.sets.values() {
            set.encode(&mut w);
        }
        w.len(self.endpoints.len());
        for (ip, e) in &self.endpoints {
            w.ip(*ip).put(&e.pod);
            for d in Direction::BOTH {
                match e.dir(d) {
                    None => {
                        w.u8(0);
                    }
                    Some(dp) => {
                        w.u8(1).put(&dp.policies).put(&dp.rules);
                    }
                }
            }
        }
        w.into_bytes()
    }

    /// Number of elements: endpoints, rules, sets and set members.
    pub fn entry_count(&self) -> usize {
        let rules: usize = self
            .endpoints
            .values()
            .flat_map(|e| Direction::BOTH.into_iter().filter_map(|d| e.dir(d)))
            .map(|d| d.rules.len())
            .sum();
        let members: usize = self.sets.values().map(|s| s.members.len()).sum();
        self.endpoints.len() + rules + self.sets.len() + members
    }
}

impl Canonical for PeerRef {
    fn encode(&self, w: &mut Writer) {
        match self {
            PeerRef::Any => w.u8(0),
            PeerRef::Set(id) => w.u8(1).u64(id.0),
        };
    }
}

impl Canonical for PortMatch {
    fn encode(&self, w: &mut Writer) {
        match self {
            PortMatch::Any => w.u8(0),
            PortMatch::Range { protocol, from, to } => w.u8(1).put(protocol).u16(*from).u16(*to),
            PortMatch::Named { protocol } => w.u8(2).put(protocol),
        };
    }
}

impl Canonical for Rule {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.policy)
            .u32(self.index)
            .put(&self.peer)
            .put(&self.ports);
    }
}

const TAG_ENDPOINT: u8 = 1;
const TAG_DIRECTION: u8 = 2;
pub(crate) const TAG_SET: u8 = 4;
pub(crate) const TAG_MEMBER: u8 = 5;

/// Digest part of the endpoint at `ip` for `pod`, given the content hash of its ingress and
/// egress (`None`: not isolated).
pub(crate) fn endpoint_hash(ip: Ipv4Addr, pod: &ObjKey, dirs: [Option<u128>; 2]) -> Accumulator {
    let mut acc = Accumulator::element(|w| {
        w.u8(TAG_ENDPOINT).ip(ip).put(pod);
    });
    for (d, h) in Direction::BOTH.into_iter().zip(dirs) {
        if let Some(h) = h {
            acc.add(Accumulator::element(|w| {
                let d = match d {
                    Direction::Ingress => 0,
                    Direction::Egress => 1,
                };
                w.u8(TAG_DIRECTION)
                    .ip(ip)
                    .u8(d)
                    .u64((h >> 64) as u64)
                    .u64(h as u64);
            }));
        }
    }
    acc
}
