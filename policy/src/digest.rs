//! Slice digests that can be updated by a delta without re-reading the slice.
//!
//! A slice is a set of elements (endpoint headers, isolation, rules, address sets, members).
//! Each element's canonical bytes are hashed to 256 bits (XXH3-128 under two fixed seeds: a
//! specified, platform-independent hash, ten times cheaper than SHA-256 on these 20–80 byte
//! elements) and the hashes are summed lane-wise (four wrapping u64 lanes); the digest is
//! SHA-256 of that sum. Adding or removing an element
//! adds or subtracts its hash, so the controller updates a node's digest in time proportional
//! to the change, and a shared change (a pod joining a set referenced by 5,000 nodes) is hashed
//! once. The digest detects divergence between controller and agent; it is not a defence
//! against an adversary who chooses slice contents.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::encode::Writer;

/// The SHA-256 digest of a slice.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// Seeds of the two element-hash halves (fixed forever: they are part of the digest format).
const SEED_LOW: u64 = 0x7061_6c69_7361_6465; // "palisade"
const SEED_HIGH: u64 = 0x736c_6963_6520_7631; // "slice v1"

/// A running sum of element hashes.
#[derive(Copy, Clone, PartialEq, Eq, Default, Debug)]
pub struct Accumulator([u64; 4]);

impl Accumulator {
    /// The hash of one element whose canonical bytes `write` produces.
    pub fn element(write: impl FnOnce(&mut Writer)) -> Accumulator {
        // Elements are hashed by the million in a full compile: reuse one buffer per thread.
        thread_local! {
            static BUF: std::cell::RefCell<Writer> = std::cell::RefCell::new(Writer::with_capacity(256));
        }
        BUF.with_borrow_mut(|w| {
            w.clear();
            write(w);
            let a = xxh3_128_with_seed(w.bytes(), SEED_LOW);
            let b = xxh3_128_with_seed(w.bytes(), SEED_HIGH);
            Accumulator([(a >> 64) as u64, a as u64, (b >> 64) as u64, b as u64])
        })
    }

    pub fn add(&mut self, other: Accumulator) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_add(b);
        }
    }

    pub fn sub(&mut self, other: Accumulator) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_sub(b);
        }
    }

    pub fn plus(mut self, other: Accumulator) -> Accumulator {
        self.add(other);
        self
    }

    pub fn minus(mut self, other: Accumulator) -> Accumulator {
        self.sub(other);
        self
    }

    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"palisade.slice.v1");
        for lane in self.0 {
            h.update(lane.to_be_bytes());
        }
        Digest(h.finalize().into())
    }
}

impl std::iter::Sum for Accumulator {
    fn sum<I: Iterator<Item = Accumulator>>(iter: I) -> Accumulator {
        iter.fold(Accumulator::default(), Accumulator::plus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_free_and_invertible() {
        let a = Accumulator::element(|w| {
            w.str("a");
        });
        let b = Accumulator::element(|w| {
            w.str("b");
        });
        assert_eq!(a.plus(b), b.plus(a));
        assert_eq!(a.plus(b).minus(b), a);
        assert_ne!(a.digest(), b.digest());
        let d = a.digest();
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
    }
}
