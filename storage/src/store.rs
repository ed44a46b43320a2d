//! [`SledStorage`]: the Raft log, hard state, configuration and latest snapshot in one sled
//! tree, with the indexes raft-rs asks for most kept in memory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};

use crate::identity::Identity;
use crate::keys::{Key, FORMAT_VALUE};

mod memory;
mod plan;
mod raft_storage;

pub use memory::MemLog;
use plan::{EntryOp, Plan};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}: no Raft data directory here")]
    Missing(PathBuf),
    #[error("{path}: not a Palisade Raft data directory ({why}); it was left untouched")]
    Foreign { path: PathBuf, why: String },
    #[error("{path}: the Raft data is damaged ({why}); restore the directory from a backup, or move it away so this replica starts empty and catches up from its peers")]
    Corrupt { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    /// A write that would break the log (a gap, an overwrite of compacted entries, ...).
    #[error("refused: {0}")]
    Invalid(String),
}

/// Whether [`SledStorage::open`] may create the directory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Create {
    IfMissing,
    Never,
}

/// What one `Ready` (and the replica around it) writes, applied atomically by
/// [`SledStorage::write`] and durable when it returns. Applied in this order.
#[derive(Default, Debug)]
pub struct Write {
    /// A snapshot received from the leader: replaces the log and the state.
    pub snapshot: Option<Snapshot>,
    /// Entries to append; entries at and after the first one's index are replaced.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub conf_state: Option<ConfState>,
    /// The index of the entry whose change `conf_state` holds (written with it): entries
    /// at or below it are not applied to the configuration again after a restart.
    pub conf_index: Option<u64>,
    /// The configuration the log starts from (written once, with the first configuration).
    pub initial_conf: Option<ConfState>,
    /// A snapshot of the state machine taken by this replica: (applied index, configuration
    /// at that index, data; `None`: written already with [`SledStorage::stage_snapshot`]).
    /// The index must be in the log.
    pub own_snapshot: Option<(u64, ConfState, Option<Vec<u8>>)>,
    /// Drop the entries below this index (at most one past the latest snapshot's index).
    pub compact_to: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Cache {
    first: u64,
    last: u64,
    hard_state: HardState,
    conf_state: ConfState,
    conf_index: u64,
    /// `None` when not stored (a directory of an earlier version).
    initial_conf: Option<ConfState>,
    snapshot_meta: SnapshotMetadata,
}

/// The Raft log of one replica on disk. Clones share it (the apply thread stages snapshots
/// through one while Raft's thread writes the log through another).
#[derive(Clone)]
pub struct SledStorage {
    path: PathBuf,
    db: sled::Db,
    cache: Arc<RwLock<Cache>>,
}

/// The directory of snapshot files, inside the store's directory.
const SNAPSHOTS: &str = "snapshots";

fn other(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(e.to_string().into()))
}

/// How the log's sled database is opened (the same settings every time: sled refuses a
/// directory written with others).
fn sled_config(path: &Path) -> sled::Config {
    // The log is rewritten constantly (entries appended, compacted behind snapshots):
    // sled reclaims space more eagerly in low-space mode, and compression shrinks the
    // JSON entries and snapshots several times over.
    sled::Config::new()
        .path(path)
        .mode(sled::Mode::LowSpace)
        // sled caches up to 1 GiB by default; the log is read back rarely (a lagging peer).
        .cache_capacity(64 << 20)
        // Every write is flushed when it must be durable: no background flusher thread
        // (it also held the directory's lock for a while after the store was dropped).
        .flush_every_ms(None)
        .use_compression(true)
}

/// Whether sled refused to open a directory because its lock is held (by a store of this
/// process still being dropped, or another process). sled says so as an I/O error of kind
/// `Other` whose text names the lock, with the `WouldBlock` it got inside.
fn lock_held(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().starts_with("could not acquire lock on")
        }
        _ => false,
    }
}

impl SledStorage {
    /// Open the store in `path` (created if missing and `create` allows), checking that it is
    /// a Palisade Raft directory and that what it holds is whole.
    pub fn open(path: &Path, create: Create) -> Result<SledStorage, StorageError> {
        let io = |why: String| StorageError::Io {
            path: path.to_path_buf(),
            why,
        };
        let foreign = |why: &str| StorageError::Foreign {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        let corrupt = |why: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        match std::fs::read_dir(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create == Create::Never {
                    return Err(StorageError::Missing(path.to_path_buf()));
                }
                std::fs::create_dir_all(path).map_err(|e| io(e.to_string()))?;
            }
            Err(e) => return Err(io(e.to_string())),
            Ok(mut entries) => {
                let empty = entries.next().is_none();
                if !empty && !path.join("conf").exists() {
                    return Err(foreign("it holds other files and no sled database"));
                }
            }
        }
        let config = sled_config(path);
        // A store just dropped in this process may still be releasing its lock: wait a little.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let opened = loop {
            match config.open() {
                Err(e) if lock_held(&e) && std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        let db = opened.map_err(|e| match e {
            sled::Error::Unsupported(why) => foreign(&format!(
                "a sled database written with other settings ({why})"
            )),
            e => corrupt(format!("sled cannot open it: {e}")),
        })?;
        match db
            .get(Key::Format.to_bytes())
            .map_err(|e| corrupt(e.to_string()))?
        {
            Some(v) if &*v == FORMAT_VALUE => {}
            Some(v) => {
                return Err(foreign(&format!(
                    "its format is {:?}, not {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT_VALUE)
                )))
            }
            None if db.is_empty() => {
                db.insert(Key::Format.to_bytes(), FORMAT_VALUE)
                    .map_err(|e| io(e.to_string()))?;
                db.flush().map_err(|e| io(e.to_string()))?;
            }
            None => return Err(foreign("a sled database without Palisade's format marker")),
        }
        let mut cache = Self::load(&db).map_err(corrupt)?;
        // A directory of an earlier version never applied a membership change: its
        // configuration is the one its log starts from. Recorded now, before any change can
        // apply, so it can be handed to a replica that joins later.
        if cache.initial_conf.is_none()
            && cache.conf_index == 0
            && !cache.conf_state.voters.is_empty()
        {
            let bytes = cache
                .conf_state
                .write_to_bytes()
                .map_err(|e| corrupt(e.to_string()))?;
            db.insert(Key::InitialConf.to_bytes(), bytes)
                .and_then(|_| db.flush())
                .map_err(|e| io(e.to_string()))?;
            cache.initial_conf = Some(cache.conf_state.clone());
        }
        Self::tidy_snapshots(path, cache.snapshot_meta.index).map_err(corrupt)?;
        Ok(SledStorage {
            path: path.to_path_buf(),
            db,
            cache: Arc::new(RwLock::new(cache)),
        })
    }

    /// Everything but the entries, and the entries' range, checked whole.
    fn load(db: &sled::Db) -> Result<Cache, String> {
        fn decode<M: Message + Default>(db: &sled::Db, key: Key) -> Result<M, String> {
            match db.get(key.to_bytes()).map_err(|e| e.to_string())? {
                Some(v) => M::parse_from_bytes(&v).map_err(|e| format!("{key:?}: {e}")),
                None => Ok(M::default()),
            }
        }
        let hard_state: HardState = decode(db, Key::HardState)?;
        let conf_state: ConfState = decode(db, Key::ConfState)?;
        let snapshot_meta: SnapshotMetadata = decode(db, Key::SnapshotMeta)?;
        let conf_index = match db
            .get(Key::ConfIndex.to_bytes())
            .map_err(|e| e.to_string())?
        {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| format!("ConfIndex: {} bytes, not 8", v.len()))?,
            ),
            None => 0,
        };
        let initial_conf = match db
            .get(Key::InitialConf.to_bytes())
            .map_err(|e| e.to_string())?
        {
            Some(v) => {
                Some(ConfState::parse_from_bytes(&v).map_err(|e| format!("InitialConf: {e}"))?)
            }
            None => None,
        };
        let (mut first, mut last) = (None, None);
        for kv in db.range(Key::entries_from(0)) {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            let Some(Key::Entry(index)) = Key::from_bytes(&k) else {
                return Err(format!("an unknown key {k:?}"));
            };
            let e = Entry::parse_from_bytes(&v).map_err(|e| format!("entry {index}: {e}"))?;
            if e.index != index {
                return Err(format!("entry {index} says it is {}", e.index));
            }
            if let Some(l) = last {
                if index != l + 1 {
                    return Err(format!("the log jumps from {l} to {index}"));
                }
            }
            first.get_or_insert(index);
            last = Some(index);
        }
        let first = first.unwrap_or(snapshot_meta.index + 1);
        let last = last.unwrap_or(snapshot_meta.index);
        if first > snapshot_meta.index + 1 || last < snapshot_meta.index {
            return Err(format!(
                "the log ({first}..={last}) does not reach the snapshot at {}",
                snapshot_meta.index
            ));
        }
        Ok(Cache {
            first,
            last,
            hard_state,
            conf_state,
            conf_index,
            initial_conf,
            snapshot_meta,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the data of the snapshot at `index` lives: a file beside the tree, so a large
    /// one is written (and fsynced) without delaying the log's writes.
    fn snapshot_file(dir: &Path, index: u64) -> PathBuf {
        dir.join(SNAPSHOTS).join(format!("{index:020}.snap"))
    }

    /// Drop snapshot files other than the current one (staged and never adopted: a crash in
    /// between, or left behind), and check the current one is there.
    fn tidy_snapshots(dir: &Path, current: u64) -> Result<(), String> {
        let keep = Self::snapshot_file(dir, current);
        if let Ok(entries) = std::fs::read_dir(dir.join(SNAPSHOTS)) {
            for e in entries.flatten() {
                if e.path() != keep {
                    std::fs::remove_file(e.path())
                        .map_err(|err| format!("{}: {err}", e.path().display()))?;
                }
            }
        }
        if current > 0 && !keep.exists() {
            return Err(format!(
                "the data of the snapshot at {current} ({}) is missing",
                keep.display()
            ));
        }
        Ok(())
    }

    /// Write the data of the snapshot at `index` to its file, durably.
    fn write_snapshot_file(&self, index: u64, data: &[u8]) -> Result<(), StorageError> {
        let file = Self::snapshot_file(&self.path, index);
        let io = |e: std::io::Error| StorageError::Io {
            path: file.clone(),
            why: e.to_string(),
        };
        let dir = file.parent().expect("a snapshots directory");
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            // The new directory's entry, durable in the store's directory.
            std::fs::File::open(&self.path)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        palisade_files::atomic::write(&file, data).map_err(io)
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().expect("storage cache lock")
    }

    /// The metadata of the latest snapshot (index 0: none).
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.cache().snapshot_meta.clone()
    }

    /// Whose directory this is (`None`: nobody's yet, or written before identities existed).
    pub fn identity(&self) -> Result<Option<Identity>, StorageError> {
        let corrupt = |why: String| StorageError::Corrupt {
            path: self.path.clone(),
            why,
        };
        match self
            .db
            .get(Key::Identity.to_bytes())
            .map_err(|e| corrupt(e.to_string()))?
        {
            Some(v) => Identity::from_bytes(&v).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    /// Record whose directory this is, durably: once this returns, a crash cannot lose it.
    /// (Durability is decided here: the record is flushed before the replica takes part.)
    pub fn set_identity(&self, identity: &Identity) -> Result<(), StorageError> {
        let io = |e: sled::Error| StorageError::Io {
            path: self.path.clone(),
            why: e.to_string(),
        };
        self.db
            .insert(Key::Identity.to_bytes(), identity.to_bytes())
            .map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Whether the directory holds no Raft state at all (no entry, vote, term or snapshot).
    pub fn is_blank(&self) -> bool {
        let c = self.cache();
        c.last == 0
            && c.hard_state.term == 0
            && c.hard_state.vote == 0
            && c.snapshot_meta.index == 0
    }

    /// The configuration the directory holds (voters and learners).
    pub fn conf_state(&self) -> ConfState {
        self.cache().conf_state.clone()
    }

    /// The index of the entry whose configuration change [`SledStorage::conf_state`] holds
    /// (0: the initial configuration).
    pub fn conf_index(&self) -> u64 {
        self.cache().conf_index
    }

    /// The configuration the log starts from (before its first entry), when known: stored
    /// with the first configuration; in a directory of an earlier version, where no change
    /// was ever applied, the configuration itself.
    pub fn initial_conf(&self) -> Option<ConfState> {
        let c = self.cache();
        c.initial_conf.clone().or_else(|| {
            (c.conf_index == 0 && !c.conf_state.voters.is_empty()).then(|| c.conf_state.clone())
        })
    }

    /// Bytes the store takes on disk (sled's own estimate).
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db.size_on_disk().map_err(|e| StorageError::Io {
            path: self.path.clone(),
            why: e.to_string(),
        })
    }

    /// Apply `w` atomically and make it durable (one batch, one flush): here durability is
    /// decided for the whole log (an entry, a vote or a snapshot is acknowledged to raft-rs,
    /// and so to peers and clients, only after this returns).
    pub fn write(&self, w: Write) -> Result<(), StorageError> {
        let mut guard = self.cache.write().expect("storage cache lock");
        let Plan { next, entries } = guard.plan(&w, |i| self.read_entry(i).map(|e| e.term))?;
        let encode = |m: &dyn Message| {
            m.write_to_bytes()
                .map_err(|e| StorageError::Invalid(format!("cannot encode: {e}")))
        };
        let mut batch = sled::Batch::default();
        for op in entries {
            match op {
                EntryOp::Remove { from, to } => {
                    for i in from..=to {
                        batch.remove(Key::Entry(i).to_bytes());
                    }
                }
                EntryOp::Put(at) => {
                    let e = &w.entries[at];
                    batch.insert(Key::Entry(e.index).to_bytes(), encode(e)?);
                }
            }
        }
        let received = w.snapshot.is_some();
        if received || w.own_snapshot.is_some() {
            batch.insert(Key::SnapshotMeta.to_bytes(), encode(&next.snapshot_meta)?);
        }
        if received || w.hard_state.is_some() {
            batch.insert(Key::HardState.to_bytes(), encode(&next.hard_state)?);
        }
        if received || w.conf_state.is_some() {
            batch.insert(Key::ConfState.to_bytes(), encode(&next.conf_state)?);
        }
        if received || w.conf_index.is_some() {
            batch.insert(
                Key::ConfIndex.to_bytes(),
                next.conf_index.to_be_bytes().to_vec(),
            );
        }
        if let Some(cs) = &w.initial_conf {
            batch.insert(Key::InitialConf.to_bytes(), encode(cs)?);
        }
        // Snapshot data goes to its file first: the batch that names it current follows.
        if let Some(snap) = &w.snapshot {
            self.write_snapshot_file(snap.get_metadata().index, snap.get_data())?;
        }
        match &w.own_snapshot {
            Some((index, _, Some(data))) => self.write_snapshot_file(*index, data)?,
            Some((index, _, None)) if !Self::snapshot_file(&self.path, *index).exists() => {
                return Err(StorageError::Invalid(format!(
                    "no snapshot data was staged at {index}"
                )))
            }
            _ => {}
        }
        let io = |e: sled::Error| StorageError::Io {
            path: self.path.clone(),
            why: e.to_string(),
        };
        self.db.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        let replaced = guard.snapshot_meta.index;
        *guard = next;
        if replaced != guard.snapshot_meta.index && replaced > 0 {
            // The older snapshot's data is no longer needed (a leftover is tidied at open).
            let _ = std::fs::remove_file(Self::snapshot_file(&self.path, replaced));
        }
        Ok(())
    }

    /// Write the data of a snapshot at `index` beside the current one, durably, without
    /// holding up the log's writer (a large state takes a while); a later `Write` with
    /// `own_snapshot: (index, conf, None)` makes it current.
    pub fn stage_snapshot(&self, index: u64, data: Vec<u8>) -> Result<(), StorageError> {
        if index <= self.cache().snapshot_meta.index {
            return Err(StorageError::Invalid(format!(
                "a snapshot at {index} is not newer than the current one"
            )));
        }
        self.write_snapshot_file(index, &data)
    }

    fn read_entry(&self, index: u64) -> Result<Entry, StorageError> {
        let corrupt = |why: String| StorageError::Corrupt {
            path: self.path.clone(),
            why,
        };
        let v = self
            .db
            .get(Key::Entry(index).to_bytes())
            .map_err(|e| corrupt(e.to_string()))?
            .ok_or_else(|| corrupt(format!("entry {index} is missing")))?;
        Entry::parse_from_bytes(&v).map_err(|e| corrupt(format!("entry {index}: {e}")))
    }

    /// Append entries (a convenience for one-write callers and tests).
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.write(Write {
            entries: entries.to_vec(),
            ..Write::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_elsewhere_is_told_apart_from_other_errors() {
        // What sled 0.34 returns when another handle holds the directory's lock.
        let held = sled::Error::Io(std::io::Error::other(
            "could not acquire lock on \"/tmp/x/db\": Os { code: 11, kind: WouldBlock, message: \"Resource temporarily unavailable\" }",
        ));
        assert!(lock_held(&held));
        assert!(lock_held(&sled::Error::Io(
            std::io::ErrorKind::WouldBlock.into()
        )));
        assert!(!lock_held(&sled::Error::Io(std::io::Error::other(
            "disk full"
        ))));
        assert!(!lock_held(&sled::Error::Unsupported("x".into())));
    }

    #[test]
    fn sleds_own_refusal_while_a_store_holds_the_directory_is_a_held_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        let _held = SledStorage::open(&path, Create::IfMissing).unwrap();
        let refused = sled_config(&path)
            .open()
            .expect_err("sled refuses a directory another handle holds");
        assert!(lock_held(&refused), "{refused}");
    }
}
