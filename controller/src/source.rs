//! A directory of manifests as the source of commands (until the Kubernetes watch exists).
//!
//! Every scan walks the directory ([`palisade_files::walk`]: regular `.yaml`, `.yml`, `.json`
//! files, no link cycles, each bad path reported alone) and stats every file; only files
//! whose content changed are read, and only the objects they held or now hold are compared,
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
pub use watch::{watch, Health};

use settle::{Pending, Stamp};

/// An object or path the source could not take, as introspection reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub source: String,
    pub kind: String,
    pub object: String,
    pub errors: Vec<String>,
}

/// The objects `commands` name that a source other than `owner` holds, with that source:
/// `owner`'s version of them is not applied.
pub fn foreign(hub: &crate::hub::Hub, owner: &str, commands: &[Command]) -> BTreeMap<Key, String> {
    let st = hub.lock();
    commands
        .iter()
        .map(palisade_policy::manifest::command_key)
        .filter_map(|k| {
            let other = st.machine.owner(&k).filter(|o| *o != owner)?.to_string();
            Some((k, other))
        })
        .collect()
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
    records: records::Records,
    /// Paths the last walk skipped, and a failure to list the root.
    skipped: Vec<Rejected>,
    /// The changes the last scan proposed.
    proposed: Vec<(Key, Option<Object>)>,
    /// Objects whose proposed change was not applied (another source owns them): compared
    /// again at the next scan.
    retry: BTreeSet<Key>,
}

fn rejected_path(path: &str, reason: String) -> Rejected {
    Rejected {
        source: path.to_string(),
        kind: String::new(),
        object: String::new(),
        errors: vec![reason],
    }
}

/// Back-off before reading a file again after `failures` I/O errors: 1 s doubling to 60 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

impl ManifestDir {
    /// The source for `root`, remembering what its records hold.
    pub fn open(root: impl Into<PathBuf>, options: Options) -> Result<ManifestDir, RecordError> {
        let root: PathBuf = root.into();
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        let (records, saved) = records::Records::open(options.state_dir.as_deref())?;
        let mut dir = ManifestDir {
            root,
            options,
            files: BTreeMap::new(),
            defined_in: BTreeMap::new(),
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
            e.hint = Some((hint, SystemTime::now()));
        } else if walk::is_manifest(&rel.file_name().unwrap_or_default().to_string_lossy()) {
            self.files.entry(rel.to_path_buf()).or_default().hint = Some((hint, SystemTime::now()));
        }
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
        let mut next: Option<Instant> = None;
        let mut later = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        match walk::manifests(&self.root) {
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
                for found in &w.files {
                    let rel = self.relative(&found.path);
                    present.insert(rel.clone());
                    if let Some(t) = self.observe(&rel, &found.meta, now) {
                        later(t);
                    }
                }
                self.forget_gone(&present);
            }
        }
        let (waiting, rejected, warnings) = self.report();
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

    /// Look at one file; read and take its content when complete. Returns when to look again
    /// if it is waiting.
    fn observe(&mut self, rel: &Path, meta: &std::fs::Metadata, now: Instant) -> Option<Instant> {
        let stamp = Stamp::of(meta);
        let timing = self.options.timing;
        let entry = self.files.entry(rel.to_path_buf()).or_default();
        if entry.stamp == Some(stamp) {
            entry.pending = None;
            entry.waiting = None;
            return None;
        }
        let pending = Pending::observe(entry.pending, stamp, now, settle::age(meta));
        entry.pending = Some(pending);
        if let Some((_, at)) = entry.retry.filter(|(_, at)| now < *at) {
            return Some(at);
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
            return Some(at);
        }
        let name = rel.display().to_string();
        let content = file::read(
            &self.root.join(rel),
            &name,
            &self.options.limits,
            &self.options.default_ns,
        );
        let entry = self.files.get_mut(rel).expect("entry");
        if let Some(after) = &content.read_as {
            let read = Stamp::of(after);
            if read != stamp {
                // Changed while it was read: what was read may be half of it. Not taken.
                entry.pending = Some(Pending::observe(
                    Some(pending),
                    read,
                    now,
                    settle::age(after),
                ));
                entry.hint = None;
                entry.waiting = Some("changed while it was read; read again once quiet".into());
                return Some(now + timing.settle.max(Duration::from_millis(100)));
            }
        }
        entry.problems = content.problems.clone();
        entry.warnings = content.warnings.clone();
        if content.io_error {
            let failures = entry.retry.map_or(0, |(n, _)| n) + 1;
            let at = now + backoff(failures);
            entry.retry = Some((failures, at));
            entry.waiting = None;
            return Some(at);
        }
        entry.retry = None;
        let held = file::in_force(&entry.held, &content);
        let removed: Vec<&Key> = entry
            .held
            .keys()
            .filter(|k| !held.contains_key(*k))
            .collect();
        if !removed.is_empty() {
            if let Some(at) = pending.removals_at(hint, now, timing) {
                let list: Vec<String> = removed
                    .iter()
                    .take(5)
                    .map(|(kind, name)| format!("{kind} {name}"))
                    .collect();
                let more = removed.len().saturating_sub(5);
                entry.waiting = Some(format!(
                    "rewritten in place without {} object{} it held ({}{}); they stay in force until the file has stayed so for {}",
                    removed.len(),
                    if removed.len() == 1 { "" } else { "s" },
                    list.join(", "),
                    if more > 0 { format!(", and {more} more") } else { String::new() },
                    humantime::format_duration(timing.hold),
                ));
                return Some(at);
            }
        }
        entry.kept = held
            .keys()
            .filter(|k| content.broken || !content.objects.contains_key(*k))
            .cloned()
            .collect();
        let old = std::mem::replace(&mut entry.held, held);
        entry.stamp = Some(stamp);
        entry.pending = None;
        entry.hint = None;
        entry.waiting = None;
        let new = &self.files[rel].held;
        let mut changed = false;
        for (k, o) in &old {
            if new.get(k) != Some(o) {
                changed = true;
                self.dirty.insert(k.clone());
                if !new.contains_key(k) {
                    Self::undefine(&mut self.defined_in, k, rel);
                }
            }
        }
        for (k, o) in new {
            if old.get(k) != Some(o) {
                changed = true;
                self.dirty.insert(k.clone());
                self.defined_in
                    .entry(k.clone())
                    .or_default()
                    .insert(rel.to_path_buf());
            }
        }
        if changed {
            self.unsaved.insert(rel.to_path_buf());
        }
        None
    }

    fn undefine(defined_in: &mut BTreeMap<Key, BTreeSet<PathBuf>>, k: &Key, rel: &Path) {
        if let Some(paths) = defined_in.get_mut(k) {
            paths.remove(rel);
            if paths.is_empty() {
                defined_in.remove(k);
            }
        }
    }

    /// Files no longer in the directory: deleted (or renamed away) on purpose, so what they
    /// held goes at once.
    fn forget_gone(&mut self, present: &BTreeSet<PathBuf>) {
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for rel in gone {
            let entry = self.files.remove(&rel).expect("listed");
            for k in entry.held.keys() {
                Self::undefine(&mut self.defined_in, k, &rel);
                self.dirty.insert(k.clone());
            }
            if !entry.held.is_empty() || entry.stamp.is_none() {
                self.unsaved.insert(rel);
            }
        }
    }

    /// The version in force of each dirty object, compared with what the engine holds.
    fn propose(&mut self) -> Vec<Command> {
        self.proposed.clear();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for k in &self.dirty {
            let effective = match self.defined_in.get(k) {
                None => {
                    self.chosen.remove(k);
                    self.conflicts_unsaved = true;
                    None
                }
                Some(paths) => {
                    let keep = self.chosen.get(k).filter(|p| paths.contains(*p)).cloned();
                    let path = keep.unwrap_or_else(|| paths.first().expect("non-empty").clone());
                    if self.chosen.get(k) != Some(&path) {
                        self.conflicts_unsaved |= paths.len() > 1;
                        self.chosen.insert(k.clone(), path.clone());
                    }
                    self.files[&path].held.get(k).cloned()
                }
            };
            match (effective, self.current.get(k)) {
                (Some(new), Some(old)) if new == *old => {}
                (Some(new), _) => {
                    self.proposed.push((k.clone(), Some(new.clone())));
                    upserts.push(new);
                }
                (None, Some(old)) => {
                    self.proposed.push((k.clone(), None));
                    deletes.push(old.clone());
                }
                (None, None) => {}
            }
        }
        commands(upserts, deletes)
    }

    /// What is rejected, conflicting, skipped or waiting, as of now.
    fn report(&self) -> (usize, Vec<Rejected>, Vec<String>) {
        let mut rejected = self.skipped.clone();
        let mut warnings = Vec::new();
        let mut waiting = 0;
        for (path, e) in &self.files {
            rejected.extend(e.problems.iter().cloned());
            warnings.extend(e.warnings.iter().cloned());
            if let Some(why) = &e.waiting {
                waiting += 1;
                warnings.push(format!("{}: {why}", path.display()));
            }
            if !e.kept.is_empty() {
                let named: Vec<String> = e
                    .kept
                    .iter()
                    .take(5)
                    .map(|(kind, name)| format!("{kind} {name}"))
                    .collect();
                let more = e.kept.len().saturating_sub(5);
                warnings.push(format!(
                    "{}: has problems; the objects it held and no longer validly defines stay in force: {}{}",
                    path.display(),
                    named.join(", "),
                    if more > 0 { format!(", and {more} more") } else { String::new() },
                ));
            }
        }
        for (k, paths) in &self.defined_in {
            if paths.len() < 2 {
                continue;
            }
            let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let chosen = self
                .chosen
                .get(k)
                .filter(|p| paths.contains(*p))
                .unwrap_or_else(|| paths.first().expect("non-empty"));
            rejected.push(Rejected {
                source: list.join(", "),
                kind: k.0.to_string(),
                object: k.1.clone(),
                errors: vec![format!(
                    "defined in {} files: a conflict; the version from {} stays in force until only one file defines it",
                    paths.len(),
                    chosen.display()
                )],
            });
        }
        (waiting, rejected, warnings)
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
