//! The canonical byte encoding of slices and their parts: fixed-width big-endian integers and
//! length-prefixed strings, in the order of Palisade's sorted collections. Two equal values
//! always encode to the same bytes on every machine; set ids and digests are hashes of it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::model::{Name, ObjKey, Operator, Protocol, Selector};
use crate::net::Prefix;

/// Append-only canonical writer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    pub fn with_capacity(n: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn len(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).expect("collection longer than u32::MAX"))
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.len(s.len());
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    pub fn ip(&mut self, ip: Ipv4Addr) -> &mut Self {
        self.buf.extend_from_slice(&ip.octets());
        self
    }

    pub fn put<T: Canonical + ?Sized>(&mut self, v: &T) -> &mut Self {
        v.encode(self);
        self
    }

    /// A length-prefixed sequence.
    pub fn seq<'a, T: Canonical + 'a>(
        &mut self,
        items: impl ExactSizeIterator<Item = &'a T>,
    ) -> &mut Self {
        self.len(items.len());
        for i in items {
            i.encode(self);
        }
        self
    }
}

/// Types with one canonical encoding.
pub trait Canonical {
    fn encode(&self, w: &mut Writer);

    fn canonical_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }
}

impl Canonical for Name {
    fn encode(&self, w: &mut Writer) {
        w.str(self);
    }
}

impl Canonical for String {
    fn encode(&self, w: &mut Writer) {
        w.str(self);
    }
}

impl Canonical for ObjKey {
    fn encode(&self, w: &mut Writer) {
        w.str(&self.namespace).str(&self.name);
    }
}

impl Canonical for Prefix {
    fn encode(&self, w: &mut Writer) {
        w.u32(self.bits()).u8(self.prefix_len());
    }
}

impl Canonical for Protocol {
    fn encode(&self, w: &mut Writer) {
        w.u8(self.number());
    }
}

impl<T: Canonical> Canonical for BTreeSet<T> {
    fn encode(&self, w: &mut Writer) {
        w.seq(self.iter());
    }
}

impl Canonical for Selector {
    fn encode(&self, w: &mut Writer) {
        w.len(self.requirements().len());
        for r in self.requirements() {
            w.str(&r.key);
            match &r.op {
                Operator::In(vs) => w.u8(1).put(vs),
                Operator::NotIn(vs) => w.u8(2).put(vs),
                Operator::Exists => w.u8(3),
                Operator::DoesNotExist => w.u8(4),
            };
        }
    }
}
