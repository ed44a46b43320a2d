//! Who a Raft data directory belongs to: the group's identity and this replica's id, and, on
//! the replica that created the group, which initial members took the group's identity. It
//! is written durably before the replica takes any part in its group, so a directory that
//! lost its state (emptied, replaced) is told from one that never had any: a replica never
//! votes or acknowledges entries again under an id it used before with a directory that
//! forgot those votes and entries.

use std::collections::BTreeMap;

/// A group's identity: random, chosen once by the replica that created the group.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u128);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for GroupId {
    type Err = String;
    fn from_str(s: &str) -> Result<GroupId, String> {
        if s.len() != 32 {
            return Err(format!("a group id is 32 hexadecimal digits, not {s:?}"));
        }
        u128::from_str_radix(s, 16)
            .map(GroupId)
            .map_err(|_| format!("a group id is 32 hexadecimal digits, not {s:?}"))
    }
}

/// What a directory records of its replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// This replica's id.
    pub id: u64,
    /// The group it belongs to (`None`: it is joining one and has not got its identity yet).
    pub group: Option<GroupId>,
    /// A number drawn when this directory was first used to join a group: asking again
    /// with the same number is the same directory retrying, with another it is a directory
    /// that lost its state.
    pub nonce: u64,
    /// On the replica that created the group: each initial member that took its identity,
    /// with the nonce it asked with.
    pub adopted: BTreeMap<u64, u64>,
}

const VERSION: u8 = 1;

impl Identity {
    /// The typed big-endian bytes stored under [`crate::keys::Key::Identity`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(42 + 16 * self.adopted.len());
        b.push(VERSION);
        b.extend_from_slice(&self.id.to_be_bytes());
        b.push(u8::from(self.group.is_some()));
        b.extend_from_slice(&self.group.map_or(0, |g| g.0).to_be_bytes());
        b.extend_from_slice(&self.nonce.to_be_bytes());
        b.extend_from_slice(&(self.adopted.len() as u32).to_be_bytes());
        for (id, nonce) in &self.adopted {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&nonce.to_be_bytes());
        }
        b
    }

    /// The record in `bytes`, or why it is not one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Identity, String> {
        let mut r = Reader(bytes);
        let version = r.take::<1>()?[0];
        if version != VERSION {
            return Err(format!(
                "identity record of version {version}, not {VERSION}"
            ));
        }
        let id = u64::from_be_bytes(r.take()?);
        let has_group = r.take::<1>()?[0] == 1;
        let group = u128::from_be_bytes(r.take()?);
        let nonce = u64::from_be_bytes(r.take()?);
        let n = u32::from_be_bytes(r.take()?);
        let mut adopted = BTreeMap::new();
        for _ in 0..n {
            adopted.insert(u64::from_be_bytes(r.take()?), u64::from_be_bytes(r.take()?));
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the identity record", r.0.len()));
        }
        Ok(Identity {
            id,
            group: has_group.then_some(GroupId(group)),
            nonce,
            adopted,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("the identity record is cut short".into());
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(id: u64, group: Option<u128>, nonce: u64,
                              adopted in proptest::collection::btree_map(any::<u64>(), any::<u64>(), 0..5)) {
            let i = Identity { id, group: group.map(GroupId), nonce, adopted };
            prop_assert_eq!(Identity::from_bytes(&i.to_bytes()), Ok(i.clone()));
            let bytes = i.to_bytes();
            prop_assert!(Identity::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        }
    }

    #[test]
    fn group_ids_print_and_parse() {
        let g = GroupId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(g.to_string().parse::<GroupId>(), Ok(g));
        assert!("xyz".parse::<GroupId>().is_err());
    }
}
