//! Lowering a slice to fixed-size eBPF map entries with a constant number of lookups per
//! packet (see docs/architecture.md, "The datapath encoding").
//!
//! * **Identities** (LPM trie, address prefix → u32): every prefix any set mentions gets the
//!   identity of its exact membership: the set of (set, named-port number) atoms of all sets
//!   covering it. Overlapping CIDRs, `except` holes and a pod in many sets are all resolved
//!   here, once, by the longest match. Identity 0 is the wildcard "any peer"; 1 is "in no
//!   set" (the world).
//! * **Rules** (LPM trie over 96 bits: endpoint address, direction, identity, protocol, port):
//!   an allow entry per (endpoint, direction, identity, protocol, port prefix). Port ranges
//!   become at most 30 port prefixes; "all ports of a protocol" stops the prefix before the
//!   port, "all protocols" before the protocol.
//! * **Endpoints** (hash, address → isolation flags).
//!
//! A packet's check in one direction is: endpoint lookup, identity lookup of the peer, and two
//! rule lookups (its identity, and the wildcard identity): four lookups whatever the number of
//! rules. [`evaluate`] is that procedure over a [`MapImage`]; tests hold it equal to
//! [`crate::eval::evaluate`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::eval::Flow;
use crate::model::Direction;
use crate::net::{port_prefixes, Prefix};
use crate::slice::{NodeSlice, PeerRef, PortMatch};

mod fit;
mod identity;
mod plan;

pub use fit::{fit, Capacities, FitError, Fitted};
use identity::{memberships, Atom};
pub use identity::{Identities, Membership};
pub use plan::{plan, MapOp};

/// Identity of the wildcard "any peer" rule entries.
pub const IDENTITY_ANY: u32 = 0;
/// Identity of an address that is in no set of the slice.
pub const IDENTITY_WORLD: u32 = 1;
/// First identity given to a membership.
pub const IDENTITY_FIRST: u32 = 2;
/// Bits of a rule key's data: endpoint (32), direction (8), identity (32), protocol (8),
/// port (16).
pub const RULE_KEY_BITS: u8 = 96;
/// Prefix length of a rule for every protocol and port.
pub const RULE_ANY_PROTOCOL_BITS: u8 = 72;
/// Prefix length of a rule for one protocol, every port.
pub const RULE_ANY_PORT_BITS: u8 = 80;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

pub fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

/// One rule-map key: the first `prefix_len` bits of [`RuleKey::data`] are significant, the
/// rest are zero.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    pub prefix_len: u8,
    pub endpoint: Ipv4Addr,
    pub direction: u8,
    pub identity: u32,
    pub protocol: u8,
    pub port: u16,
}

impl RuleKey {
    /// The key's 12 data bytes, big-endian, as the LPM trie compares them.
    pub fn data(&self) -> [u8; 12] {
        let mut d = [0u8; 12];
        d[0..4].copy_from_slice(&self.endpoint.octets());
        d[4] = self.direction;
        d[5..9].copy_from_slice(&self.identity.to_be_bytes());
        d[9] = self.protocol;
        d[10..12].copy_from_slice(&self.port.to_be_bytes());
        d
    }

    /// A full-length lookup key for a packet.
    pub fn lookup(
        endpoint: Ipv4Addr,
        direction: u8,
        identity: u32,
        protocol: u8,
        port: u16,
    ) -> RuleKey {
        RuleKey {
            prefix_len: RULE_KEY_BITS,
            endpoint,
            direction,
            identity,
            protocol,
            port,
        }
    }
}

/// Isolation of one endpoint as its map entry holds it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EndpointFlags {
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// The slice did not fit the dataplane's maps: the endpoint is isolated in both directions
    /// with no rules (see [`fit`]).
    pub fail_closed: bool,
}

impl EndpointFlags {
    pub fn isolated(&self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.ingress_isolated,
            Direction::Egress => self.egress_isolated,
        }
    }
}

/// The full contents of a node's policy maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapImage {
    pub endpoints: BTreeMap<Ipv4Addr, EndpointFlags>,
    pub identities: BTreeMap<Prefix, u32>,
    pub rules: BTreeSet<RuleKey>,
}

impl MapImage {
    pub fn entry_count(&self) -> usize {
        self.endpoints.len() + self.identities.len() + self.rules.len()
    }

    /// Longest-prefix match of `ip` in the identity trie.
    pub fn identity_of(&self, ip: Ipv4Addr) -> u32 {
        (0..=32u8)
            .rev()
            .find_map(|len| self.identities.get(&Prefix::new(ip, len)).copied())
            .unwrap_or(IDENTITY_WORLD)
    }

    /// Whether some rule entry matches `key` (LPM: any entry whose significant bits equal the
    /// key's; all entries allow, so the longest match allows iff any does).
    pub fn rule_matches(&self, key: &RuleKey) -> bool {
        let data = u128_of(&key.data());
        self.rules
            .iter()
            .filter(|r| r.endpoint == key.endpoint)
            .any(|r| {
                let len = u32::from(r.prefix_len);
                let mask = if len == 0 { 0 } else { u128::MAX << (96 - len) } & ((1u128 << 96) - 1);
                u128_of(&r.data()) & mask == data & mask
            })
    }
}

fn u128_of(d: &[u8; 12]) -> u128 {
    d.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

/// The map image of `slice`, numbering identities from scratch. Deterministic: equal slices
/// give equal images.
pub fn lower(slice: &NodeSlice) -> MapImage {
    lower_with(slice, &Identities::default()).0
}

/// The map image of `slice`, keeping the identity numbers `prev` gave to memberships that
/// persist and giving new memberships numbers `prev` does not use, so that while the maps move
/// from the old image to the new one no identity number means two different memberships.
pub fn lower_with(slice: &NodeSlice, prev: &Identities) -> (MapImage, Identities) {
    let membership = memberships(slice);
    let identities = Identities::assign(membership.values(), prev);
    let mut by_atom: BTreeMap<Atom, Vec<u32>> = BTreeMap::new();
    for (m, id) in identities.iter() {
        for a in m.atoms() {
            by_atom.entry(*a).or_default().push(id);
        }
    }

    let mut image = MapImage {
        identities: membership
            .iter()
            .map(|(p, m)| (*p, identities.id(m).expect("assigned")))
            .collect(),
        ..MapImage::default()
    };
    for (ip, ep) in &slice.endpoints {
        let flags = EndpointFlags {
            ingress_isolated: ep.ingress.is_some(),
            egress_isolated: ep.egress.is_some(),
            fail_closed: false,
        };
        image.endpoints.insert(*ip, flags);
        for d in Direction::BOTH {
            let Some(dp) = ep.dir(d) else { continue };
            let key = |identity, protocol, port, prefix_len| RuleKey {
                prefix_len,
                endpoint: *ip,
                direction: dir_code(d),
                identity,
                protocol,
                port,
            };
            for r in &dp.rules {
                match (&r.peer, &r.ports) {
                    (PeerRef::Any, PortMatch::Named { .. }) => {}
                    (peer, PortMatch::Named { protocol }) => {
                        let PeerRef::Set(set) = peer else { continue };
                        for (atom, idents) in
                            by_atom.range(Atom::Port(*set, 0)..=Atom::Port(*set, u16::MAX))
                        {
                            let Atom::Port(_, port) = atom else { continue };
                            for id in idents {
                                image.rules.insert(key(
                                    *id,
                                    protocol.number(),
                                    *port,
                                    RULE_KEY_BITS,
                                ));
                            }
                        }
                    }
                    (peer, ports) => {
                        let idents: &[u32] = match peer {
                            PeerRef::Any => &[IDENTITY_ANY],
                            PeerRef::Set(set) => {
                                by_atom.get(&Atom::In(*set)).map_or(&[], Vec::as_slice)
                            }
                        };
                        for id in idents {
                            match ports {
                                PortMatch::Any => {
                                    image.rules.insert(key(*id, 0, 0, RULE_ANY_PROTOCOL_BITS));
                                }
                                PortMatch::Range { protocol, from, to } => {
                                    for (port, len) in port_prefixes(*from, *to) {
                                        image.rules.insert(key(
                                            *id,
                                            protocol.number(),
                                            port,
                                            RULE_ANY_PORT_BITS + len,
                                        ));
                                    }
                                }
                                PortMatch::Named { .. } => unreachable!("handled above"),
                            }
                        }
                    }
                }
            }
        }
    }
    (image, identities)
}

/// The datapath's verdict for the first packet of `flow` on a node holding `image`: the
/// procedure the TC programs run, with the same lookups.
pub fn evaluate(image: &MapImage, flow: &Flow) -> bool {
    if flow.src == flow.dst {
        return true;
    }
    for (d, local, peer) in [
        (Direction::Egress, flow.src, flow.dst),
        (Direction::Ingress, flow.dst, flow.src),
    ] {
        let Some(ep) = image.endpoints.get(&local) else {
            continue;
        };
        if !ep.isolated(d) {
            continue;
        }
        let identity = image.identity_of(peer);
        let allowed = [identity, IDENTITY_ANY].into_iter().any(|id| {
            image.rule_matches(&RuleKey::lookup(
                local,
                dir_code(d),
                id,
                flow.protocol,
                flow.port,
            ))
        });
        if !allowed {
            return false;
        }
    }
    true
}
