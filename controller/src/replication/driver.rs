//! The Raft driver: one thread that owns the [`Replica`]. It waits for input (a message from
//! a peer, a proposal, a snapshot the apply thread took) or the next tick, then carries out
//! every `Ready`: the replica writes to its log durably before handing out the messages that
//! depend on it; the driver sends them, passes committed entries (with the answers their
//! proposers wait for) to the apply thread in order, and publishes the group's status.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use palisade_policy::model::Command;
use palisade_replica::entry::split;
use palisade_replica::{Batch, Event, Message, ProposalId, ProposeError, Replica, Role};
use palisade_storage::SledStorage;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::apply::Job;
use super::transport::Outbox;
use super::{Config, Failure, GroupStatus, ProposeFailed, Reply};
use crate::metrics::Metrics;

pub enum Input {
    Step(Message),
    Propose {
        owner: String,
        commands: Vec<Command>,
        reply: Reply,
        at: Instant,
    },
    /// The apply thread's snapshot of the state machine at `index`.
    Snapshot {
        index: u64,
        data: Vec<u8>,
    },
}

pub struct Driver {
    pub replica: Replica<SledStorage>,
    pub config: Config,
    pub inbox: Receiver<Input>,
    pub jobs: Sender<Job>,
    pub outbox: Outbox,
    pub status: std::sync::Arc<watch::Sender<GroupStatus>>,
    pub failure: Failure,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

/// Proposals waiting to be applied, by the id of their (last) entry.
type Pending = HashMap<ProposalId, (Reply, Instant)>;

impl Driver {
    pub fn run(mut self) {
        let mut pending: Pending = HashMap::new();
        let tick = self.config.tick;
        let mut next_tick = Instant::now() + tick;
        let mut role = None;
        if self.replica.voters() == 1 {
            // A group of one needs no election timeout to lead.
            if let Err(e) = self.replica.campaign() {
                warn!("cannot campaign: {e}");
            }
        }
        while !self.shutdown.is_cancelled() {
            if let Some(why) = self.failure.get() {
                self.publish(role, Some(why));
                // Take no part any more: peers elect another leader; what was applied here
                // stays served.
                fail_all(
                    &mut pending,
                    ProposeFailed::Stopped("this replica failed".into()),
                );
                sleep_unless_cancelled(&self.shutdown, Duration::from_millis(200));
                continue;
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(input) => {
                    self.handle(input, &mut pending);
                    for input in self.inbox.try_iter().take(4096).collect::<Vec<_>>() {
                        self.handle(input, &mut pending);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_tick {
                self.replica.tick();
                next_tick = Instant::now() + tick;
            }
            if let Err(e) = self.ready(&mut pending, &mut role) {
                self.failure.set(format!("the Raft log: {e}"));
                continue;
            }
            self.publish(role, None);
        }
        fail_all(&mut pending, ProposeFailed::Stopped("shutting down".into()));
    }

    fn handle(&mut self, input: Input, pending: &mut Pending) {
        match input {
            Input::Step(m) => {
                if let Err(e) = self.replica.step(m) {
                    warn!("a Raft message was refused: {e}");
                }
            }
            Input::Propose {
                owner,
                commands,
                reply,
                at,
            } => self.propose(owner, commands, reply, at, pending),
            Input::Snapshot { index, data } => {
                let bytes = data.len();
                match self.replica.store_snapshot(index, data) {
                    Ok(true) => {
                        self.metrics.raft_snapshot(bytes);
                        info!(index, bytes, "snapshot stored; log compacted behind it");
                    }
                    Ok(false) => {}
                    Err(e) => warn!("cannot store the snapshot at {index}: {e}"),
                }
            }
        }
    }

    fn propose(
        &mut self,
        owner: String,
        commands: Vec<Command>,
        reply: Reply,
        at: Instant,
        pending: &mut Pending,
    ) {
        let parts = split(commands, self.config.entry_bytes);
        let n = parts.len();
        let mut last = None;
        for (i, part) in parts.into_iter().enumerate() {
            match self.replica.propose(&owner, part) {
                Ok(id) => last = Some(id),
                Err(ProposeError::NotLeader { leader }) if i == 0 => {
                    let _ = reply.send(Err(ProposeFailed::NotLeader { leader }));
                    return;
                }
                Err(e) => {
                    warn!("proposal part {} of {n} dropped: {e}", i + 1);
                    let _ = reply.send(Err(ProposeFailed::Lost));
                    return;
                }
            }
        }
        match last {
            Some(id) => {
                pending.insert(id, (reply, at));
            }
            // Nothing to propose: answer with what is committed.
            None => {
                let _ = reply.send(Ok(self.replica.status().commit));
            }
        }
    }

    fn ready(&mut self, pending: &mut Pending, role: &mut Option<Role>) -> Result<(), String> {
        loop {
            let out = self.replica.ready().map_err(|e| e.to_string())?;
            if out.messages.is_empty() && out.events.is_empty() {
                return Ok(());
            }
            self.outbox.send(out.messages);
            let mut entries: Vec<(u64, Option<Batch>)> = Vec::new();
            let mut replies = Vec::new();
            for e in out.events {
                match e {
                    Event::Committed { index, batch, .. } => {
                        if let Some((reply, at)) =
                            batch.as_ref().and_then(|b| pending.remove(&b.id))
                        {
                            replies.push((index, reply, at));
                        }
                        entries.push((index, batch));
                    }
                    Event::Install { index, data } => {
                        self.flush(&mut entries, &mut replies);
                        let _ = self.jobs.send(Job::Install { index, data });
                    }
                    Event::Role {
                        role: now,
                        leader,
                        term,
                    } => {
                        if *role != Some(now) {
                            info!(?now, leader, term, "Raft role");
                            if now == Role::Leader || *role == Some(Role::Leader) {
                                self.metrics.leader_change();
                            }
                        }
                        *role = Some(now);
                        if now != Role::Leader {
                            fail_all(pending, ProposeFailed::Lost);
                        }
                    }
                }
            }
            self.flush(&mut entries, &mut replies);
        }
    }

    fn flush(
        &self,
        entries: &mut Vec<(u64, Option<Batch>)>,
        replies: &mut Vec<(u64, Reply, Instant)>,
    ) {
        if entries.is_empty() {
            return;
        }
        let _ = self.jobs.send(Job::Entries {
            entries: std::mem::take(entries),
            replies: std::mem::take(replies),
        });
    }

    fn publish(&self, role: Option<Role>, failure: Option<String>) {
        let mut raft = self.replica.status();
        raft.role = role.unwrap_or(raft.role);
        let new = GroupStatus {
            raft,
            applied: 0,
            progress: self.replica.progress(),
            failure,
        };
        self.metrics.raft(new.raft.term, new.raft.commit);
        self.status.send_if_modified(|old| {
            // `applied` is the apply thread's to set.
            let new = GroupStatus {
                applied: old.applied,
                ..new
            };
            let changed = *old != new;
            *old = new;
            changed
        });
    }
}

fn fail_all(pending: &mut Pending, why: ProposeFailed) {
    for (_, (reply, _)) in pending.drain() {
        let _ = reply.send(Err(why.clone()));
    }
}

/// Sleep until `token` is cancelled, at most `at_most`.
fn sleep_unless_cancelled(token: &CancellationToken, at_most: Duration) {
    let until = Instant::now() + at_most;
    while !token.is_cancelled() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}
