//! The source loop, on its own thread (it does blocking file I/O): watch the directory with
//! inotify (its events also say when a writer has finished: [`Hint`]), scan after events
//! (debounced), when a waiting file is due, and periodically; persist and apply what changed.
//! A failure to persist or apply is retried with back-off and shows in [`Health`], metrics
//! and the log; nothing is taken as applied until it was.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Hint, ManifestDir, Rejected, Scan};
use crate::hub::Hub;

/// Whether the source keeps the engine in step with its directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Why changes cannot be recorded or applied right now (they are retried).
    pub failing: Option<String>,
    /// Files changed and not applied yet, by design (being written, holding removals).
    pub waiting: usize,
}

/// How the loop is paced.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Scan this often even without events.
    pub rescan: Duration,
    /// After an event, wait this long for more before scanning.
    pub debounce: Duration,
}

fn rejection_line(r: &Rejected) -> String {
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
        // Reads, ours included, and metadata changes say nothing about content.
        EventKind::Access(AccessKind::Open(_))
        | EventKind::Access(AccessKind::Close(AccessMode::Read))
        | EventKind::Modify(ModifyKind::Metadata(_)) => (vec![], false),
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

/// Persist and apply what `scan` proposes; the error says what failed.
fn apply(hub: &Hub, source: &mut ManifestDir, mut scan: Scan) -> Result<Option<u64>, String> {
    hub.set_rejected(std::mem::take(&mut scan.rejected));
    source
        .persist()
        .map_err(|e| format!("cannot record the manifest source's state: {e}"))?;
    if scan.commands.is_empty() {
        source.commit();
        return Ok(None);
    }
    let n = scan.commands.len();
    let revision = hub
        .apply(scan.commands)
        .map_err(|e| format!("cannot reserve revisions for {n} changes: {e}"))?;
    source.commit();
    Ok(Some(revision))
}

/// Run the loop until `shutdown`.
pub fn watch(
    hub: Arc<Hub>,
    mut source: ManifestDir,
    pace: Pace,
    health: tokio::sync::watch::Sender<Health>,
    mut reported: Reported,
    shutdown: CancellationToken,
) {
    let (tx, rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
    let watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .and_then(|mut w| w.watch(source.root(), RecursiveMode::Recursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(
                "cannot watch {} ({e}); rescanning every {:?}, and changes are read once quiet",
                source.root().display(),
                pace.rescan
            );
            None
        }
    };
    let tick = Duration::from_millis(200);
    // Look again at once: files waiting since startup, records not yet written.
    let mut due = Instant::now();
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
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
        let scan = source.scan(now);
        reported.log(&scan);
        let waiting = scan.waiting;
        let next = scan.next;
        hub.metrics.source_waiting(waiting);
        let result = apply(&hub, &mut source, scan);
        let failing = match result {
            Ok(Some(revision)) => {
                info!(revision, "manifests changed");
                None
            }
            Ok(None) => None,
            Err(why) => Some(why),
        };
        let retry = match &failing {
            Some(why) => {
                failures += 1;
                hub.metrics.source_failure();
                let delay = Duration::from_millis(250u64 << failures.min(8));
                error!("{why}; nothing was applied, retrying in {delay:?}");
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
            let new = Health { failing, waiting };
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
