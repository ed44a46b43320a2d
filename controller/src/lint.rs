//! Lint findings over the replicated state: `palisade_policy::lint` run on this replica's
//! engine, so every replica reports the same findings for the same revision. Computed when
//! asked (`ListRejected`) and every `--lint-every` in the background, at most once a
//! revision; the findings per check are the `palisade_lint_findings` gauge.
//!
//! The lint runs on the apply thread, which owns the engine (it reads it in place; copying
//! 100k objects out would cost more): 0.38-0.44 s at 150,000 pods and 75,000 policies
//! (BENCHMARKS.md) during which applies wait (sends from the published view do not), so the
//! default interval is five minutes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_policy::lint::{self, Finding};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::hub::Hub;

/// New findings logged one a line, at most, per lint.
const LOGGED: usize = 20;

/// Operators asking (`palisadectl rejected`) get findings at most this old when the state
/// moved since: each lint holds the apply thread, so asking in a loop must not stall applies.
pub const ASKED_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// The findings at one revision.
#[derive(Debug)]
pub struct Findings {
    pub revision: u64,
    pub findings: Vec<Finding>,
    /// When they were computed.
    pub at: Instant,
}

/// Lints the applied state of `hub`, keeping the last findings.
pub struct Linter {
    hub: Arc<Hub>,
    /// The last findings; taken before the state is read (the lint reads it in place).
    cache: Mutex<Option<Arc<Findings>>>,
}

impl Linter {
    pub fn new(hub: Arc<Hub>) -> Linter {
        Linter {
            hub,
            cache: Mutex::new(None),
        }
    }

    /// The findings at the latest applied revision, computed now unless already known, or
    /// unless the last were computed less than `fresh` ago. Blocks (it waits for the apply
    /// thread to lint): call it where blocking is allowed, never on an async worker.
    pub fn lint(&self, fresh: Duration) -> Arc<Findings> {
        let mut cache = self.cache.lock().expect("lint cache lock poisoned");
        let revision = self.hub.view().revision();
        if let Some(known) = cache
            .as_ref()
            .filter(|f| f.revision == revision || f.at.elapsed() < fresh)
        {
            return known.clone();
        }
        let started = Instant::now();
        // Linted on the apply thread, which owns the state. A bug in a diagnostic does not take
        // the state (and every agent's sync) down with it: a question that panics stops there
        // and gets no answer (`hub::answer`).
        let linted = self.hub.ask_blocking(|st| {
            (
                st.revision(),
                lint::lint(st.engine(), &lint::Options::default()),
            )
        });
        let (revision, findings) = match linted {
            Ok(linted) => linted,
            Err(e) => {
                error!(
                    revision,
                    "the lint of the replicated state failed: {e}; the last findings are kept"
                );
                let kept = cache.get_or_insert_with(|| {
                    Arc::new(Findings {
                        revision: 0,
                        findings: Vec::new(),
                        at: started,
                    })
                });
                return kept.clone();
            }
        };
        let took = started.elapsed();
        self.hub.metrics.lint(revision, &findings, took);
        // Each finding is logged once, when it first appears (the list is sorted).
        let old: &[Finding] = cache.as_ref().map_or(&[], |c| &c.findings);
        let new: Vec<&Finding> = findings
            .iter()
            .filter(|f| old.binary_search(f).is_err())
            .collect();
        if !new.is_empty() || old.len() != findings.len() {
            for f in new.iter().take(LOGGED) {
                warn!(
                    revision,
                    kind = %f.kind,
                    object = %f.object,
                    field = %f.field,
                    check = %f.check,
                    suggestion = %f.suggestion,
                    "lint: {}",
                    f.message
                );
            }
            if new.len() > LOGGED {
                warn!(
                    revision,
                    "lint: {} more new findings (palisadectl rejected lists them all)",
                    new.len() - LOGGED
                );
            }
            info!(
                revision,
                findings = findings.len(),
                new = new.len(),
                seconds = took.as_secs_f64(),
                "lint of the replicated state"
            );
        }
        let out = Arc::new(Findings {
            revision,
            findings,
            at: Instant::now(),
        });
        *cache = Some(out.clone());
        out
    }
}

/// Lint every `every` (when the revision moved) until `shutdown`; `every` zero: never.
pub async fn run(linter: Arc<Linter>, every: Duration, shutdown: CancellationToken) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let linter = linter.clone();
        if tokio::task::spawn_blocking(move || linter.lint(Duration::ZERO))
            .await
            .is_err()
        {
            return;
        }
    }
}
