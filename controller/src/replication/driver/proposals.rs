//! The proposals a leader takes, as a machine without I/O: each proposal's parts (a large
//! one is split into bounded entries) wait in order and enter the log a few at a time; each
//! entry proposed is remembered until it commits, with what its proposal had refused so far
//! and, on its last entry, who waits for the answer. The driver feeds it the replica's
//! `propose`, the entries committed and the loss of leadership, and carries out what it
//! answers: whom to tell what.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use palisade_policy::model::Command;
use palisade_replica::{ProposalId, ProposeError, Refused};

use crate::replication::ProposeFailed;

/// Entries of a large proposal proposed and not yet committed, at most: a 150,000-pod load
/// goes into the log a few entries at a time, so no replica spends longer than a heartbeat
/// writing one `Ready`, and check-quorum never mistakes a busy follower for a dead one.
pub const IN_FLIGHT: usize = 4;

/// What the state machine refused of one proposal, gathered over its entries (shared by
/// them: it goes when the last of them is answered or dropped).
pub type Refusals = Arc<Mutex<Refused>>;

/// One entry's worth of a proposal, waiting for room.
struct Part<W> {
    owner: String,
    commands: Vec<Command>,
    /// Which proposal it belongs to, what the proposal had refused, and on its last part,
    /// who waits for it.
    proposal: u64,
    refused: Refusals,
    waiter: Option<W>,
}

/// The replica refused to propose: every part waiting was refused with it.
pub struct Stopped<W> {
    /// Whom to tell what.
    pub tell: Vec<(W, ProposeFailed)>,
    /// Why (what the driver tells the membership changes waiting, too).
    pub why: ProposeFailed,
    /// What the replica said.
    pub error: ProposeError,
}

/// Proposals waiting to enter the log, and entries in it waiting to commit; `W` is who
/// waits for an answer.
pub struct Proposals<W> {
    queue: VecDeque<Part<W>>,
    in_flight: HashSet<ProposalId>,
    /// Proposals with a part in the log already.
    started: HashSet<u64>,
    next: u64,
    /// Entries proposed here and not yet committed, by id.
    pending: HashMap<ProposalId, (Refusals, Option<W>)>,
}

impl<W> Default for Proposals<W> {
    fn default() -> Proposals<W> {
        Proposals {
            queue: VecDeque::new(),
            in_flight: HashSet::new(),
            started: HashSet::new(),
            next: 0,
            pending: HashMap::new(),
        }
    }
}

impl<W> Proposals<W> {
    /// Queue a proposal's parts, in order. A proposal with nothing in it is not queued: its
    /// waiter comes back, to be answered at once.
    pub fn add(&mut self, owner: String, parts: Vec<Vec<Command>>, waiter: W) -> Option<W> {
        if parts.is_empty() {
            return Some(waiter);
        }
        self.next += 1;
        let n = parts.len();
        let mut waiter = Some(waiter);
        let refused = Refusals::default();
        for (i, commands) in parts.into_iter().enumerate() {
            self.queue.push_back(Part {
                owner: owner.clone(),
                commands,
                proposal: self.next,
                refused: refused.clone(),
                waiter: if i + 1 == n { waiter.take() } else { None },
            });
        }
        None
    }

    /// Propose queued parts through `propose` while fewer than [`IN_FLIGHT`] entries are
    /// uncommitted. When the replica refuses one, every part waiting is refused too.
    pub fn feed(
        &mut self,
        mut propose: impl FnMut(&str, Vec<Command>) -> Result<ProposalId, ProposeError>,
    ) -> Option<Stopped<W>> {
        while self.in_flight.len() < IN_FLIGHT {
            let part = self.queue.pop_front()?;
            match propose(&part.owner, part.commands) {
                Ok(id) => {
                    self.in_flight.insert(id);
                    if part.waiter.is_some() {
                        self.started.remove(&part.proposal);
                    } else {
                        self.started.insert(part.proposal);
                    }
                    self.pending.insert(id, (part.refused, part.waiter));
                }
                Err(error) => {
                    let (first, why) = match &error {
                        // Still leading (e.g. a leadership transfer under way): what is in
                        // flight may still commit; only what waits here is refused.
                        ProposeError::Dropped(_) => (ProposeFailed::Lost, ProposeFailed::Lost),
                        ProposeError::NotLeader { leader } => {
                            let why = ProposeFailed::NotLeader { leader: *leader };
                            self.in_flight.clear();
                            // Part of it is in the log already: its fate is unknown.
                            if self.started.contains(&part.proposal) {
                                (ProposeFailed::Lost, why)
                            } else {
                                (why.clone(), why)
                            }
                        }
                    };
                    let mut tell: Vec<_> = part.waiter.map(|w| (w, first)).into_iter().collect();
                    tell.extend(self.drain_queue(&why));
                    return Some(Stopped { tell, why, error });
                }
            }
        }
        None
    }

    /// The entry `id` committed: if it was proposed here, what its proposal refused so far
    /// and, on its last entry, who waits.
    pub fn committed(&mut self, id: &ProposalId) -> Option<(Refusals, Option<W>)> {
        self.in_flight.remove(id);
        self.pending.remove(id)
    }

    /// Leadership is gone (or the replica stops): nothing waiting will be proposed, and what
    /// is in the log may or may not commit; whom to tell `why`.
    pub fn fail(&mut self, why: ProposeFailed) -> Vec<(W, ProposeFailed)> {
        let mut tell: Vec<_> = self
            .pending
            .drain()
            .filter_map(|(_, (_, w))| w.map(|w| (w, why.clone())))
            .collect();
        tell.extend(self.drain_queue(&why));
        self.in_flight.clear();
        tell
    }

    /// Every part waiting is dropped; its waiters are told `why` (a proposal with a part in
    /// the log already was lost rather than refused: its fate is unknown).
    fn drain_queue(&mut self, why: &ProposeFailed) -> Vec<(W, ProposeFailed)> {
        let tell = self
            .queue
            .drain(..)
            .filter_map(|part| {
                let started = self.started.contains(&part.proposal);
                part.waiter.map(|w| {
                    let told = match (why, started) {
                        (ProposeFailed::NotLeader { .. }, true) => ProposeFailed::Lost,
                        _ => why.clone(),
                    };
                    (w, told)
                })
            })
            .collect();
        self.started.clear();
        tell
    }

    /// Entries in the log waiting to commit.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests;
