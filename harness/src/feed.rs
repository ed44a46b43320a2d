//! A source every replica reads alike (as each reads its manifests directory, or the
//! Kubernetes API), working only while its replica leads: each core steps the controller's
//! own leader [`Lifecycle`] for it, and when it leads it reconciles what the replicated state
//! holds from the source against what the source reads, proposing the difference (one
//! proposal in flight at a time, as the sources do). So leader-only ingestion and the
//! reconcile after a failover are stepped like everything else in the harness.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use palisade_controller::leader::{Ended, Event, Lifecycle, Step};
use palisade_controller::source::file;
use palisade_policy::manifest::{Key, Object};
use palisade_policy::model::Command;

/// Who owns what the feed proposes.
pub const OWNER: &str = "feed";

/// What the source reads: the objects it says should be, by key.
pub type Desired = BTreeMap<Key, Object>;

/// The objects `commands` upsert, by key.
pub fn desired(commands: Vec<Command>) -> Desired {
    commands
        .into_iter()
        .filter_map(Object::from_command)
        .map(|o| (o.key(), o))
        .collect()
}

/// The commands that take `held` (what the replicated state holds from the source) to
/// `want`: upserts of what differs, deletes of what is no longer read.
pub fn difference(held: &Desired, want: &Desired) -> Vec<Command> {
    let upserts = want
        .iter()
        .filter(|(k, o)| held.get(*k) != Some(*o))
        .map(|(_, o)| o.clone())
        .collect();
    let deletes = held
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .map(|(_, o)| o.clone())
        .collect();
    file::commands(upserts, deletes)
}

/// One core's source: its lifecycle and where it stands in it.
#[derive(Debug)]
pub struct Feed {
    lifecycle: Lifecycle,
    step: Step,
    /// When the running session began.
    began: Option<Instant>,
    /// When a pause ends.
    paused_until: Option<Instant>,
    /// The index of the proposal in flight.
    pending: Option<u64>,
    /// Proposals it made (only a leader's source makes any).
    pub proposals: u32,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed {
            lifecycle: Lifecycle::default(),
            step: Step::Look,
            began: None,
            paused_until: None,
            pending: None,
            proposals: 0,
        }
    }
}

/// What a core tells its feed at each step.
pub struct Seen<'a> {
    pub leader: bool,
    pub term: u64,
    /// The commit index this replica knows, and what it applied.
    pub commit: u64,
    pub applied: u64,
    /// What the replicated state holds from [`OWNER`].
    pub held: &'a Desired,
    pub now: Instant,
}

/// What the feed wants done.
pub enum Act {
    Nothing,
    /// Propose these commands as [`OWNER`]; say the index it took with [`Feed::proposed`]
    /// (`None`: refused, not leading).
    Propose(Vec<Command>),
}

impl Feed {
    /// Whether its session runs (this replica leads and caught up).
    pub fn leading(&self) -> bool {
        matches!(self.step, Step::Lead { .. })
    }

    /// The proposal asked for took `index` (`None`: refused).
    pub fn proposed(&mut self, index: Option<u64>) {
        match index {
            Some(i) => {
                self.pending = Some(i);
                self.proposals += 1;
            }
            None => self.end(Ended::Lost, None),
        }
    }

    fn end(&mut self, how: Ended, now: Option<Instant>) {
        let lasted = match (self.began.take(), now) {
            (Some(b), Some(n)) => n.duration_since(b),
            _ => Duration::ZERO,
        };
        self.pending = None;
        self.step = self.lifecycle.step(Event::Ended { how, lasted });
    }

    /// Step at `seen`, reading `want`.
    pub fn step(&mut self, seen: &Seen, want: &Desired) -> Act {
        // A few decisions a step at most (a status change, catching up, leading).
        for _ in 0..4 {
            match self.step.clone() {
                Step::Look => {
                    self.step = self.lifecycle.step(Event::Status {
                        leader: seen.leader,
                        term: seen.term,
                    });
                }
                Step::Follow => {
                    if !seen.leader {
                        return Act::Nothing;
                    }
                    self.step = Step::Look;
                }
                Step::CatchUp { term } => {
                    if !seen.leader || seen.term != term {
                        self.step = Step::Look;
                    } else if seen.applied >= seen.commit {
                        self.step = self.lifecycle.step(Event::CaughtUp { term, ok: true });
                        self.began = Some(seen.now);
                    } else {
                        return Act::Nothing;
                    }
                }
                Step::Lead { term } => {
                    if !seen.leader || seen.term != term {
                        self.end(Ended::Lost, Some(seen.now));
                        continue;
                    }
                    if self.pending.is_some_and(|p| seen.applied < p) {
                        return Act::Nothing;
                    }
                    self.pending = None;
                    let commands = difference(seen.held, want);
                    return if commands.is_empty() {
                        Act::Nothing
                    } else {
                        Act::Propose(commands)
                    };
                }
                Step::Pause(d) => {
                    let until = *self.paused_until.get_or_insert(seen.now + d);
                    if seen.now < until {
                        return Act::Nothing;
                    }
                    self.paused_until = None;
                    self.step = Step::Look;
                }
            }
        }
        Act::Nothing
    }
}
