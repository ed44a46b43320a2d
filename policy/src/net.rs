//! IPv4 prefixes and port ranges: the arithmetic behind `ipBlock`/`except` and `endPort`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 prefix with its host bits cleared. Ordered by (address, length), so a prefix sorts
/// before the prefixes it contains.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: u32,
    len: u8,
}

impl Prefix {
    /// The whole IPv4 space.
    pub const ALL: Prefix = Prefix { addr: 0, len: 0 };

    /// A prefix of `len` bits (clamped to 32) starting at `addr`; host bits are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Prefix {
        let len = len.min(32);
        Prefix {
            addr: u32::from(addr) & mask(len),
            len,
        }
    }

    /// The /32 holding one address.
    pub fn host(addr: Ipv4Addr) -> Prefix {
        Prefix::new(addr, 32)
    }

    pub fn addr(self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn bits(self) -> u32 {
        self.addr
    }

    /// Prefix length in bits.
    pub fn prefix_len(self) -> u8 {
        self.len
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }

    /// True when `other` lies inside `self` (or equals it).
    pub fn covers(self, other: Prefix) -> bool {
        other.len >= self.len && other.addr & mask(self.len) == self.addr
    }

    pub fn overlaps(self, other: Prefix) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The two halves of this prefix, or `None` for a /32.
    pub fn split(self) -> Option<(Prefix, Prefix)> {
        if self.len == 32 {
            return None;
        }
        let len = self.len + 1;
        let high = self.addr | (1u32 << (32 - len));
        Some((
            Prefix {
                addr: self.addr,
                len,
            },
            Prefix { addr: high, len },
        ))
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a CIDR string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("must be a CIDR such as 10.0.0.0/16 (no '/' found)")]
    MissingSlash,
    #[error("'{0}' is not a valid IP address")]
    BadAddress(String),
    #[error("prefix length '{0}' is not a number from 0 to {1}")]
    BadLength(String, u8),
}

/// A parsed CIDR of either family. Palisade's datapath is IPv4; IPv6 blocks are valid input
/// that never match an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4(Prefix),
    /// Address bits (host bits cleared) and length.
    V6(u128, u8),
}

impl Cidr {
    /// True when `inner` is a strict subset of `self` (same family, longer prefix, inside).
    pub fn strictly_contains(self, inner: Cidr) -> bool {
        match (self, inner) {
            (Cidr::V4(a), Cidr::V4(b)) => a.covers(b) && b.prefix_len() > a.prefix_len(),
            (Cidr::V6(a, la), Cidr::V6(b, lb)) => lb > la && b & mask6(la) == a,
            _ => false,
        }
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = s.split_once('/').ok_or(CidrError::MissingSlash)?;
        if let Ok(v4) = Ipv4Addr::from_str(addr) {
            let len = parse_len(len, 32)?;
            return Ok(Cidr::V4(Prefix::new(v4, len)));
        }
        if let Ok(v6) = std::net::Ipv6Addr::from_str(addr) {
            let len = parse_len(len, 128)?;
            return Ok(Cidr::V6(u128::from(v6) & mask6(len), len));
        }
        Err(CidrError::BadAddress(addr.to_string()))
    }
}

fn parse_len(len: &str, max: u8) -> Result<u8, CidrError> {
    let bad = || CidrError::BadLength(len.to_string(), max);
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
        return Err(bad());
    }
    let n: u16 = len.parse().map_err(|_| bad())?;
    if n > u16::from(max) {
        return Err(bad());
    }
    Ok(n as u8)
}

impl FromStr for Prefix {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Prefix, CidrError> {
        match s.parse::<Cidr>()? {
            Cidr::V4(p) => Ok(p),
            Cidr::V6(..) => Err(CidrError::BadAddress(s.to_string())),
        }
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `base` minus every prefix in `except`, as a sorted list of disjoint prefixes.
pub fn subtract(base: Prefix, except: &[Prefix]) -> Vec<Prefix> {
    let mut out = Vec::new();
    subtract_into(base, except, &mut out);
    out
}

fn subtract_into(p: Prefix, except: &[Prefix], out: &mut Vec<Prefix>) {
    if except.iter().any(|e| e.covers(p)) {
        return;
    }
    if !except.iter().any(|e| p.covers(*e)) {
        out.push(p);
        return;
    }
    if let Some((lo, hi)) = p.split() {
        subtract_into(lo, except, out);
        subtract_into(hi, except, out);
    }
}

/// Decompose the inclusive port range `lo..=hi` into (value, prefix length) pairs over the
/// 16-bit port space, the form an LPM trie matches. A single port is one /16; 0..=65535 is one /0.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // Largest aligned block starting at `lo` that stays within `hi`.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let len = 16 - size.trailing_zeros() as u8;
        out.push((lo as u16, len));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn parse_masks_host_bits_and_rejects_garbage() {
        assert_eq!(p("10.1.2.3/8"), p("10.0.0.0/8"));
        assert_eq!("10.0.0.0".parse::<Prefix>(), Err(CidrError::MissingSlash));
        assert!(matches!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(CidrError::BadLength(..))
        ));
        assert!(matches!(
            "300.0.0.0/8".parse::<Prefix>(),
            Err(CidrError::BadAddress(_))
        ));
        assert_eq!("fd00::1/8".parse::<Cidr>(), Ok(Cidr::V6(0xfd << 120, 8)));
        let v6 = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(v6("fd00::/8").strictly_contains(v6("fd00:1::/32")));
        assert!(!v6("fd00::/8").strictly_contains(v6("fd00::/8")));
        assert!(!v6("fd00::/8").strictly_contains(v6("10.0.0.0/8")));
        assert!("fd00::/129".parse::<Cidr>().is_err());
    }

    #[test]
    fn subtract_except_leaves_disjoint_cover() {
        let out = subtract(p("172.17.0.0/16"), &[p("172.17.1.0/24")]);
        assert_eq!(out.len(), 8);
        assert!(out.iter().all(|x| !x.overlaps(p("172.17.1.0/24"))));
        let total: u64 = out.iter().map(|x| 1u64 << (32 - x.prefix_len())).sum();
        assert_eq!(total, 65536 - 256);
        assert_eq!(subtract(p("10.0.0.0/8"), &[p("0.0.0.0/0")]), vec![]);
        assert_eq!(subtract(p("10.0.0.0/8"), &[]), vec![p("10.0.0.0/8")]);
    }

    #[test]
    fn port_ranges_decompose_exactly() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        for (lo, hi) in [(32000u16, 32768u16), (1, 65535), (5, 6), (1000, 1999)] {
            let parts = port_prefixes(lo, hi);
            let covered: u32 = parts.iter().map(|&(_, l)| 1u32 << (16 - l)).sum();
            assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1);
            for &(v, l) in &parts {
                let m = if l == 0 { 0 } else { u16::MAX << (16 - l) };
                assert_eq!(v & m, v, "aligned");
            }
            assert!(parts.len() <= 30);
        }
    }
}
