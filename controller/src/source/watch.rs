//! The source loop, on its own thread (it does blocking file I/O). It runs only while this
//! replica leads the Raft group: followers watch nothing and propose nothing. On becoming
//! leader it reconciles the directory against what the replicated state holds from this
//! source ([`ManifestDir::reconcile`]), then watches the directory with inotify (its events
//! also say when a writer has finished: [`Hint`]), scans after events (debounced), when a
//! waiting file is due, and periodically; persists its records and proposes what changed,
//! waiting until it is applied. A failure to persist or commit is retried with back-off and
//! shows in [`Health`], metrics and the log; nothing is taken as applied until it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use palisade_replica::Refused;

use palisade_policy::manifest::Object;

use super::{Hint, Key, ManifestDir, Rejected, Scan};
use crate::hub::Hub;
use crate::leader::{Ended, LeaderSource};
use crate::replication::Group;
use crate::reports::Reports;

/// The owner of objects from a manifests directory.
pub const OWNER: &str = "manifests";

/// Whether the source keeps the engine in step with its directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Why changes cannot be recorded or applied right now (they are retried).
    pub failing: Option<String>,
    /// Files changed and not applied yet, by design (being written, holding removals).
    pub waiting: usize,
    /// Whether this replica runs the source now (it leads the group).
    pub active: bool,
    /// The revision holding the directory's content as of the last successful scan.
    pub revision: Option<u64>,
}

/// How the loop is paced.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Scan this often even without events.
    pub rescan: Duration,
    /// After an event, wait this long for more before scanning.
    pub debounce: Duration,
    /// On becoming leader, wait at most this long for files being written (so the first
    /// revision holds them).
    pub settle: Duration,
}

/// One rejection as a log line: `source: Kind name: errors`.
pub fn rejection_line(r: &Rejected) -> String {
    let what = [r.kind.as_str(), r.object.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    if what.is_empty() {
        format!("{}: {}", r.source, r.errors.join("; "))
    } else {
        format!("{}: {what}: {}", r.source, r.errors.join("; "))
    }
}

/// Lines logged once when they appear (rejections, warnings), not at every scan.
#[derive(Default)]
pub struct Reported(BTreeSet<String>);

impl Reported {
    pub fn log(&mut self, scan: &Scan) {
        let now: BTreeSet<String> = scan
            .rejected
            .iter()
            .map(|r| format!("rejected: {}", rejection_line(r)))
            .chain(scan.warnings.iter().cloned())
            .collect();
        for line in now.difference(&self.0) {
            warn!("{line}");
        }
        self.0 = now;
    }
}

/// Hints carried by one inotify event, and whether it calls for a scan at all.
fn classify(event: &notify::Event) -> (Vec<(PathBuf, Hint)>, bool) {
    let all = |h: Hint| event.paths.iter().map(|p| (p.clone(), h)).collect();
    match event.kind {
        // Reads, ours included, say nothing.
        EventKind::Access(AccessKind::Open(_))
        | EventKind::Access(AccessKind::Close(AccessMode::Read)) => (vec![], false),
        // A metadata change says nothing about content, but may make a path unreadable (a
        // chmod): looked at now, not at the next rescan; no hint.
        EventKind::Modify(ModifyKind::Metadata(_)) => (vec![], true),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => (all(Hint::Closed), true),
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => (all(Hint::Writing), true),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => (all(Hint::Renamed), true),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => (
            event
                .paths
                .get(1)
                .map(|p| vec![(p.clone(), Hint::Renamed)])
                .unwrap_or_default(),
            true,
        ),
        _ => (vec![], true),
    }
}

/// Persist and commit what `scan` proposes (objects another source owns are refused and
/// reported); the error says what failed.
///
/// The state machine decides ownership: what its answer says it refused is not recorded as
/// applied, is compared again at the next scan, and is reported. The source also looks
/// before proposing, only so that a conflict that lasts is not proposed at every scan.
async fn apply(
    hub: &Hub,
    reports: &Reports,
    group: &Group,
    source: &mut ManifestDir,
    mut scan: Scan,
) -> Result<Option<u64>, String> {
    let held = super::foreign(hub, OWNER, &scan.commands)
        .await
        .map_err(|e| e.to_string())?;
    refuse(source, &mut scan.rejected, &held);
    scan.commands
        .retain(|c| !held.contains_key(&palisade_policy::manifest::command_key(c)));
    reports.set_rejected(OWNER, scan.rejected.clone());
    source
        .persist()
        .map_err(|e| format!("cannot record the manifest source's state: {e}"))?;
    if scan.commands.is_empty() {
        source.commit();
        return Ok(None);
    }
    let n = scan.commands.len();
    let committed = group
        .propose(OWNER, scan.commands)
        .await
        .map_err(|e| format!("cannot commit {n} changes: {e}"))?;
    if !committed.refused.is_empty() {
        // Taken by another source between the look above and the commit.
        refuse(source, &mut scan.rejected, &committed.refused);
        reports.set_rejected(OWNER, scan.rejected);
    }
    source.commit();
    Ok(Some(committed.revision))
}

/// Objects another source holds (by key, that source): the directory's version is not
/// applied; compared again at the next scan, and reported.
fn refuse(source: &mut ManifestDir, rejected: &mut Vec<Rejected>, held: &Refused) {
    if held.is_empty() {
        return;
    }
    for (k, owner) in held {
        rejected.push(Rejected {
            applied: false,
            source: source.root().display().to_string(),
            kind: k.0.to_string(),
            object: k.1.clone(),
            errors: vec![format!(
                "managed by {owner}: the directory's version is not applied"
            )],
        });
    }
    source.not_applied(&held.keys().cloned().collect::<BTreeSet<Key>>());
}

/// After a failure to record or commit: 0.5 s (the first retry) doubling to 64 s.
const RETRY: palisade_backoff::Backoff =
    palisade_backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(64));

/// Run the source until `shutdown`: it works while this replica leads. Called on the
/// source's own thread (its file work blocks), which the lifecycle runs on.
pub fn watch(context: Context, source: ManifestDir) {
    let (hub, group, shutdown) = (
        context.hub.clone(),
        context.group.clone(),
        context.shutdown.clone(),
    );
    let manifests = Manifests {
        context,
        source,
        reported: Reported::default(),
    };
    group.block_on(crate::leader::run(manifests, hub, group.clone(), shutdown));
}

/// What the source works with.
pub struct Context {
    pub hub: Arc<Hub>,
    pub reports: Arc<Reports>,
    pub group: Group,
    pub pace: Pace,
    pub health: tokio::sync::watch::Sender<Health>,
    pub shutdown: CancellationToken,
}

/// The manifests directory: what leading means for it.
struct Manifests {
    context: Context,
    source: ManifestDir,
    reported: Reported,
}

impl LeaderSource for Manifests {
    const OWNER: &'static str = OWNER;

    fn name(&self) -> &'static str {
        "the manifest source"
    }

    /// Reconcile: what the replicated state holds from this source becomes what it believes
    /// applied, and the first scan compares everything either side names. Failures to record
    /// or commit are retried within the session.
    async fn lead(&mut self, term: u64, applied: BTreeMap<Key, Object>) -> Ended {
        self.source.reconcile(applied);
        lead(term, &self.context, &mut self.source, &mut self.reported).await;
        Ended::Lost
    }

    /// A follower's source is not active (readiness says so).
    fn follow(&mut self) {
        self.context.health.send_if_modified(|h| {
            let new = Health::default();
            let changed = *h != new;
            *h = new;
            changed
        });
    }
}

/// The loop while leading in `term` (returns when leadership is lost, or at shutdown). Its
/// file work blocks the source's own thread, which is what that thread is for.
async fn lead(term: u64, context: &Context, source: &mut ManifestDir, reported: &mut Reported) {
    let Context {
        hub,
        reports,
        group,
        pace,
        health,
        shutdown,
    } = context;
    // The term reconciled in: leadership lost and won again meanwhile means reconciling again.
    let still_leading = || {
        let s = group.status();
        s.is_leader() && s.raft.term == term
    };
    let (tx, rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
    // A file parsed after a scan stopped waiting for it: scan again (an event of no path).
    let wake = std::sync::Mutex::new(tx.clone());
    source.set_waker(move || {
        let _ = wake
            .lock()
            .expect("waker lock")
            .send(Ok(notify::Event::new(EventKind::Other)));
    });
    let watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .and_then(|mut w| w.watch(source.root(), RecursiveMode::Recursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(
                "cannot watch {} ({e}); rescanning every {}, and changes are read once quiet",
                source.root().display(),
                humantime::format_duration(pace.rescan)
            );
            None
        }
    };
    let tick = Duration::from_millis(200);
    // Look again at once: files waiting since startup, records not yet written.
    let mut due = Instant::now();
    let mut failures = 0u32;
    // Files written just before leadership began are read once quiet: the first scan waits
    // for them (a `settle` at most), so the first revision holds them.
    let first_until = Instant::now() + pace.settle + Duration::from_millis(100);
    let mut first = true;
    while !shutdown.is_cancelled() && still_leading() {
        let now = Instant::now();
        let wait = due.saturating_duration_since(now).min(tick);
        let mut scan_now = now >= due;
        match rx.recv_timeout(wait) {
            Ok(first) => {
                // Let a burst of events (an editor's save, a tool's rename) arrive.
                std::thread::sleep(pace.debounce);
                for event in std::iter::once(first).chain(rx.try_iter()) {
                    let Ok(event) = event else {
                        // Events lost (queue overflow): look at everything, trust no hint.
                        source.forget_hints();
                        scan_now = true;
                        continue;
                    };
                    if event.need_rescan() {
                        source.forget_hints();
                    }
                    let (hints, wants) = classify(&event);
                    for (path, hint) in hints {
                        source.hint(&path, hint);
                    }
                    scan_now |= wants;
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
        }
        if !scan_now {
            continue;
        }
        let now = Instant::now();
        let mut scan = source.scan(now);
        while first && scan.next.is_some_and(|n| n <= first_until) {
            let next = scan.next.expect("checked");
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            scan = source.scan(Instant::now());
        }
        let reconciling = std::mem::take(&mut first);
        reported.log(&scan);
        let waiting = scan.waiting;
        let next = scan.next;
        hub.metrics.source_waiting(waiting);
        hub.metrics.files_parsed(source.take_parsed());
        let result = apply(hub, reports, group, source, scan).await;
        if reconciling {
            match &result {
                Ok(None) => info!("reconciled with the replicated state: nothing differs"),
                Ok(Some(revision)) => info!(
                    revision,
                    "reconciled with the replicated state: the differences are committed"
                ),
                Err(_) => {}
            }
        }
        let (failing, revision) = match result {
            Ok(Some(revision)) => {
                info!(revision, "manifests changed");
                (None, Some(revision))
            }
            Ok(None) => (None, Some(hub.view().revision())),
            Err(why) => (Some(why), health.borrow().revision),
        };
        let retry = match &failing {
            Some(why) => {
                failures += 1;
                hub.metrics.source_failure();
                let delay = RETRY.delay(failures);
                error!(
                    "{why}; nothing was applied, retrying in {}",
                    humantime::format_duration(delay)
                );
                Some(now + delay)
            }
            None => {
                if failures > 0 {
                    info!("the manifest source recovered: changes are recorded and applied again");
                }
                failures = 0;
                None
            }
        };
        hub.metrics.source_healthy(failing.is_none());
        health.send_if_modified(|h| {
            let new = Health {
                failing,
                waiting,
                active: true,
                revision,
            };
            let changed = *h != new;
            *h = new;
            changed
        });
        due = [Some(now + pace.rescan), next, retry]
            .into_iter()
            .flatten()
            .min()
            .expect("a rescan is always due");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::MetadataKind;

    #[test]
    fn a_permission_change_is_looked_at_now_and_a_read_is_not() {
        let event = |kind| notify::Event::new(kind).add_path("/m/sub".into());
        let chmod = event(EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::Permissions,
        )));
        assert_eq!(classify(&chmod), (vec![], true));
        let read = event(EventKind::Access(AccessKind::Close(AccessMode::Read)));
        assert_eq!(classify(&read), (vec![], false));
    }
}
