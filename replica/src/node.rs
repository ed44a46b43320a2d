//! [`Replica`]: raft-rs's `RawNode`, following raft-rs's `Ready` protocol: what a `Ready`
//! holds is written to the log store in one durable batch before the messages that depend on
//! it are handed out; committed entries are handed out in index order for the driver to apply
//! to its [`Machine`](crate::Machine) (on another thread if it likes: compiling must not
//! delay heartbeats), and the snapshots the driver takes of its machine are stored and the
//! log compacted behind them. The replica does no I/O but through its [`LogStore`], and keeps
//! no clock: the driver calls `tick` at its own pace.

use palisade_policy::model::Command;
use palisade_storage::{StorageError, Write};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole};

use crate::entry::{Batch, ProposalId};
use crate::membership::{Change, Members};
pub use crate::store::LogStore;

/// How a replica behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Ticks without a leader before an election (randomised up to twice this).
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
    /// Entries applied between state-machine snapshots (for the driver, which takes them).
    pub snapshot_every: u64,
    /// Entries kept before a snapshot's index when the log is compacted (a peer slightly
    /// behind catches up from them instead of from a snapshot).
    pub keep_entries: u64,
    /// Wait exactly `election_tick` ticks before an election, with no random draw (raft-rs
    /// draws from its own generator, which no seed reaches): for the deterministic harness,
    /// which staggers the replicas' ticks from its seed instead.
    pub fixed_election: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            election_tick: 10,
            heartbeat_tick: 3,
            snapshot_every: 10_000,
            keep_entries: 1_000,
            fixed_election: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Role {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// Something that happened, for the driver to act on, in order.
#[derive(Debug)]
pub enum Event {
    /// The entry at `index` committed: apply it (`index` is its revision).
    Committed {
        index: u64,
        term: u64,
        /// Its commands, with who proposed them (`None`: an entry without commands, such as
        /// a new leader's empty entry; it still advances the applied index).
        batch: Option<Batch>,
    },
    /// A leader's snapshot was installed in the log: replace the state machine with the one
    /// `data` holds (`Machine::restore`); entries after `index` follow.
    Install { index: u64, data: Vec<u8> },
    /// This replica's view of the group changed.
    Role { role: Role, leader: u64, term: u64 },
    /// The membership change at `index` committed and is in force here (`change`: what it
    /// did, `None` for an entry raft-rs made itself); `members` is the configuration now.
    /// The entry counts as applied like any other (its index is a revision).
    Membership {
        index: u64,
        change: Option<Change>,
        members: Members,
    },
    /// The read asked for with `request` ([`Replica::read_index`]) may be served once the
    /// entry at `index` is applied: the leader confirmed it led when it answered.
    ReadIndex { request: u64, index: u64 },
}

/// What one call to [`Replica::ready`] hands out.
#[derive(Debug, Default)]
pub struct Output {
    /// To send to peers (`to` names each one's replica id).
    pub messages: Vec<Message>,
    pub events: Vec<Event>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("the Raft log: {0}")]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("the entry at {index} cannot be decoded: {why}")]
    Entry { index: u64, why: String },
    #[error("the membership change at {index} cannot be applied: {why}")]
    Membership { index: u64, why: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("this replica is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the proposal was dropped: {0}")]
    Dropped(String),
}

/// Where the group stands, as this replica sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub role: Role,
    /// 0: unknown.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    /// The last entry handed out to be applied.
    pub applied: u64,
    pub last_index: u64,
    /// The index of the latest snapshot in the log store.
    pub snapshot: u64,
}

pub struct Replica<S: LogStore> {
    id: u64,
    raw: RawNode<S>,
    options: Options,
    next_seq: u64,
    /// The last entry handed out to be applied.
    handed: u64,
    /// The index of the latest snapshot in the store.
    last_snapshot: u64,
    /// The configuration in force from each index on, since the latest snapshot (the first
    /// is the one in force at it): a snapshot records the configuration at its own index.
    confs: Vec<(u64, ConfState)>,
    /// Random per process: read index contexts of an earlier run never match this one's.
    boot: u64,
}

/// A raft message as the bytes the transport carries (raft-rs's own encoding).
pub fn encode_message(m: &Message) -> Vec<u8> {
    m.write_to_bytes().expect("raft messages encode")
}

/// The message in `bytes`, or why not.
pub fn decode_message(bytes: &[u8]) -> Result<Message, String> {
    Message::parse_from_bytes(bytes).map_err(|e| e.to_string())
}

impl<S: LogStore> Replica<S> {
    /// The replica `id` of the group of `peers` (all ids, this one included), on `store`: a
    /// new store starts with that membership; a store with history resumes from it: the
    /// driver restores its machine from [`Replica::stored_snapshot`], and the entries after
    /// it are handed out again as committed.
    pub fn open(id: u64, peers: &[u64], store: S, options: Options) -> Result<Self, ReplicaError> {
        let state = store.initial_state()?;
        if state.conf_state.voters.is_empty() && store.last_index()? == 0 {
            let mut voters = peers.to_vec();
            voters.sort_unstable();
            voters.dedup();
            let mut cs = ConfState::default();
            cs.set_voters(voters);
            store.write(Write {
                conf_state: Some(cs.clone()),
                initial_conf: Some(cs),
                ..Write::default()
            })?;
        }
        let state = store.initial_state()?;
        let snapshot_index = match store.snapshot(0, 0) {
            Ok(s) => s.get_metadata().index,
            // None stored yet.
            Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)) => 0,
            Err(e) => return Err(e.into()),
        };
        let config = Config {
            id,
            election_tick: options.election_tick,
            heartbeat_tick: options.heartbeat_tick,
            // raft-rs draws from [min, max): one value when fixed; 0 means its default.
            min_election_tick: if options.fixed_election {
                options.election_tick
            } else {
                0
            },
            max_election_tick: if options.fixed_election {
                options.election_tick + 1
            } else {
                0
            },
            applied: snapshot_index,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        config.validate()?;
        let raw = RawNode::new(&config, store, &crate::log::logger())?;
        let confs = vec![(raw.store().conf_index(), state.conf_state)];
        Ok(Replica {
            id,
            raw,
            confs,
            last_snapshot: snapshot_index,
            handed: snapshot_index,
            options,
            next_seq: 0,
            boot: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            },
        })
    }

    /// The latest snapshot in the store, `(index, data)`, for the driver to restore its
    /// machine from before applying what follows (`None`: the log starts at the beginning).
    pub fn stored_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, ReplicaError> {
        if self.last_snapshot == 0 {
            return Ok(None);
        }
        let s = self.raw.store().snapshot(0, 0)?;
        Ok(Some((s.get_metadata().index, s.get_data().to_vec())))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn store(&self) -> &S {
        self.raw.store()
    }

    pub fn status(&self) -> Status {
        let r = &self.raw.raft;
        Status {
            id: self.id,
            role: r.state.into(),
            leader: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.handed,
            last_index: r.raft_log.last_index(),
            snapshot: self.last_snapshot,
        }
    }

    /// On the leader: each voter's id, the highest log index known replicated there, and
    /// whether it was heard from within the last election timeout. Empty on a follower.
    pub fn progress(&self) -> Vec<(u64, u64, bool)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut out: Vec<(u64, u64, bool)> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (*id, p.matched, p.recent_active))
            .collect();
        out.sort_unstable();
        out
    }

    /// How many voters the group has.
    pub fn voters(&self) -> usize {
        self.raw.raft.prs().conf().voters().ids().len()
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The configuration in force here: who votes, who only learns.
    pub fn members(&self) -> Members {
        Members::from_conf(&self.raw.raft.prs().conf().to_conf_state())
    }

    /// Whether a membership change was proposed and is not applied yet (raft-rs drops a
    /// second one meanwhile). May say so a little longer than true.
    pub fn has_pending_change(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// Propose a membership change (the leader only). Checking that it makes sense is the
    /// caller's ([`crate::membership::check`]).
    pub fn propose_change(&mut self, change: &Change) -> Result<(), ProposeError> {
        if !self.is_leader() {
            let leader = self.raw.raft.leader_id;
            return Err(ProposeError::NotLeader {
                leader: (leader != 0).then_some(leader),
            });
        }
        if self.has_pending_change() {
            return Err(ProposeError::Dropped(
                "another membership change is still being committed".into(),
            ));
        }
        self.raw
            .propose_conf_change(change.encode(), change.to_conf_change())
            .map_err(|e| ProposeError::Dropped(e.to_string()))
    }

    /// Hand leadership to voter `to` (the leader only; it stops taking proposals meanwhile).
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// One tick of the logical clock; true when there is something to do (call `ready`).
    pub fn tick(&mut self) -> bool {
        self.raw.tick()
    }

    /// A message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), ReplicaError> {
        match self.raw.step(m) {
            // A message for a replica it does not know, or a stale one: nothing to do.
            Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Ask the leader (or, leading, a quorum) to confirm leadership for a read; answered by
    /// [`Event::ReadIndex`] with `request`, or never (no leader known, a leader that has not
    /// committed in its term yet, a message lost): the caller times out.
    pub fn read_index(&mut self, request: u64) {
        // The leader keeps pending reads by their context and drops one whose context is
        // pending already: unique across replicas (the id) and restarts (the boot nonce).
        let mut ctx = Vec::with_capacity(24);
        for part in [self.id, self.boot, request] {
            ctx.extend_from_slice(&part.to_be_bytes());
        }
        self.raw.read_index(ctx);
    }

    /// A message to `to` could not be delivered (the leader then probes it instead of
    /// streaming appends at it).
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// Whether the snapshot sent to `to` was delivered: without this a leader whose snapshot
    /// message was lost would wait for that follower forever.
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// Start an election now (tests; operators moving leadership).
    pub fn campaign(&mut self) -> Result<(), ReplicaError> {
        Ok(self.raw.campaign()?)
    }

    /// Propose `commands` from `owner` as one entry. Only the leader takes proposals; one
    /// that leadership loses before it commits is dropped (the source reconciles against what
    /// was applied, not against what it proposed).
    pub fn propose(
        &mut self,
        owner: &str,
        commands: Vec<Command>,
    ) -> Result<ProposalId, ProposeError> {
        if !self.is_leader() {
            let leader = self.raw.raft.leader_id;
            return Err(ProposeError::NotLeader {
                leader: (leader != 0).then_some(leader),
            });
        }
        self.next_seq += 1;
        // The term makes ids unique across restarts: a replica leads again only in a later
        // term, while entries it proposed before may still commit.
        let id = ProposalId {
            replica: self.id,
            term: self.raw.raft.term,
            seq: self.next_seq,
        };
        let batch = Batch {
            id,
            owner: owner.to_string(),
            commands,
        };
        self.raw
            .propose(vec![], batch.encode())
            .map_err(|e| ProposeError::Dropped(e.to_string()))?;
        Ok(id)
    }

    /// Carry out what raft-rs has ready: persist (one durable write), and hand out the
    /// messages to send and what happened (entries committed, to apply in order).
    pub fn ready(&mut self) -> Result<Output, ReplicaError> {
        let mut out = Output::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            out.events.push(Event::Role {
                role: ss.raft_state.into(),
                leader: ss.leader_id,
                term: self.raw.raft.term,
            });
        }
        // Messages a leader sends before its own write is durable (raft-rs allows it).
        out.messages.extend(rd.take_messages());
        for rs in rd.take_read_states() {
            let part = |i: usize| {
                rs.request_ctx
                    .get(i * 8..i * 8 + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
            };
            if rs.request_ctx.len() == 24 && part(0) == Some(self.id) && part(1) == Some(self.boot)
            {
                out.events.push(Event::ReadIndex {
                    request: part(2).unwrap_or_default(),
                    index: rs.index,
                });
            }
        }
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        let write = Write {
            snapshot: snapshot.clone(),
            entries: rd.entries().clone(),
            hard_state: rd.hs().cloned(),
            ..Write::default()
        };
        if write.snapshot.is_some() || !write.entries.is_empty() || write.hard_state.is_some() {
            self.raw.store().write(write)?;
        }
        if let Some(mut s) = snapshot {
            let index = s.get_metadata().index;
            self.confs = vec![(index, s.get_metadata().get_conf_state().clone())];
            self.last_snapshot = index;
            self.handed = index;
            out.events.push(Event::Install {
                index,
                data: s.take_data().to_vec(),
            });
        }
        let committed = rd.take_committed_entries();
        self.hand_out(committed, &mut out)?;
        // Messages that may go only once this replica's write is durable (it is).
        out.messages.extend(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.raw.raft.hard_state();
            hs.commit = commit;
            self.raw.store().write(Write {
                hard_state: Some(hs),
                ..Write::default()
            })?;
        }
        out.messages.extend(light.take_messages());
        self.hand_out(light.take_committed_entries(), &mut out)?;
        self.raw.advance_apply();
        Ok(out)
    }

    fn hand_out(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<(), ReplicaError> {
        for e in entries {
            let index = e.index;
            if matches!(
                e.get_entry_type(),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            ) {
                self.membership(&e, out)?;
                continue;
            }
            let batch = if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                Some(Batch::decode(&e.data).map_err(|why| ReplicaError::Entry { index, why })?)
            } else {
                None
            };
            self.handed = index;
            out.events.push(Event::Committed {
                index,
                term: e.term,
                batch,
            });
        }
        Ok(())
    }

    /// A committed membership change: in force from its index. Applied to the configuration
    /// once only: after a restart, the entries up to the stored configuration's are handed
    /// out again, and applying one twice could undo a later change (a learner added again
    /// after its promotion would be demoted).
    fn membership(&mut self, e: &Entry, out: &mut Output) -> Result<(), ReplicaError> {
        let index = e.index;
        let bad = |why: String| ReplicaError::Membership { index, why };
        let cc: ConfChangeV2 = match e.get_entry_type() {
            EntryType::EntryConfChange => {
                let mut v1 =
                    ConfChange::parse_from_bytes(&e.data).map_err(|x| bad(x.to_string()))?;
                let mut single = raft::eraftpb::ConfChangeSingle {
                    node_id: v1.node_id,
                    ..Default::default()
                };
                single.set_change_type(v1.get_change_type());
                let mut v2 = ConfChangeV2::default();
                v2.set_changes(vec![single].into());
                v2.set_context(v1.take_context());
                v2
            }
            _ => ConfChangeV2::parse_from_bytes(&e.data).map_err(|x| bad(x.to_string()))?,
        };
        let change = Change::decode(cc.get_context()).map_err(bad)?;
        // Durability is decided here: the configuration and the index it holds are written
        // in one durable batch before anything else happens under the new configuration.
        if index > self.raw.store().conf_index() {
            let cs = self
                .raw
                .apply_conf_change(&cc)
                .map_err(|x| bad(x.to_string()))?;
            self.raw.store().write(Write {
                conf_state: Some(cs.clone()),
                conf_index: Some(index),
                ..Write::default()
            })?;
            self.confs.push((index, cs));
        }
        self.handed = index;
        out.events.push(Event::Membership {
            index,
            change,
            members: self.members(),
        });
        Ok(())
    }

    /// Store the driver's snapshot of its machine at `index` (an entry already handed out)
    /// and compact the log behind it, keeping `keep_entries` before it for peers slightly
    /// behind. A snapshot at or below the stored one is ignored; returns whether it was kept.
    pub fn store_snapshot(&mut self, index: u64, data: Vec<u8>) -> Result<bool, ReplicaError> {
        self.adopt_snapshot(index, Some(data))
    }

    /// Make current the snapshot at `index` whose data the driver staged in the store itself
    /// (`SledStorage::stage_snapshot`, off this thread), and compact the log behind it.
    pub fn snapshot_staged(&mut self, index: u64) -> Result<bool, ReplicaError> {
        self.adopt_snapshot(index, None)
    }

    fn adopt_snapshot(&mut self, index: u64, data: Option<Vec<u8>>) -> Result<bool, ReplicaError> {
        if index <= self.last_snapshot || index > self.handed {
            return Ok(false);
        }
        // The configuration in force at the snapshot's index, not a later one: a replica that
        // installs it applies the changes after it itself.
        let Some(at) = self.confs.iter().rposition(|(i, _)| *i <= index) else {
            return Ok(false);
        };
        let conf_state = self.confs[at].1.clone();
        let compact_to = index.saturating_sub(self.options.keep_entries) + 1;
        self.raw.store().write(Write {
            own_snapshot: Some((index, conf_state, data)),
            compact_to: Some(compact_to),
            ..Write::default()
        })?;
        self.last_snapshot = index;
        self.confs.drain(..at);
        Ok(true)
    }
}
