//! What the manifest source takes from what it read: each file's content against the
//! change it was read for (complete, still being written, or held back), which file
//! defines each object, what to propose, and what to report.

use super::*;

impl ManifestDir {
    /// Take one file's content, read for the change `done.job.stamp`. Returns when to look
    /// again if it is waiting.
    pub(super) fn take_read(
        &mut self,
        rel: &Path,
        done: reader::Done,
        now: Instant,
    ) -> Option<Instant> {
        let timing = self.options.timing;
        let (stamp, hint) = (done.job.stamp, done.job.hint);
        let entry = self.files.get_mut(rel)?;
        let Some(pending) = entry.pending.filter(|p| p.stamp == stamp) else {
            // Looked at again since (another change): the next scan reads it.
            return Some(now);
        };
        let content = match (done.content, done.meta, entry.last.take()) {
            // The same bytes as last parsed: that content, as read now.
            (None, meta, Some((hash, mut last))) => {
                last.read_as = meta;
                entry.last = Some((hash, last.clone()));
                last
            }
            (None, _, None) => return Some(now),
            (Some(content), _, _) => {
                if let Some(hash) = done.hash {
                    entry.last = Some((hash, content.clone()));
                }
                content
            }
        };

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
        if done.took >= self.reader.budget {
            entry.warnings.push(format!(
                "{}: took {} to read and parse, longer than its budget ({}); other files went on meanwhile",
                rel.display(),
                humantime::format_duration(Duration::from_millis(done.took.as_millis() as u64)),
                humantime::format_duration(self.reader.budget)
            ));
        }
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
        // A change that may allow more than the version in force (the policy core tells:
        // new rules or peers, lost isolation, changed pods) may be a writer's half: it too
        // waits until the file has stayed so for the hold time, however its writer opens and
        // closes it. Renamed into place, it is a whole new version and applies at once.
        // Compared with the version in force (the replicated state's, so a new leader holds
        // what its predecessor held). Only an object new everywhere, in a file first seen at
        // this source's first scan (a first start; a file written while no leader ran), is
        // taken as written: a file its writer holds open waits above.
        let known = entry.stamp.is_some() || !entry.held.is_empty() || self.scanned;
        let current = &self.current;
        let widened: Vec<&Key> = held
            .iter()
            .filter(|(k, o)| {
                (known || current.contains_key(*k))
                    && !palisade_policy::narrow::only_narrows(current.get(*k), o)
            })
            .map(|(k, _)| k)
            .collect();
        if !removed.is_empty() || !widened.is_empty() {
            if let Some(at) = pending.removals_at(hint, now, timing) {
                let list = |keys: &[&Key]| {
                    let shown: Vec<String> = keys
                        .iter()
                        .take(5)
                        .map(|(kind, name)| format!("{kind} {name}"))
                        .collect();
                    let more = keys.len().saturating_sub(5);
                    format!(
                        "{}{}",
                        shown.join(", "),
                        if more > 0 {
                            format!(", and {more} more")
                        } else {
                            String::new()
                        }
                    )
                };
                let mut what = Vec::new();
                if !removed.is_empty() {
                    what.push(format!(
                        "without {} object{} it held ({})",
                        removed.len(),
                        if removed.len() == 1 { "" } else { "s" },
                        list(&removed)
                    ));
                }
                if !widened.is_empty() {
                    what.push(format!("allowing more through {}", list(&widened)));
                }
                entry.waiting = Some(format!(
                    "rewritten in place {}; the version in force stays until the file has stayed so for {} (rename a complete file into place to apply at once)",
                    what.join(" and "),
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

    pub(super) fn undefine(defined_in: &mut BTreeMap<Key, BTreeSet<PathBuf>>, k: &Key, rel: &Path) {
        if let Some(paths) = defined_in.get_mut(k) {
            paths.remove(rel);
            if paths.is_empty() {
                defined_in.remove(k);
            }
        }
    }

    /// Files no longer in the directory: deleted (or renamed away) on purpose, so what they
    /// held goes at once.
    pub(super) fn forget_gone(&mut self, present: &BTreeSet<PathBuf>) {
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
    pub(super) fn propose(&mut self) -> Vec<Command> {
        self.proposed.clear();
        let holding = self
            .files
            .iter()
            .any(|(rel, e)| e.stamp.is_none() && self.reader.busy(rel).is_some());
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
                        self.chosen.insert(k.clone(), path.clone());
                    }
                    // The winner of a conflict is recorded (a restart must keep it, not take
                    // the first file by path); an ended conflict's record goes.
                    let recorded = self.winners_saved.get(k) == Some(&path);
                    if (paths.len() > 1) != recorded {
                        self.conflicts_unsaved = true;
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
                // While a file not read yet in this run is being parsed, nothing is deleted:
                // it may define the object (a new leader's first load, a file renamed).
                (None, Some(_)) if holding => {
                    self.retry.insert(k.clone());
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
    pub(super) fn report(&self) -> (usize, Vec<Rejected>, Vec<String>) {
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
                applied: false,
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
}
