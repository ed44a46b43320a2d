//! One lifecycle for every source that works while this replica leads (the manifests
//! directory, the Kubernetes API, any later one): wait for leadership, catch up with what
//! was committed before the term, hand the source what the replicated state holds from it
//! (to reconcile against), let it run until the term ends or it must start over, and start
//! over after a growing pause. The decisions are [`Lifecycle`]'s, a machine without I/O;
//! [`run`] is its shell, and a source says only what leading means for it ([`LeaderSource`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::manifest::{Key, Object};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::hub::Hub;
use crate::replication::Group;

/// How a source's time as leader ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// This replica no longer leads in that term (or the source's input ended).
    Lost,
    /// It must start over from the replicated state (a proposal that may or may not have
    /// been committed; an object another source held is free again).
    Restart(String),
}

/// A source that works while this replica leads.
pub trait LeaderSource {
    /// Who owns what it proposes.
    const OWNER: &'static str;

    /// For the logs: "the manifest source".
    fn name(&self) -> &'static str;

    /// Lead in `term`, this replica caught up: reconcile with `applied` (what the replicated
    /// state holds from [`Self::OWNER`]), then run until leadership in `term` ends or the
    /// source must start over. Retrying within the session is the source's business.
    fn lead(&mut self, term: u64, applied: BTreeMap<Key, Object>) -> impl Future<Output = Ended>;

    /// This replica does not lead (at start, and whenever it stops leading).
    fn follow(&mut self) {}

    /// A session ended (tidy what it showed).
    fn ended(&mut self) {}
}

/// What the lifecycle learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The group's status, as this replica sees it.
    Status { leader: bool, term: u64 },
    /// Catching up with the entries committed before `term` finished (`ok`) or gave up.
    CaughtUp { term: u64, ok: bool },
    /// A session ended, having lasted `lasted`.
    Ended { how: Ended, lasted: Duration },
}

/// What the shell does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Look at the group's status now.
    Look,
    /// Not leading: wait until the status changes.
    Follow,
    /// Leading in `term`: apply what was committed before it first.
    CatchUp { term: u64 },
    /// Run the source in `term`.
    Lead { term: u64 },
    /// Wait, then look again.
    Pause(Duration),
}

/// Sessions that had to start over in a row grow the pause before the next; a session that
/// lasted this long starts the count over.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Before starting over: 1 s, doubling to 32 s.
pub const RESTART: palisade_backoff::Backoff =
    palisade_backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(32));

/// The lifecycle's decisions.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Sessions that started over in a row.
    restarts: u32,
}

impl Lifecycle {
    pub fn step(&mut self, event: Event) -> Step {
        match event {
            Event::Status { leader: false, .. } => Step::Follow,
            Event::Status { leader: true, term } => Step::CatchUp { term },
            Event::CaughtUp { term, ok: true } => Step::Lead { term },
            // Not applied within the bound: look again (still leading, in the same term?).
            Event::CaughtUp { ok: false, .. } => Step::Look,
            Event::Ended {
                how: Ended::Lost, ..
            } => {
                self.restarts = 0;
                Step::Look
            }
            Event::Ended {
                how: Ended::Restart(_),
                lasted,
            } => {
                if lasted > HEALTHY_AFTER {
                    self.restarts = 0;
                }
                let pause = RESTART.delay(self.restarts);
                self.restarts += 1;
                Step::Pause(pause)
            }
        }
    }
}

/// How long catching up may take before the status is looked at again.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Run `source` until `shutdown` (or until the group's status is gone): it works while this
/// replica leads.
pub async fn run<S: LeaderSource>(
    mut source: S,
    hub: Arc<Hub>,
    group: Group,
    shutdown: CancellationToken,
) {
    let mut lifecycle = Lifecycle::default();
    let mut status = group.watch();
    let mut next = Step::Look;
    while !shutdown.is_cancelled() {
        next = match next {
            Step::Look => {
                let (leader, term) = {
                    let s = status.borrow_and_update();
                    (s.is_leader(), s.raft.term)
                };
                lifecycle.step(Event::Status { leader, term })
            }
            Step::Follow => {
                source.follow();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = status.changed() => if changed.is_err() { return },
                }
                Step::Look
            }
            Step::CatchUp { term } => {
                let ok = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ok = group.caught_up(CATCH_UP) => ok,
                };
                if ok {
                    info!(term, "leading: {} reconciles and runs", source.name());
                } else {
                    warn!("leading, but entries committed before are not applied yet; waiting");
                }
                lifecycle.step(Event::CaughtUp { term, ok })
            }
            Step::Lead { term } => {
                let applied = match hub.ask(|st| st.machine().owned_by(S::OWNER)).await {
                    Ok(applied) => applied,
                    Err(gone) => {
                        warn!("{gone}: {} stops", source.name());
                        return;
                    }
                };
                let began = Instant::now();
                let how = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    how = source.lead(term, applied) => how,
                };
                source.ended();
                match &how {
                    Ended::Lost => info!("no longer leading: {} stops", source.name()),
                    Ended::Restart(why) => warn!(
                        "{why}: {} starts over from the replicated state",
                        source.name()
                    ),
                }
                lifecycle.step(Event::Ended {
                    how,
                    lasted: began.elapsed(),
                })
            }
            Step::Pause(pause) => {
                info!(
                    "{} starts again in {}",
                    source.name(),
                    humantime::format_duration(pause)
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                Step::Look
            }
        };
    }
}

#[cfg(test)]
mod tests;
