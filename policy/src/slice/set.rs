//! Address sets: the peers a rule names, resolved to addresses.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use super::{TAG_MEMBER, TAG_SET};
use crate::digest::Accumulator;
use crate::encode::{Canonical, Writer};
use crate::model::{Name, Protocol, Selector};
use crate::net::{self, Prefix};

/// A set's identity: the first 64 bits of SHA-256 over its definition's canonical encoding.
/// Equal definitions have equal ids on every replica, whatever order they were created in.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetId(pub u64);

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SetId({self})")
    }
}

impl std::str::FromStr for SetId {
    type Err = String;

    /// 16 hex digits, as `Display` writes them.
    fn from_str(s: &str) -> Result<SetId, String> {
        if s.len() != 16 {
            return Err(format!("set id '{s}' is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(SetId)
            .map_err(|_| format!("set id '{s}' is not 16 hex digits"))
    }
}

impl Serialize for SetId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SetId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SetId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which namespaces a pod set draws from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NsScope {
    /// One namespace (a peer with only `podSelector`: the policy's own).
    Name(Name),
    /// Namespaces whose labels match (a peer with `namespaceSelector`).
    Selector(Selector),
}

/// What an address set holds, independent of the cluster's current state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SetDef {
    /// Peer pods: those matching `pods` in the namespaces of `namespaces`.
    Pods { namespaces: NsScope, pods: Selector },
    /// `cidr` minus `except`.
    IpBlock { cidr: Prefix, except: Vec<Prefix> },
    /// For an egress named port: every peer pod (within `within`, or anywhere when `None`)
    /// that names a container port `name`/`protocol`, each with the number it resolves to.
    NamedPort {
        within: Option<Box<SetDef>>,
        protocol: Protocol,
        name: Name,
    },
}

impl SetDef {
    pub fn id(&self) -> SetId {
        let h = Sha256::digest(self.canonical_bytes());
        SetId(u64::from_be_bytes(h[..8].try_into().expect("8 bytes")))
    }

    /// The fixed members of an `IpBlock` set; pod-based sets have none until pods join.
    pub fn static_members(&self) -> BTreeSet<Member> {
        match self {
            SetDef::IpBlock { cidr, except } => net::subtract(*cidr, except)
                .into_iter()
                .map(Member::Net)
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Whether a pod with `ip` and `labels`, in a namespace this definition's namespace scope
    /// takes, belongs to the base of this definition (before any named-port resolution).
    pub fn admits(&self, ip: Ipv4Addr, labels: &crate::model::Labels) -> bool {
        match self {
            SetDef::Pods { pods, .. } => pods.matches(labels),
            SetDef::IpBlock { cidr, except } => {
                cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
            }
            SetDef::NamedPort { within, .. } => {
                within.as_ref().is_none_or(|w| w.admits(ip, labels))
            }
        }
    }
}

impl fmt::Display for SetDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetDef::Pods { namespaces, pods } => {
                if pods.is_everything() {
                    f.write_str("all pods in ")?;
                } else {
                    write!(f, "pods {pods} in ")?;
                }
                match namespaces {
                    NsScope::Name(n) => write!(f, "namespace {n}"),
                    NsScope::Selector(s) if s.is_everything() => f.write_str("all namespaces"),
                    NsScope::Selector(s) => write!(f, "namespaces {s}"),
                }
            }
            SetDef::IpBlock { cidr, except } if except.is_empty() => write!(f, "ipBlock {cidr}"),
            SetDef::IpBlock { cidr, except } => {
                let ex: Vec<String> = except.iter().map(|e| e.to_string()).collect();
                write!(f, "ipBlock {cidr} except {}", ex.join(","))
            }
            SetDef::NamedPort {
                within,
                protocol,
                name,
            } => {
                write!(f, "port {protocol}/{name} of ")?;
                match within {
                    None => f.write_str("any pod"),
                    Some(w) => write!(f, "{w}"),
                }
            }
        }
    }
}

impl Canonical for NsScope {
    fn encode(&self, w: &mut Writer) {
        match self {
            NsScope::Name(n) => w.u8(1).put(n),
            NsScope::Selector(s) => w.u8(2).put(s),
        };
    }
}

impl Canonical for SetDef {
    fn encode(&self, w: &mut Writer) {
        match self {
            SetDef::Pods { namespaces, pods } => {
                w.u8(1).put(namespaces).put(pods);
            }
            SetDef::IpBlock { cidr, except } => {
                w.u8(2).put(cidr).seq(except.iter());
            }
            SetDef::NamedPort {
                within,
                protocol,
                name,
            } => {
                w.u8(3).put(protocol).put(name);
                match within {
                    None => w.u8(0),
                    Some(def) => w.u8(1).put(def.as_ref()),
                };
            }
        }
    }
}

/// One member of an address set.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    /// A prefix (a pod is a /32).
    Net(Prefix),
    /// A pod address with the port number a named port resolves to on it.
    Port(Ipv4Addr, u16),
}

impl Member {
    pub fn host(ip: Ipv4Addr) -> Member {
        Member::Net(Prefix::host(ip))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        match self {
            Member::Net(p) => p.contains(ip),
            Member::Port(a, _) => *a == ip,
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Net(p) => write!(f, "{p}"),
            Member::Port(ip, port) => write!(f, "{ip}:{port}"),
        }
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Member {
    type Err = String;

    fn from_str(s: &str) -> Result<Member, String> {
        if let Some((ip, port)) = s.split_once(':') {
            let ip = ip
                .parse()
                .map_err(|_| format!("bad address in member '{s}'"))?;
            let port = port
                .parse()
                .map_err(|_| format!("bad port in member '{s}'"))?;
            return Ok(Member::Port(ip, port));
        }
        s.parse::<Prefix>()
            .map(Member::Net)
            .map_err(|e| format!("bad member '{s}': {e}"))
    }
}

impl Serialize for Member {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Member, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Canonical for Member {
    fn encode(&self, w: &mut Writer) {
        match self {
            Member::Net(p) => w.u8(1).put(p),
            Member::Port(ip, port) => w.u8(2).ip(*ip).u16(*port),
        };
    }
}

/// An address set as a slice carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSet {
    pub id: SetId,
    pub def: SetDef,
    pub members: BTreeSet<Member>,
}

impl AddressSet {
    /// True when some member covers `ip`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        // Members are sorted by (address, length); the prefixes covering `ip` are its masks.
        (0..=32u8).any(|len| self.members.contains(&Member::Net(Prefix::new(ip, len))))
            || self.ports_of(ip).next().is_some()
    }

    /// The named-port numbers `ip` carries in this set.
    pub fn ports_of(&self, ip: Ipv4Addr) -> impl Iterator<Item = u16> + '_ {
        self.members
            .range(Member::Port(ip, 0)..=Member::Port(ip, u16::MAX))
            .map(|m| match m {
                Member::Port(_, p) => *p,
                Member::Net(_) => unreachable!("range holds only ports of one address"),
            })
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u64(self.id.0).put(&self.def).put(&self.members);
    }

    pub fn digest_part(&self) -> Accumulator {
        let members: Accumulator = self.members.iter().map(|m| member_hash(self.id, m)).sum();
        set_hash(self.id, &self.def).plus(members)
    }
}

pub(crate) fn set_hash(id: SetId, def: &SetDef) -> Accumulator {
    Accumulator::element(|w| {
        w.u8(TAG_SET).u64(id.0).put(def);
    })
}

pub(crate) fn member_hash(id: SetId, m: &Member) -> Accumulator {
    Accumulator::element(|w| {
        w.u8(TAG_MEMBER).u64(id.0).put(m);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_only_on_definition() {
        let a = SetDef::Pods {
            namespaces: NsScope::Name("prod".into()),
            pods: Selector::from_labels([("app", "web")]),
        };
        let b = a.clone();
        assert_eq!(a.id(), b.id());
        let c = SetDef::Pods {
            namespaces: NsScope::Name("dev".into()),
            pods: Selector::from_labels([("app", "web")]),
        };
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn contains_checks_every_covering_prefix_and_ports() {
        let def = SetDef::IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        let set = AddressSet {
            id: def.id(),
            members: def.static_members(),
            def,
        };
        assert!(set.contains("10.2.3.4".parse().unwrap()));
        assert!(!set.contains("10.1.3.4".parse().unwrap()));
        assert!(!set.contains("11.0.0.1".parse().unwrap()));
        let ip: Ipv4Addr = "10.0.0.9".parse().unwrap();
        let named = AddressSet {
            id: SetId(1),
            def: SetDef::NamedPort {
                within: None,
                protocol: Protocol::Tcp,
                name: "http".into(),
            },
            members: [Member::Port(ip, 80), Member::Port(ip, 8080)].into(),
        };
        assert_eq!(named.ports_of(ip).collect::<Vec<_>>(), vec![80, 8080]);
        assert!(named.contains(ip));
    }
}
