//! The Raft driver: one thread that owns the [`Replica`]. It waits for input (a message from
//! a peer, a proposal, a snapshot the apply thread took) or the next tick, then carries out
//! every `Ready`: the replica writes to its log durably before handing out the messages that
//! depend on it; the driver sends them, passes committed entries (with the answers their
//! proposers wait for) to the apply thread in order, and publishes the group's status.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use palisade_policy::model::Command;
use palisade_replica::entry::split;
use palisade_replica::membership::{self, Kind};
use palisade_replica::{
    Batch, Change, Event, Lease, Message, ProposeError, Refused, Replica, Role,
};
use palisade_storage::SledStorage;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::apply::Job;
use super::transport::Outbox;
use super::{
    ChangeFailed, ChangeReply, Committed, Config, Failure, GroupStatus, ProposeFailed, ReadReply,
    Reply,
};
use crate::metrics::Metrics;

mod changes;
mod proposals;

pub use proposals::Refusals;
use proposals::{Proposals, Stopped};

pub enum Input {
    Step(Message),
    Propose {
        owner: String,
        commands: Vec<Command>,
        reply: Reply,
        at: Instant,
    },
    /// The apply thread staged a snapshot of the state machine at `index` (`bytes` long) in
    /// the log store: make it current and compact the log.
    Snapshot {
        index: u64,
        bytes: usize,
    },
    /// A membership change an operator asked for; `retired`: the ids removed before (the
    /// state machine keeps them), which are never used again.
    Change {
        change: Change,
        retired: std::collections::BTreeSet<u64>,
        reply: ChangeReply,
    },
    /// A consistent read: ask the leader for a read index, answered by `until`.
    ReadIndex {
        reply: ReadReply,
        until: Instant,
    },
    /// Replica `by` refuses this one's messages: this one was removed from the group.
    Removed {
        by: u64,
    },
    /// What became of messages sent to replica `to`: not delivered (and whether a snapshot
    /// was among them), or a snapshot delivered.
    Delivery {
        to: u64,
        delivered: bool,
        snapshot: bool,
    },
}

pub struct Driver {
    pub replica: Replica<SledStorage>,
    pub config: Config,
    pub inbox: Receiver<Input>,
    pub jobs: crossbeam_channel::Sender<Job>,
    pub outbox: Outbox,
    pub status: std::sync::Arc<watch::Sender<GroupStatus>>,
    pub failure: Failure,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

/// An entry of a proposal made here, committed: its index, what its proposal had refused so
/// far, and on its last entry who waits for the answer.
pub struct Answer {
    pub index: u64,
    pub refused: Refusals,
    pub reply: Option<(Reply, Instant)>,
}

/// What waits on this replica's Raft node: proposals, membership changes, read indexes.
#[derive(Default)]
struct Flow {
    proposals: Proposals<(Reply, Instant)>,
    /// Membership changes proposed here, by request number, waiting to be applied.
    changes: HashMap<u64, ChangeReply>,
    /// Read indexes asked for, by request number, with when to give up on each.
    reads: HashMap<u64, (ReadReply, Instant)>,
    next_read: u64,
    /// Who was heard from, and when (the messages stepped say).
    lease: Lease,
}

impl Driver {
    pub fn run(mut self) {
        let mut flow = Flow::default();
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
                self.publish(role, Some(why.clone()), &flow);
                // Take no part any more: peers elect another leader; what was applied here
                // stays served.
                flow.fail(ProposeFailed::Stopped("this replica failed".into()));
                // Whatever arrives meanwhile gets its answer, or is dropped.
                for (_, (reply, _)) in flow.reads.drain() {
                    let _ = reply.send(Err(format!("this replica has failed ({why})")));
                }
                // Refuse what arrives, waiting on the inbox (a fifth of a second at most,
                // then shutdown is looked at again).
                let first = match self.inbox.recv_timeout(Duration::from_millis(200)) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                for input in first.into_iter().chain(self.inbox.try_iter()) {
                    match input {
                        Input::Propose { reply, .. } => {
                            let _ = reply
                                .send(Err(ProposeFailed::Stopped("this replica failed".into())));
                        }
                        Input::ReadIndex { reply, .. } => {
                            let _ = reply.send(Err(format!("this replica has failed ({why})")));
                        }
                        _ => {}
                    }
                }
                continue;
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(input) => {
                    self.handle(input, &mut flow);
                    for input in self.inbox.try_iter().take(4096).collect::<Vec<_>>() {
                        self.handle(input, &mut flow);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_tick {
                self.replica.tick();
                next_tick = Instant::now() + tick;
            }
            self.ask_leader(&mut flow);
            self.feed(&mut flow);
            if let Err(e) = self.ready(&mut flow, &mut role) {
                self.failure.set(format!("the Raft log: {e}"));
                continue;
            }
            // Room freed by what just committed.
            self.feed(&mut flow);
            self.promote();
            self.expire_reads(&mut flow);
            self.publish(role, None, &flow);
        }
        for (_, (reply, _)) in flow.reads.drain() {
            let _ = reply.send(Err("this replica is shutting down".into()));
        }
        flow.fail(ProposeFailed::Stopped("shutting down".into()));
    }

    fn handle(&mut self, input: Input, flow: &mut Flow) {
        match input {
            Input::Step(m) => {
                if let Err(e) = self.replica.step(m) {
                    warn!("a Raft message was refused: {e}");
                }
            }
            Input::ReadIndex { reply, until } => {
                let status = self.replica.status();
                if status.leader == 0 {
                    let _ = reply.send(Err(
                        "this replica knows no leader to confirm the read with".into(),
                    ));
                    return;
                }
                flow.next_read += 1;
                self.replica.read_index(flow.next_read);
                flow.reads.insert(flow.next_read, (reply, until));
            }
            Input::Propose {
                owner,
                commands,
                reply,
                at,
            } => {
                if !self.replica.is_leader() {
                    let leader = self.replica.status().leader;
                    let _ = reply.send(Err(ProposeFailed::NotLeader {
                        leader: (leader != 0).then_some(leader),
                    }));
                    return;
                }
                let parts = split(commands, self.config.entry_bytes);
                if let Some((reply, _)) = flow.proposals.add(owner, parts, (reply, at)) {
                    // Nothing to propose: what is committed already holds it.
                    let _ = reply.send(Ok(Committed {
                        revision: self.replica.status().commit,
                        refused: Refused::new(),
                    }));
                }
            }
            Input::Change {
                change,
                retired,
                reply,
            } => {
                match self.change(change, &retired) {
                    // Answered when the entry is applied (see `ready`).
                    Ok(request) => {
                        flow.changes.insert(request, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Input::Removed { by } => self.failure.set(format!(
                "replica {} was removed from the group (replica {by} refuses its messages); its id is retired and it takes no further part",
                self.config.id
            )),
            Input::Delivery {
                to,
                delivered,
                snapshot,
            } => {
                if snapshot {
                    self.replica.report_snapshot(to, delivered);
                }
                if !delivered {
                    self.replica.report_unreachable(to);
                }
            }
            Input::Snapshot { index, bytes } => match self.replica.snapshot_staged(index) {
                Ok(true) => {
                    self.metrics.raft_snapshot(bytes);
                    info!(index, bytes, "snapshot stored; log compacted behind it");
                }
                Ok(false) => {}
                Err(e) => warn!("cannot store the snapshot at {index}: {e}"),
            },
        }
    }

    /// Propose queued parts while few enough entries are uncommitted; when the replica
    /// refuses one, what waits is refused with it (membership changes too).
    fn feed(&mut self, flow: &mut Flow) {
        let replica = &mut self.replica;
        if let Some(Stopped { tell, why, error }) = flow
            .proposals
            .feed(|owner, commands| replica.propose(owner, commands))
        {
            warn!("a proposal was dropped: {error}");
            answer(tell);
            flow.fail_changes(&why);
        }
    }

    fn ready(&mut self, flow: &mut Flow, role: &mut Option<Role>) -> Result<(), String> {
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
                        if let Some((refused, reply)) =
                            batch.as_ref().and_then(|b| flow.proposals.committed(&b.id))
                        {
                            replies.push(Answer {
                                index,
                                refused,
                                reply,
                            });
                        }
                        entries.push((index, batch));
                    }
                    Event::Membership {
                        index,
                        change,
                        members,
                    } => {
                        self.flush(&mut entries, &mut replies);
                        self.membership_applied(index, change.as_ref());
                        let waiting = change
                            .as_ref()
                            .and_then(|c| flow.changes.remove(&c.request));
                        let _ = self.jobs.send(Job::Membership { index, change });
                        if let Some(reply) = waiting {
                            let _ = reply.send(Ok((index, members)));
                        }
                    }
                    Event::Install { index, data } => {
                        self.flush(&mut entries, &mut replies);
                        let _ = self.jobs.send(Job::Install { index, data });
                    }
                    Event::ReadIndex { request, index } => {
                        if !flow.lease.answered(request, index) {
                            if let Some((reply, _)) = flow.reads.remove(&request) {
                                let _ = reply.send(Ok(index));
                            }
                        }
                    }
                    Event::Role {
                        role: now,
                        leader,
                        term,
                    } => {
                        if *role != Some(now) {
                            info!(
                                role = crate::replication::role_name(now),
                                leader, term, "Raft role"
                            );
                            if now == Role::Leader || *role == Some(Role::Leader) {
                                self.metrics.leader_change();
                            }
                        }
                        *role = Some(now);
                        if now != Role::Leader {
                            flow.fail(ProposeFailed::Lost);
                        }
                    }
                }
            }
            self.flush(&mut entries, &mut replies);
        }
    }

    fn flush(&self, entries: &mut Vec<(u64, Option<Batch>)>, replies: &mut Vec<Answer>) {
        if entries.is_empty() {
            return;
        }
        let _ = self.jobs.send(Job::Entries {
            entries: std::mem::take(entries),
            replies: std::mem::take(replies),
        });
    }

    /// Heartbeats and the lease: the election timeout.
    fn lease(&self) -> (std::time::Duration, std::time::Duration) {
        let (tick, o) = (self.config.tick, &self.config.options);
        (
            tick * o.heartbeat_tick as u32,
            tick * o.election_tick as u32,
        )
    }

    /// Knowing a leader (or leading): ask for a read index every heartbeat, which is what
    /// confirms this replica is current ([`palisade_replica::Lease`]).
    fn ask_leader(&mut self, flow: &mut Flow) {
        if self.replica.status().leader == 0 {
            return;
        }
        let (every, lease) = self.lease();
        if let Some(request) = flow.lease.want_read(Instant::now(), every, lease) {
            self.replica.read_index(request);
        }
    }

    /// Give up on reads the leader did not confirm in time (raft-rs drops a read it cannot
    /// serve without a word).
    fn expire_reads(&self, flow: &mut Flow) {
        let s = self.replica.status();
        let now = Instant::now();
        let late: Vec<u64> = flow
            .reads
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some((reply, _)) = flow.reads.remove(&id) {
                let _ = reply.send(Err(if s.leader == 0 {
                    "this replica lost its leader before the read was confirmed".into()
                } else {
                    format!(
                        "the leader (replica {}) did not confirm the read in time: it may have lost its quorum",
                        s.leader
                    )
                }));
            }
        }
    }

    fn publish(&self, role: Option<Role>, failure: Option<String>, flow: &Flow) {
        let mut raft = self.replica.status();
        raft.role = role.unwrap_or(raft.role);
        let new = GroupStatus {
            raft,
            applied: 0,
            progress: self.replica.progress(),
            members: self.replica.members(),
            failure,
            confirmed: flow.lease.confirmed(Instant::now(), self.lease().1),
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

impl Flow {
    /// Leadership is gone (or the replica stops): every proposal and membership change
    /// waiting is told `why`.
    fn fail(&mut self, why: ProposeFailed) {
        answer(self.proposals.fail(why.clone()));
        self.fail_changes(&why);
    }

    /// The membership changes waiting are told `why` (one that was refused as not leader
    /// may have been proposed before: lost).
    fn fail_changes(&mut self, why: &ProposeFailed) {
        for (_, reply) in self.changes.drain() {
            let _ = reply.send(Err(ChangeFailed::Propose(match why {
                ProposeFailed::NotLeader { .. } => ProposeFailed::Lost,
                other => other.clone(),
            })));
        }
    }
}

/// Tell each waiter why its proposal failed.
fn answer(tell: Vec<((Reply, Instant), ProposeFailed)>) {
    for ((reply, _), why) in tell {
        let _ = reply.send(Err(why));
    }
}
