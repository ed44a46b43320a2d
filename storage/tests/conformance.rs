//! The raft-rs storage contract: the same operations on raft-rs's `MemStorage` (the reference),
//! on `SledStorage` and on the harness's `MemLog` give the same answers, for random sequences
//! of writes; and the errors raft-rs relies on, from both of Palisade's logs.

use palisade_storage::{Create, MemLog, SledStorage, StorageError as LogError, Write};
use proptest::prelude::*;
use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, Storage, StorageError};

fn entry(index: u64, term: u64, data: u8) -> Entry {
    Entry {
        index,
        term,
        data: vec![data; (data % 7) as usize].into(),
        ..Entry::default()
    }
}

fn snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = voters;
    s
}

/// One write, drawn against the current log so that it is valid for both stores.
#[derive(Clone, Debug)]
enum Op {
    /// Append `n` entries starting `back` entries before the end (replacing those).
    Append {
        back: u64,
        n: u64,
        term_bump: u64,
        data: u8,
    },
    /// Install a leader's snapshot `ahead` entries past the first index.
    Snapshot {
        ahead: u64,
        term_bump: u64,
    },
    /// Compact to `back` entries before one past the latest snapshot.
    Compact {
        back: u64,
    },
    HardState {
        term: u64,
        vote: u64,
        commit: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4u64, 1..6u64, 0..2u64, any::<u8>()).prop_map(|(back, n, term_bump, data)| Op::Append { back, n, term_bump, data }),
        1 => (0..8u64, 0..3u64).prop_map(|(ahead, term_bump)| Op::Snapshot { ahead, term_bump }),
        1 => (0..3u64).prop_map(|back| Op::Compact { back }),
        1 => (0..9u64, 0..4u64, 0..9u64).prop_map(|(term, vote, commit)| Op::HardState { term, vote, commit }),
    ]
}

/// Both of Palisade's logs, written the same way.
trait Log: Storage {
    fn put(&self, w: Write) -> Result<(), LogError>;
    fn append(&self, entries: &[Entry]) -> Result<(), LogError> {
        self.put(Write {
            entries: entries.to_vec(),
            ..Write::default()
        })
    }
}

impl Log for SledStorage {
    fn put(&self, w: Write) -> Result<(), LogError> {
        self.write(w)
    }
}

impl Log for MemLog {
    fn put(&self, w: Write) -> Result<(), LogError> {
        self.write(w)
    }
}

fn same_answers(mem: &MemStorage, sled: &impl Storage) -> Result<(), TestCaseError> {
    let (first, last) = (mem.first_index().unwrap(), mem.last_index().unwrap());
    prop_assert_eq!(sled.first_index().unwrap(), first);
    prop_assert_eq!(sled.last_index().unwrap(), last);
    let (a, b) = (sled.initial_state().unwrap(), mem.initial_state().unwrap());
    prop_assert_eq!(a.hard_state, b.hard_state);
    prop_assert_eq!(a.conf_state, b.conf_state);
    for i in first.saturating_sub(2)..=last + 2 {
        prop_assert_eq!(sled.term(i), mem.term(i), "term({})", i);
    }
    for lo in first..=last + 1 {
        // An empty range: MemStorage indexes its first entry even then (and panics on an
        // empty log); the answer is simply nothing.
        prop_assert_eq!(
            sled.entries(lo, lo, None, GetEntriesContext::empty(false)),
            Ok(vec![])
        );
        for hi in lo + 1..=last + 1 {
            for max in [None, Some(0), Some(20)] {
                let ctx = || GetEntriesContext::empty(false);
                prop_assert_eq!(
                    sled.entries(lo, hi, max, ctx()),
                    mem.entries(lo, hi, max, ctx()),
                    "entries({}, {}, {:?})",
                    lo,
                    hi,
                    max
                );
            }
        }
    }
    if first > 1 {
        prop_assert_eq!(
            sled.entries(first - 1, last + 1, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sled_storage_answers_as_mem_storage_does(ops in prop::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStorage::open(&dir.path().join("raft"), Create::IfMissing).unwrap();
        let mem = MemStorage::new();
        let log = MemLog::new();
        let mut snap_index = 0u64;
        for op in ops {
            let (first, last) = (mem.first_index().unwrap(), mem.last_index().unwrap());
            let last_term = mem.term(last).unwrap_or(0);
            match op {
                Op::Append { back, n, term_bump, data } => {
                    let start = (last + 1).saturating_sub(back).max(first).max(1);
                    let term = last_term + term_bump;
                    let ents: Vec<Entry> = (0..n).map(|i| entry(start + i, term.max(1), data)).collect();
                    mem.wl().append(&ents).unwrap();
                    Log::append(&sled, &ents).unwrap();
                    log.append(&ents).unwrap();
                }
                Op::Snapshot { ahead, term_bump } => {
                    let index = first + ahead;
                    let s = snapshot(index, last_term + term_bump, vec![1, 2, 3]);
                    mem.wl().apply_snapshot(s.clone()).unwrap();
                    sled.write(Write { snapshot: Some(s.clone()), ..Write::default() }).unwrap();
                    log.write(Write { snapshot: Some(s), ..Write::default() }).unwrap();
                    snap_index = index;
                }
                Op::Compact { back } => {
                    let to = (snap_index + 1).saturating_sub(back).min(last + 1);
                    mem.wl().compact(to).unwrap();
                    sled.write(Write { compact_to: Some(to), ..Write::default() }).unwrap();
                    log.write(Write { compact_to: Some(to), ..Write::default() }).unwrap();
                }
                Op::HardState { term, vote, commit } => {
                    let hs = HardState { term, vote, commit, ..HardState::default() };
                    mem.wl().set_hardstate(hs.clone());
                    sled.write(Write { hard_state: Some(hs.clone()), ..Write::default() }).unwrap();
                    log.write(Write { hard_state: Some(hs), ..Write::default() }).unwrap();
                }
            }
            same_answers(&mem, &sled)?;
            same_answers(&mem, &log)?;
        }
        // And the same after reopening.
        let path = sled.path().to_path_buf();
        drop(sled);
        let sled = SledStorage::open(&path, Create::Never).unwrap();
        same_answers(&mem, &sled)?;
    }
}

#[test]
fn invalid_writes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    refuses_invalid_writes(
        &SledStorage::open(&dir.path().join("raft"), Create::IfMissing).unwrap(),
    );
    refuses_invalid_writes(&MemLog::new());
}

fn refuses_invalid_writes(s: &impl Log) {
    s.append(&[entry(1, 1, 1), entry(2, 1, 2), entry(3, 2, 3)])
        .unwrap();
    let refused = |w: Write| s.put(w).unwrap_err().to_string();
    assert!(refused(Write {
        entries: vec![entry(5, 2, 0)],
        ..Write::default()
    })
    .contains("gap"));
    assert!(refused(Write {
        entries: vec![entry(4, 2, 0), entry(6, 2, 0)],
        ..Write::default()
    })
    .contains("consecutive"));
    assert!(refused(Write {
        compact_to: Some(3),
        ..Write::default()
    })
    .contains("snapshot"));
    assert_eq!(
        s.last_index().unwrap(),
        3,
        "nothing of a refused write stays"
    );
    // A snapshot older than the log's start, after compaction, is out of date.
    s.put(Write {
        own_snapshot: Some((2, Default::default(), Some(b"state at 2".to_vec()))),
        compact_to: Some(3),
        ..Write::default()
    })
    .unwrap();
    assert_eq!(s.first_index().unwrap(), 3);
    assert_eq!(s.term(2).unwrap(), 1, "the term at the snapshot is kept");
    assert!(refused(Write {
        snapshot: Some(snapshot(2, 1, vec![1])),
        ..Write::default()
    })
    .contains("older"));
    assert!(refused(Write {
        entries: vec![entry(2, 5, 0)],
        ..Write::default()
    })
    .contains("compacted"));
    assert_eq!(
        s.entries(1, 4, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    );
    assert_eq!(
        s.term(9),
        Err(raft::Error::Store(StorageError::Unavailable))
    );
    // The snapshot raft-rs asks for: the one taken, or "take a newer one".
    let snap = s.snapshot(2, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 2);
    assert_eq!(snap.get_data(), b"state at 2");
    assert_eq!(
        s.snapshot(3, 2),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    );
}

#[test]
fn a_snapshot_staged_beside_the_log_becomes_current_only_when_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let s = SledStorage::open(&path, Create::IfMissing).unwrap();
    s.append(&[entry(1, 1, 0), entry(2, 1, 0), entry(3, 1, 0)])
        .unwrap();
    // Adopting a snapshot nobody staged is refused.
    let err = s
        .write(Write {
            own_snapshot: Some((2, Default::default(), None)),
            ..Write::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("no snapshot data was staged"), "{err}");
    s.stage_snapshot(2, b"state at 2".to_vec()).unwrap();
    s.write(Write {
        own_snapshot: Some((2, Default::default(), None)),
        compact_to: Some(2),
        ..Write::default()
    })
    .unwrap();
    assert_eq!(s.snapshot(2, 2).unwrap().get_data(), b"state at 2");
    // A newer one staged and never adopted (a crash in between) is dropped on reopen; the
    // adopted one stays.
    s.stage_snapshot(3, b"state at 3".to_vec()).unwrap();
    assert!(
        s.stage_snapshot(1, vec![]).is_err(),
        "older than the current"
    );
    drop(s);
    let s = SledStorage::open(&path, Create::Never).unwrap();
    let snap = s.snapshot(2, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 2);
    assert_eq!(snap.get_data(), b"state at 2");
    let err = s
        .write(Write {
            own_snapshot: Some((3, Default::default(), None)),
            ..Write::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("no snapshot data was staged"), "{err}");
}

/// A snapshot whose configuration does not hold the replica it is for (added after it was
/// taken) is not sent: that replica would refuse it. raft-rs is told to wait for a newer one.
#[test]
fn a_snapshot_is_not_sent_to_a_replica_it_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStorage::open(&dir.path().join("raft"), Create::IfMissing).unwrap();
    s.append(&[entry(1, 1, 0), entry(2, 1, 0)]).unwrap();
    let mut cs = raft::eraftpb::ConfState::default();
    cs.set_voters(vec![1, 2, 3]);
    cs.set_learners(vec![4]);
    s.write(Write {
        own_snapshot: Some((2, cs, Some(b"state at 2".to_vec()))),
        ..Write::default()
    })
    .unwrap();
    assert_eq!(s.snapshot(0, 4).unwrap().get_metadata().index, 2);
    assert_eq!(s.snapshot(0, 3).unwrap().get_metadata().index, 2);
    assert_eq!(
        s.snapshot(0, 5),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    );
}
