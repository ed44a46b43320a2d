//! The typed keys of the one sled tree: a kind byte, then (for log entries) the index,
//! big-endian, so entries sort by index and a range scan walks the log in order. Snapshot
//! data is not in the tree: it is a file beside it (see `SledStorage`), so writing a large
//! one never delays the log's own writes.

/// A key of the Raft store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// What this store is: `FORMAT` and its version.
    Format,
    HardState,
    ConfState,
    /// The metadata of the latest snapshot (received from a leader or taken locally).
    SnapshotMeta,
    /// Whose directory this is: the group and the replica ([`crate::Identity`]).
    Identity,
    /// The index of the entry whose configuration change [`Key::ConfState`] holds (8 bytes,
    /// big-endian; absent: none was applied, the configuration is the initial one).
    ConfIndex,
    /// The configuration the log starts from (before its first entry): what the group was
    /// created with, or what a replica that joined was told it was created with.
    InitialConf,
    /// The log entry at an index.
    Entry(u64),
}

const FORMAT: u8 = 0;
const HARD_STATE: u8 = 1;
const CONF_STATE: u8 = 2;
const SNAPSHOT_META: u8 = 3;
// 4: reserved (snapshot data lived in the tree in format 1).
const IDENTITY: u8 = 5;
const CONF_INDEX: u8 = 6;
const INITIAL_CONF: u8 = 7;
const ENTRY: u8 = 16;

/// The value under [`Key::Format`]: what wrote this store, and the layout version.
pub const FORMAT_VALUE: &[u8] = b"palisade-raft-log/2";

impl Key {
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            Key::Format => vec![FORMAT],
            Key::HardState => vec![HARD_STATE],
            Key::ConfState => vec![CONF_STATE],
            Key::SnapshotMeta => vec![SNAPSHOT_META],
            Key::Identity => vec![IDENTITY],
            Key::ConfIndex => vec![CONF_INDEX],
            Key::InitialConf => vec![INITIAL_CONF],
            Key::Entry(i) => {
                let mut k = Vec::with_capacity(9);
                k.push(ENTRY);
                k.extend_from_slice(&i.to_be_bytes());
                k
            }
        }
    }

    /// The key `bytes` encode, if any.
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        match bytes {
            [FORMAT] => Some(Key::Format),
            [HARD_STATE] => Some(Key::HardState),
            [CONF_STATE] => Some(Key::ConfState),
            [SNAPSHOT_META] => Some(Key::SnapshotMeta),
            [IDENTITY] => Some(Key::Identity),
            [CONF_INDEX] => Some(Key::ConfIndex),
            [INITIAL_CONF] => Some(Key::InitialConf),
            [ENTRY, rest @ ..] => Some(Key::Entry(u64::from_be_bytes(rest.try_into().ok()?))),
            _ => None,
        }
    }

    /// The range of keys of entries `from..` (all entries for `from` = 0).
    pub fn entries_from(from: u64) -> std::ops::RangeInclusive<Vec<u8>> {
        Key::Entry(from).to_bytes()..=Key::Entry(u64::MAX).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_entries_sort_by_index() {
        for k in [
            Key::Format,
            Key::HardState,
            Key::ConfState,
            Key::SnapshotMeta,
            Key::Identity,
            Key::ConfIndex,
            Key::InitialConf,
            Key::Entry(0),
            Key::Entry(258),
            Key::Entry(u64::MAX),
        ] {
            assert_eq!(Key::from_bytes(&k.to_bytes()), Some(k));
        }
        assert!(Key::Entry(255).to_bytes() < Key::Entry(256).to_bytes());
        assert!(Key::SnapshotMeta.to_bytes() < Key::Entry(0).to_bytes());
        assert_eq!(Key::from_bytes(&[99]), None);
        assert_eq!(Key::from_bytes(&[16, 1, 2]), None);
    }
}
