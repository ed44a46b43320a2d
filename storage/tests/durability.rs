//! What is on disk survives: a clean reopen, a writer SIGKILLed at random points (no entry it
//! was told is durable is lost), and clear errors for a missing, foreign or damaged directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use palisade_storage::{Create, SledStorage, StorageError, Write};
use raft::eraftpb::{Entry, HardState};
use raft::{GetEntriesContext, Storage};

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1 + index / 50,
        data: format!("command {index}").into_bytes().into(),
        ..Entry::default()
    }
}

/// In a child process: append entries one `Write` at a time, saying after each that it is
/// durable, until killed.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var("PALISADE_STORAGE_CHILD_DIR") else {
        return; // only when run as the child of the test below
    };
    let s = SledStorage::open(Path::new(&dir), Create::IfMissing).unwrap();
    let mut i = s.last_index().unwrap();
    loop {
        i += 1;
        let hs = HardState {
            term: entry(i).term,
            commit: i,
            ..HardState::default()
        };
        s.write(Write {
            entries: vec![entry(i)],
            hard_state: Some(hs),
            ..Write::default()
        })
        .unwrap();
        println!("durable {i}");
    }
}

#[test]
fn a_writer_killed_at_random_points_loses_nothing_it_called_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("raft");
    let mut reported = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 1 + seed % 120;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("PALISADE_STORAGE_CHILD_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < kill_after {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(n) = line.strip_prefix("durable ") {
                reported = n.trim().parse().unwrap();
                seen += 1;
            }
        }
        // SIGKILL, in the middle of whatever it is doing.
        child.kill().unwrap();
        child.wait().unwrap();
        let s = SledStorage::open(&dir, Create::Never).unwrap();
        let last = s.last_index().unwrap();
        assert!(
            last >= reported,
            "round {round}: {reported} was durable, the log ends at {last}"
        );
        let got = s
            .entries(1, reported + 1, None, GetEntriesContext::empty(false))
            .unwrap();
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e, &entry(i as u64 + 1), "round {round}");
        }
        assert!(s.initial_state().unwrap().hard_state.commit >= reported);
    }
    assert!(reported > 6, "the child wrote across the rounds");
}

#[test]
fn missing_foreign_and_damaged_directories_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    let err = SledStorage::open(&missing, Create::Never).err().unwrap();
    assert!(matches!(err, StorageError::Missing(_)), "{err}");
    assert!(err.to_string().contains("nothing-here"));

    // Somebody else's files.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let err = SledStorage::open(&other, Create::IfMissing).err().unwrap();
    assert!(matches!(err, StorageError::Foreign { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "mine"
    );

    // Another program's sled database.
    let foreign = tmp.path().join("foreign");
    {
        let db = sled::open(&foreign).unwrap();
        db.insert(b"user:1", b"x").unwrap();
        db.flush().unwrap();
    }
    let err = SledStorage::open(&foreign, Create::IfMissing)
        .err()
        .unwrap();
    // (sled refuses it first: it was written uncompressed; either way it is not ours.)
    assert!(matches!(err, StorageError::Foreign { .. }), "{err}");

    // Damaged: an entry that does not decode, and a hole in the log.
    let damaged = tmp.path().join("damaged");
    {
        let s = SledStorage::open(&damaged, Create::IfMissing).unwrap();
        s.append(&[entry(1), entry(2), entry(3)]).unwrap();
    }
    {
        let db = raw(&damaged);
        db.insert(
            palisade_storage::keys::Key::Entry(2).to_bytes(),
            &b"\xff\xff\xff"[..],
        )
        .unwrap();
        db.flush().unwrap();
    }
    let err = SledStorage::open(&damaged, Create::Never).err().unwrap();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("entry 2"), "{err}");
    {
        let db = raw(&damaged);
        db.remove(palisade_storage::keys::Key::Entry(2).to_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = SledStorage::open(&damaged, Create::Never).err().unwrap();
    assert!(err.to_string().contains("jumps from 1 to 3"), "{err}");
}

/// The store's sled database opened directly (with the settings the store uses), to damage it.
/// sled releases its file lock from a background thread a moment after the last handle is
/// dropped: wait for the lock (at most 10 s) rather than fail on it.
fn raw(path: &std::path::Path) -> sled::Db {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(path).use_compression(true).open() {
            Ok(db) => return db,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::yield_now()
            }
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
    }
}
