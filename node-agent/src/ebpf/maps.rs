//! The policy maps as the agent reads and writes them: each [`MapOp`] of the core's plan is
//! one map write here, and the maps read back give the [`MapImage`] they hold (after a
//! restart, what the previous agent left).

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError};
use palisade_ebpf_common::{
    EndpointState, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_FAIL_CLOSED, ENDPOINT_INGRESS_ISOLATED,
    RULE_KEY_BYTES,
};
use palisade_policy::lower::{EndpointFlags, MapImage, MapOp, RuleKey};
use palisade_policy::net::Prefix;

pub struct PolicyMaps {
    pub endpoints: HashMap<MapData, [u8; 4], EndpointState>,
    pub identities: LpmTrie<MapData, [u8; 4], u32>,
    pub rules: LpmTrie<MapData, [u8; RULE_KEY_BYTES], u32>,
}

/// Value of every rule entry (entries only allow; the value is not read).
const ALLOW: u32 = 1;

pub fn flags_of(f: EndpointFlags) -> u32 {
    let mut v = 0;
    if f.ingress_isolated {
        v |= ENDPOINT_INGRESS_ISOLATED;
    }
    if f.egress_isolated {
        v |= ENDPOINT_EGRESS_ISOLATED;
    }
    if f.fail_closed {
        v |= ENDPOINT_FAIL_CLOSED;
    }
    v
}

fn endpoint_flags(v: u32) -> EndpointFlags {
    EndpointFlags {
        ingress_isolated: v & ENDPOINT_INGRESS_ISOLATED != 0,
        egress_isolated: v & ENDPOINT_EGRESS_ISOLATED != 0,
        fail_closed: v & ENDPOINT_FAIL_CLOSED != 0,
    }
}

fn rule_key(k: &RuleKey) -> Key<[u8; RULE_KEY_BYTES]> {
    Key::new(u32::from(k.prefix_len), k.data())
}

fn rule_of(k: &Key<[u8; RULE_KEY_BYTES]>) -> RuleKey {
    let d = k.data();
    RuleKey {
        prefix_len: k.prefix_len() as u8,
        endpoint: Ipv4Addr::new(d[0], d[1], d[2], d[3]),
        direction: d[4],
        identity: u32::from_be_bytes([d[5], d[6], d[7], d[8]]),
        protocol: d[9],
        port: u16::from_be_bytes([d[10], d[11]]),
    }
}

fn prefix_key(p: Prefix) -> Key<[u8; 4]> {
    Key::new(u32::from(p.prefix_len()), p.addr().octets())
}

impl PolicyMaps {
    /// What the maps hold.
    pub fn read(&self) -> Result<MapImage, MapError> {
        let mut image = MapImage::default();
        for k in self.endpoints.keys() {
            let k = k?;
            // An entry deleted between listing and reading is simply not there.
            if let Ok(v) = self.endpoints.get(&k, 0) {
                image
                    .endpoints
                    .insert(Ipv4Addr::from(k), endpoint_flags(v.flags));
            }
        }
        for k in self.identities.keys() {
            let k = k?;
            if let Ok(id) = self.identities.get(&k, 0) {
                let p = Prefix::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8);
                image.identities.insert(p, id);
            }
        }
        for k in self.rules.keys() {
            image.rules.insert(rule_of(&k?));
        }
        Ok(image)
    }

    /// One write. Deleting what is not there is not an error.
    pub fn apply(&mut self, op: &MapOp) -> Result<(), MapError> {
        let absent_ok = |r: Result<(), MapError>| match r {
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            other => other,
        };
        match op {
            MapOp::AddRule(k) => self.rules.insert(&rule_key(k), ALLOW, 0),
            MapOp::DeleteRule(k) => absent_ok(self.rules.remove(&rule_key(k))),
            MapOp::SetIdentity(p, id) => self.identities.insert(&prefix_key(*p), *id, 0),
            MapOp::DeleteIdentity(p) => absent_ok(self.identities.remove(&prefix_key(*p))),
            MapOp::SetEndpoint(ip, f) => self.endpoints.insert(
                ip.octets(),
                EndpointState {
                    flags: flags_of(*f),
                },
                0,
            ),
            MapOp::DeleteEndpoint(ip) => absent_ok(self.endpoints.remove(&ip.octets())),
        }
    }
}

/// Whether a map write failed because the map is full.
pub fn is_full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)))
}
