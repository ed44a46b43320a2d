//! A directory of manifests as a source of commands (beside the Kubernetes API,
//! [`crate::kubernetes`], and `palisadectl apply`, [`crate::admin`]).
//!
//! Every scan walks the directory ([`palisade_files::walk`]: regular `.yaml`, `.yml`, `.json`
//! files, no link cycles, no link out of the directory unless allowed, each bad path reported
//! alone) and stats every file; only files whose content changed are read, off the scan
//! thread ([`reader`]: a large file never holds up the others; content whose hash is the one
//! last parsed is not parsed again), and only the objects they held or now hold are compared,
//! so an edit costs what it touches. Fail closed at every step:
//! * a change is read only when complete ([`settle`]): closed by its writer or renamed into
//!   place, or quiet for `settle`; a file that would lose objects by an in-place rewrite
//!   (emptied, truncated) keeps them until it has stayed so for `hold`;
//! * a file with any problem (an invalid object, a document that cannot be identified, a
//!   syntax error, unreadable, too large) keeps in force every object it held and no longer
//!   validly defines, as the API server keeps an object whose update it rejected;
//! * an object defined in several files is a conflict, reported; the version in force when
//!   the conflict arose stays (at a first start, the first file by path);
//! * what each file holds is recorded in the state directory ([`records`]), so all of this
//!   holds across restarts;
//! * [`ManifestDir::scan`] proposes commands and [`ManifestDir::commit`] records them as
//!   applied only once the caller has persisted and applied them: a failure is retried.

pub mod file;
mod ingest;
mod reader;
mod records;
pub mod settle;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use palisade_files::walk;
use palisade_policy::manifest::{Limits, Object};
use palisade_policy::model::Command;

use file::commands;
pub use file::Key;
pub use records::RecordError;
pub use settle::{Hint, Timing};
pub use watch::{watch, Context, Health};

use settle::{Pending, Stamp};

pub use crate::reports::Rejected;

/// The objects `commands` name that a source other than `owner` holds, with that source:
/// `owner`'s version of them is not applied.
pub async fn foreign(
    hub: &crate::hub::Hub,
    owner: &'static str,
    commands: &[Command],
) -> Result<BTreeMap<Key, String>, crate::hub::Gone> {
    let keys: Vec<Key> = commands
        .iter()
        .map(palisade_policy::manifest::command_key)
        .collect();
    hub.ask(move |st| {
        keys.into_iter()
            .filter_map(|k| {
                let other = st.machine().owner(&k).filter(|o| *o != owner)?.to_string();
                Some((k, other))
            })
            .collect()
    })
    .await
}

/// How the source reads its directory.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace of objects whose manifests name none.
    pub default_ns: String,
    pub timing: Timing,
    pub limits: Limits,
    /// Where what each file holds is recorded (`None`: nowhere).
    pub state_dir: Option<PathBuf>,
    /// Directories outside the manifests directory that links in it may lead to (others are
    /// reported and not followed).
    pub link_roots: Vec<PathBuf>,
    /// A file taking longer to read and parse is reported, and no longer counts against the
    /// readers running at once (others start beside it).
    pub parse_budget: Duration,
    /// How long a scan waits for the files it reads ([`PATIENCE`]).
    pub patience: Duration,
}

/// How long a scan waits for the files it reads before going on without those not parsed
/// yet (they apply when done, at a scan of their own).
pub const PATIENCE: Duration = Duration::from_millis(500);

/// Files read and parsed at once, within their budget.
fn readers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

impl Options {
    /// Changes read at once, nothing recorded: for tests that do not exercise timing.
    pub fn immediate() -> Options {
        Options {
            default_ns: "default".into(),
            timing: Timing {
                settle: Duration::ZERO,
                hold: Duration::ZERO,
            },
            limits: Limits::default(),
            state_dir: None,
            link_roots: Vec::new(),
            parse_budget: Duration::from_secs(2),
            patience: PATIENCE,
        }
    }
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Commands bringing the engine to the directory's content, in a safe order: upserts
    /// (namespaces, policies, pods) before deletes (pods, policies, namespaces).
    pub commands: Vec<Command>,
    /// Everything currently rejected, conflicting or unreadable.
    pub rejected: Vec<Rejected>,
    pub warnings: Vec<String>,
    /// Files changed and not applied yet (being written, or holding removals).
    pub waiting: usize,
    /// When a waiting file should be looked at again.
    pub next: Option<Instant>,
}

/// One manifest file as the source knows it.
#[derive(Default)]
struct Entry {
    /// The objects it holds in force.
    held: BTreeMap<Key, Object>,
    /// The content `held` was read from (`None`: from a record, not read in this run).
    stamp: Option<Stamp>,
    pending: Option<Pending>,
    /// What inotify last said, and when.
    hint: Option<(Hint, SystemTime)>,
    problems: Vec<Rejected>,
    warnings: Vec<String>,
    /// Why a pending change is not applied yet.
    waiting: Option<String>,
    /// Objects it holds in force that its content no longer validly defines (kept because
    /// the file has problems).
    kept: Vec<Key>,
    /// After I/O errors: failures so far, and not before when to read again.
    retry: Option<(u32, Instant)>,
    /// The last content parsed, with the hash of its bytes (the same bytes are not parsed
    /// again: a file waiting for its hold time is not parsed at every scan).
    last: Option<(u128, file::Content)>,
}

/// What a look at one file decided.
enum Look {
    /// Nothing to read now; look again then (if ever).
    Wait(Option<Instant>),
    /// Read it.
    Read(reader::Job),
}

pub struct ManifestDir {
    root: PathBuf,
    options: Options,
    /// By path relative to the root.
    files: BTreeMap<PathBuf, Entry>,
    defined_in: BTreeMap<Key, BTreeSet<PathBuf>>,
    /// Which file's version of each object is in force.
    chosen: BTreeMap<Key, PathBuf>,
    /// What the engine holds from this source (changes are added by `commit`).
    current: BTreeMap<Key, Object>,
    /// Objects whose version in force may differ from `current`.
    dirty: BTreeSet<Key>,
    /// Files whose record must be written again (or removed).
    unsaved: BTreeSet<PathBuf>,
    conflicts_unsaved: bool,
    /// The winners of conflicts as the records hold them.
    winners_saved: BTreeMap<Key, PathBuf>,
    /// Whether the first load is over (a scan with nothing waiting, or the hold time after the
    /// first scan): files first seen after it are new while running.
    scanned: bool,
    /// When the first scan ran.
    first_scan: Option<Instant>,
    records: records::Records,
    /// Paths the last walk skipped, and a failure to list the root.
    skipped: Vec<Rejected>,
    /// The changes the last scan proposed.
    proposed: Vec<(Key, Option<Object>)>,
    /// Objects whose proposed change was not applied (another source owns them): compared
    /// again at the next scan.
    retry: BTreeSet<Key>,
    reader: reader::Reader,
}

fn rejected_path(path: &str, reason: String) -> Rejected {
    Rejected {
        applied: false,
        source: path.to_string(),
        kind: String::new(),
        object: String::new(),
        errors: vec![reason],
    }
}

/// Back-off before reading a file again after `failures` I/O errors: 1 s doubling to 60 s.
fn backoff(failures: u32) -> Duration {
    palisade_backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).delay(failures)
}

impl ManifestDir {
    /// The source for `root`, remembering what its records hold.
    pub fn open(root: impl Into<PathBuf>, options: Options) -> Result<ManifestDir, RecordError> {
        let root: PathBuf = root.into();
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        let (records, saved) = records::Records::open(options.state_dir.as_deref())?;
        let reader = reader::Reader::new(
            options.limits.clone(),
            options.default_ns.clone(),
            readers(),
            options.parse_budget,
        );
        let mut dir = ManifestDir {
            reader,
            root,
            options,
            files: BTreeMap::new(),
            defined_in: BTreeMap::new(),
            winners_saved: saved.winners.clone(),
            scanned: false,
            first_scan: None,
            chosen: saved.winners,
            current: BTreeMap::new(),
            dirty: BTreeSet::new(),
            unsaved: BTreeSet::new(),
            conflicts_unsaved: false,
            records,
            skipped: Vec::new(),
            proposed: Vec::new(),
            retry: BTreeSet::new(),
        };
        for (path, held) in saved.files {
            for k in held.keys() {
                dir.defined_in
                    .entry(k.clone())
                    .or_default()
                    .insert(path.clone());
                dir.dirty.insert(k.clone());
            }
            dir.files.insert(
                path,
                Entry {
                    held,
                    ..Entry::default()
                },
            );
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether records of an earlier run were found (what the files held then).
    pub fn has_records(&self) -> bool {
        !self.files.is_empty()
    }

    /// What inotify said about `path` (absolute, under the root).
    pub fn hint(&mut self, path: &Path, hint: Hint) {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return;
        };
        if let Some(e) = self.files.get_mut(rel) {
            // A close after a rename into place changes nothing: it stays a whole version.
            if !(hint == Hint::Closed && matches!(e.hint, Some((Hint::Renamed, _)))) {
                e.hint = Some((hint, SystemTime::now()));
            }
        } else if walk::is_manifest(&rel.file_name().unwrap_or_default().to_string_lossy()) {
            self.files.entry(rel.to_path_buf()).or_default().hint = Some((hint, SystemTime::now()));
        }
    }

    /// What to call when a file finishes parsing after a scan stopped waiting for it (the
    /// loop scans again).
    pub fn set_waker(&self, waker: impl Fn() + Send + 'static) {
        self.reader.set_waker(Box::new(waker));
    }

    /// Files parsed since the last call.
    pub fn take_parsed(&self) -> u64 {
        self.reader.take_parsed()
    }

    /// inotify lost events: what it said before says nothing now (changes fall back to the
    /// quiet period).
    pub fn forget_hints(&mut self) {
        for e in self.files.values_mut() {
            e.hint = None;
        }
    }

    /// Walk the directory, read what is complete, and propose the commands that bring the
    /// engine to it. Nothing is taken as applied until [`ManifestDir::commit`].
    pub fn scan(&mut self, now: Instant) -> Scan {
        if self
            .first_scan
            .is_some_and(|f| now >= f + self.options.timing.hold)
        {
            self.scanned = true;
        }
        let mut next: Option<Instant> = None;
        let mut later = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        self.reader.start_readers();
        match walk::manifests_following(&self.root, &self.options.link_roots) {
            Err(e) => {
                // Nothing can be told about any file: everything stays as it is.
                self.skipped = vec![rejected_path(
                    &self.root.display().to_string(),
                    format!("cannot list the manifests directory ({e}); everything it held stays in force"),
                )];
                later(now + backoff(2));
            }
            Ok(w) => {
                let mut present = BTreeSet::new();
                self.skipped.clear();
                for s in &w.skipped {
                    let rel = self.relative(&s.path);
                    // A path that cannot be read is not a deleted one: a file replaced by
                    // something unreadable, or every file under a directory that cannot be
                    // listed, keeps what it held.
                    for known in self.files.keys().filter(|p| p.starts_with(&rel)) {
                        present.insert(known.clone());
                    }
                    present.insert(rel.clone());
                    self.skipped.push(rejected_path(
                        &rel.display().to_string(),
                        format!("{}; what it held stays in force", s.reason),
                    ));
                }
                let mut jobs = Vec::new();
                let mut seen = BTreeMap::new();
                for found in &w.files {
                    let rel = self.relative(&found.path);
                    present.insert(rel.clone());
                    match self.observe(&rel, &found.meta, now) {
                        Look::Wait(t) => t.into_iter().for_each(&mut later),
                        Look::Read(job) => jobs.push(job),
                    }
                    seen.insert(rel, Stamp::of(&found.meta));
                }
                self.forget_gone(&present);
                // Read off this thread; what is not parsed within the patience applies at a
                // later scan (the reader wakes the loop).
                let submitted: Vec<PathBuf> = jobs.iter().map(|j| j.rel.clone()).collect();
                self.reader.read_all(jobs, self.options.patience);
                self.take_reads(&seen, now).into_iter().for_each(&mut later);
                // Still being parsed: waiting (shown, counted); the reader wakes the loop
                // when done.
                for rel in submitted {
                    if self.reader.busy(&rel).is_some() {
                        if let Some(e) = self.files.get_mut(&rel) {
                            e.waiting = Some("being read and parsed (other files go on)".into());
                        }
                    }
                }
            }
        }
        // A read past its budget lets another reader start: looked at again then.
        if let Some(t) = self.reader.next_over_budget() {
            later(t);
        }
        let first = *self.first_scan.get_or_insert(now);
        let (waiting, rejected, warnings) = self.report();
        if waiting == 0 || now >= first + self.options.timing.hold {
            self.scanned = true;
        }
        let commands = self.propose();
        Scan {
            commands,
            rejected,
            warnings,
            waiting,
            next,
        }
    }

    fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap_or(path).to_path_buf()
    }

    /// Look at one file: whether to read it now, or when to look again if it is waiting.
    fn observe(&mut self, rel: &Path, meta: &std::fs::Metadata, now: Instant) -> Look {
        let stamp = Stamp::of(meta);
        let timing = self.options.timing;
        let entry = self.files.entry(rel.to_path_buf()).or_default();
        if entry.stamp == Some(stamp) {
            entry.pending = None;
            entry.waiting = None;
            return Look::Wait(None);
        }
        let pending = Pending::observe(entry.pending, stamp, now, settle::age(meta));
        entry.pending = Some(pending);
        if let Some((_, at)) = entry.retry.filter(|(_, at)| now < *at) {
            return Look::Wait(Some(at));
        }
        // A hint seen before the file's last modification says nothing about that content.
        let hint = match entry.hint {
            Some((h, seen)) if meta.modified().map_or(true, |m| m <= seen) => h,
            _ => Hint::None,
        };
        if let Some(at) = pending.read_at(hint, now, timing) {
            entry.waiting = Some(match hint {
                Hint::Writing => "being written (waiting for its writer to close it)".into(),
                // No elapsed time here: the line is logged when it first appears, and must read
                // the same at every scan.
                _ => format!(
                    "changed; read once unchanged for {}",
                    humantime::format_duration(timing.settle)
                ),
            });
            return Look::Wait(Some(at));
        }
        // Whatever inotify said (or, after a restart, could not say): a file some process
        // still holds open for writing may be a half, so it waits for the close. The kernel
        // tells, for any process (a read lease cannot be taken on a file open for writing).
        if hint != Hint::Renamed
            && palisade_files::read::open_for_writing(&self.root.join(rel)) == Some(true)
        {
            let entry = self.files.get_mut(rel).expect("entry");
            entry.waiting = Some(
                "held open for writing by a process (waiting for its writer to close it)".into(),
            );
            return Look::Wait(Some(now + timing.settle.max(Duration::from_secs(1))));
        }
        if let Some(since) = self.reader.busy(rel) {
            let budget = self.reader.budget;
            let over = since.is_some_and(|t| now.saturating_duration_since(t) >= budget);
            let entry = self.files.get_mut(rel).expect("entry");
            entry.waiting = Some(if over {
                format!(
                    "being parsed for longer than its budget ({}); other files go on, and its change applies once parsed",
                    humantime::format_duration(budget)
                )
            } else {
                "being read and parsed (other files go on)".into()
            });
            // The reader wakes the loop when it is done.
            return Look::Wait(None);
        }
        let entry = &self.files[rel];
        Look::Read(reader::Job {
            rel: rel.to_path_buf(),
            path: self.root.join(rel),
            name: rel.display().to_string(),
            stamp,
            hint,
            known: entry.last.as_ref().map(|(h, _)| *h),
        })
    }

    /// Take what the reader finished (for files still present as `seen`); when to look again
    /// at files waiting.
    fn take_reads(&mut self, seen: &BTreeMap<PathBuf, Stamp>, now: Instant) -> Vec<Instant> {
        let mut again = Vec::new();
        for (rel, done) in self.reader.take_all() {
            match seen.get(&rel) {
                // Gone since: nothing to take.
                None => {}
                // Changed since it was read: read again.
                Some(stamp) if *stamp != done.job.stamp => again.push(now),
                Some(_) => again.extend(self.take_read(&rel, done, now)),
            }
        }
        again
    }

    /// Whether records must be written before the proposed commands are applied.
    pub fn unsaved(&self) -> bool {
        !self.unsaved.is_empty() || self.conflicts_unsaved
    }

    /// Record what each changed file holds, so a restart keeps it. On error nothing is
    /// forgotten: the next call writes it again.
    pub fn persist(&mut self) -> std::io::Result<()> {
        if !self.unsaved() {
            return Ok(());
        }
        let changed: Vec<(PathBuf, Option<&BTreeMap<Key, Object>>)> = self
            .unsaved
            .iter()
            .map(|p| (p.clone(), self.files.get(p).map(|e| &e.held)))
            .collect();
        let conflicts: BTreeMap<Key, PathBuf> = self
            .chosen
            .iter()
            .filter(|(k, _)| self.defined_in.get(*k).is_some_and(|p| p.len() > 1))
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        self.records
            .save(&changed, self.conflicts_unsaved.then_some(&conflicts))?;
        self.unsaved.clear();
        if self.conflicts_unsaved {
            self.winners_saved = conflicts;
        }
        self.conflicts_unsaved = false;
        Ok(())
    }

    /// The commands of the last scan were applied: the engine now holds them.
    pub fn commit(&mut self) {
        for (k, v) in self.proposed.drain(..) {
            match v {
                Some(o) => self.current.insert(k, o),
                None => self.current.remove(&k),
            };
        }
        self.dirty = std::mem::take(&mut self.retry);
    }

    /// The last scan's proposed changes to `keys` will not be applied (another source owns
    /// those objects): they are compared again at the next scan.
    pub fn not_applied(&mut self, keys: &BTreeSet<Key>) {
        self.proposed.retain(|(k, _)| !keys.contains(k));
        self.retry.extend(keys.iter().cloned());
    }

    /// Leadership was (re)gained: what the replicated state holds from this source replaces
    /// what the source believed applied (proposals may have been lost with the previous
    /// leadership), and every object either side names is compared at the next scan, so
    /// only what differs is proposed.
    pub fn reconcile(&mut self, applied: BTreeMap<Key, Object>) {
        self.current = applied;
        self.dirty.extend(self.current.keys().cloned());
        self.dirty.extend(self.defined_in.keys().cloned());
        self.proposed.clear();
    }
}

#[cfg(test)]
mod tests;
