//! The apply thread, the one writer of the applied [`State`] (it owns it: no lock):
//! committed entries applied in order, each at its index; the leader's snapshots installed;
//! a snapshot of the state machine taken every `snapshot_every` entries and handed to the
//! driver to store; readers' questions ([`Hub::ask`]) answered between revisions. Proposers
//! get their answer here, once their entry is applied (so `palisadectl apply` returns a
//! revision this replica already serves).

use std::sync::mpsc::Sender;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use palisade_replica::{Batch, Machine};
use palisade_storage::SledStorage;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::driver::{Answer, Input};
use super::{Committed, Failure, GroupStatus};
use crate::applied::State;
use crate::hub::{Hub, Reads};

pub enum Job {
    /// Entries committed together, in index order, and those of them proposed here.
    Entries {
        entries: Vec<(u64, Option<Batch>)>,
        replies: Vec<Answer>,
    },
    /// The leader's snapshot at `index`: it replaces the state machine.
    Install { index: u64, data: Vec<u8> },
    /// The membership change committed at `index` (Raft's configuration holds it already).
    Membership {
        index: u64,
        change: Option<palisade_replica::Change>,
    },
}

pub struct Applier {
    pub hub: Arc<Hub>,
    /// The applied state, this thread's alone.
    pub state: State,
    /// Readers' questions.
    pub reads: Reads,
    pub jobs: Receiver<Job>,
    /// Disconnected at shutdown (its sender is dropped then).
    pub stop: Receiver<()>,
    pub inbox: Sender<Input>,
    pub snapshot_every: u64,
    /// The log store, to stage snapshots in.
    pub store: SledStorage,
    pub status: Arc<watch::Sender<GroupStatus>>,
    pub failure: Failure,
    /// The planted fault ([`super::Config::fault_drop_entry`]), until it has fired.
    pub drop_entry: Option<u64>,
    /// Told the members' addresses and the removed ids a leader's snapshot holds (the
    /// changes behind it are not in the log this replica receives).
    pub transport: Arc<super::transport::Transport>,
}

impl Applier {
    /// The planted fault: the first entry holding commands at or after the index given is
    /// applied as if empty, once.
    fn plant_fault(&mut self, entries: &mut [(u64, Option<Batch>)]) {
        let Some(from) = self.drop_entry else { return };
        if let Some((index, batch)) = entries.iter_mut().find(|(i, b)| *i >= from && b.is_some()) {
            error!(
                index = *index,
                "planted fault (--fault-drop-entry): this committed entry is not applied here"
            );
            *batch = None;
            self.drop_entry = None;
        }
    }

    pub fn run(mut self) {
        let (jobs, reads, stop) = (
            self.jobs.clone(),
            self.reads.receiver().clone(),
            self.stop.clone(),
        );
        let never = crossbeam_channel::never();
        let mut taking = true;
        loop {
            crossbeam_channel::select! {
                recv(if taking { &jobs } else { &never }) -> job => match job {
                    Ok(job) => self.job(job),
                    // Raft's thread is gone (it stopped, or it panicked: then this replica
                    // keeps serving what it applied): answer readers until shutdown.
                    Err(_) => taking = false,
                },
                recv(reads) -> read => {
                    if let Ok(read) = read {
                        crate::hub::answer(read, &self.state);
                    }
                }
                recv(stop) -> _ => break,
            }
        }
        // Questions asked before the group stopped get the state as it was left.
        self.reads.answer(&self.state);
    }

    fn job(&mut self, job: Job) {
        {
            if self.failure.get().is_some() {
                // The state machine can no longer follow the log: keep what is applied (and
                // answer readers from it).
                return;
            }
            match job {
                Job::Entries {
                    mut entries,
                    replies,
                } => {
                    self.plant_fault(&mut entries);
                    for (_, at) in replies.iter().filter_map(|a| a.reply.as_ref()) {
                        self.hub.metrics.stage("commit", at.elapsed());
                    }
                    let (applied, mut refused) = self.state.apply(&*self.hub, &entries);
                    for Answer {
                        index,
                        refused: gathered,
                        reply,
                    } in replies
                    {
                        let mut gathered = gathered.lock().expect("refusals lock");
                        if let Some(r) = refused.remove(&index) {
                            gathered.extend(r);
                        }
                        if let Some((reply, at)) = reply {
                            self.hub.metrics.proposal_applied(at.elapsed());
                            let _ = reply.send(Ok(Committed {
                                revision: index,
                                refused: std::mem::take(&mut gathered),
                            }));
                        }
                    }
                    self.applied(applied);
                }
                Job::Membership { index, change } => {
                    let added = change
                        .as_ref()
                        .is_some_and(|c| c.kind == palisade_replica::membership::Kind::AddLearner);
                    let applied = self.state.apply_change(&*self.hub, index, change.as_ref());
                    self.applied(applied);
                    if added {
                        // A snapshot holding the new replica in its configuration, for the
                        // leader to send it (it refuses one without itself).
                        self.snapshot(1);
                        return;
                    }
                }
                Job::Install { index, data } => {
                    info!(
                        index,
                        bytes = data.len(),
                        "installing the leader's snapshot (a full compile)"
                    );
                    match Machine::restore(&data) {
                        Ok(m) => {
                            for id in m.retired() {
                                self.transport.retire(*id);
                            }
                            for (id, address) in m.addresses() {
                                if let Err(e) = self.transport.learn(*id, address) {
                                    warn!(
                                        replica = id,
                                        "cannot reach a member at the address the group gives: {e}"
                                    );
                                }
                            }
                            self.state.install(&*self.hub, m);
                            self.applied(index);
                        }
                        Err(why) => {
                            error!(index, "the leader's snapshot cannot be installed: {why}");
                            self.failure.set(format!(
                                "the snapshot at {index} cannot be installed: {why}"
                            ));
                            return;
                        }
                    }
                }
            }
            self.snapshot(self.snapshot_every);
        }
    }

    /// Take a snapshot if `every` entries were applied since the last one.
    fn snapshot(&mut self, every: u64) {
        if let Some((index, data)) = self.state.snapshot_if_due(every) {
            // Written here, not on Raft's thread: a large state takes a while to store.
            let bytes = data.len();
            match self.store.stage_snapshot(index, data) {
                Ok(()) => {
                    let _ = self.inbox.send(Input::Snapshot { index, bytes });
                }
                Err(e) => warn!(
                    index,
                    "cannot store a snapshot (the log keeps growing until one is stored): {e}"
                ),
            }
        }
    }

    fn applied(&self, index: u64) {
        self.hub.metrics.raft_applied(index);
        self.status.send_if_modified(|s| {
            let moved = s.applied != index;
            s.applied = index;
            moved
        });
    }
}
