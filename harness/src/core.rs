//! One controller core: a replica on an in-memory log, the applied state its committed
//! entries are applied to and the hub it publishes to (this core is the apply thread: it
//! owns the state), and the sync sessions of the agents connected to it, each a `Session` machine with this as its shell (as the
//! controller's `Connection` is over gRPC).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use palisade_controller::applied::State;
use palisade_controller::history::Limits;
use palisade_controller::hub::Hub;
use palisade_controller::metrics::Metrics;
use palisade_controller::rebalance::{self, Balance, Counts};
use palisade_controller::replication::standing::{Reach, Standing};
use palisade_controller::replication::{exchange, GroupStatus};
use palisade_controller::rollout::AgentInfo;
use palisade_controller::sync::serves_ahead;
use palisade_controller::sync::session::{self, Knowledge, Session};
use palisade_policy::model::{Command, Name};
use palisade_policy::Digest;
use palisade_proto::v1 as pb;
use palisade_proto::v1::agent_message::Msg;
use palisade_replica::{Event, Machine, Message, Options, ProposeError, Replica, Role};
use palisade_storage::MemLog;

use crate::check::Ledger;
use crate::feed::{self, Act, Desired, Feed, Seen};

pub struct Core {
    pub id: u64,
    replica: Replica<MemLog>,
    hub: Arc<Hub>,
    /// The applied state (this core is its writer).
    state: State,
    snapshot_every: u64,
    sessions: BTreeMap<Name, Session>,
    /// Where each peer's ack table stands here: (epoch, seq).
    tables: BTreeMap<u64, (u64, u64)>,
    /// The group's members (this one included).
    peers: Vec<u64>,
    /// When each peer was last heard from (a Raft message from it arrived).
    heard: BTreeMap<u64, Instant>,
    /// Whether it serves agents, as the controller's standing decides.
    standing: Standing,
    /// When it sends agents to other replicas, as the controller's rebalancing decides.
    balance: Balance,
    /// The source it runs while it leads.
    pub feed: Feed,
}

/// How long a replica holds more than its share of agents before it moves some, and how many
/// at a time at most (the controller's `--rebalance-after` and `--rebalance-rate`).
pub const REBALANCE: rebalance::Config = rebalance::Config {
    after: std::time::Duration::from_secs(1),
    rate: 4,
};

/// How long a replica cut off from a quorum keeps serving agents (the controller's
/// `--shed-agents-after`), and how recently a peer must have been heard from to count.
pub const SHED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl Core {
    /// Replica `id` of the group `peers` on `log` (new, or what it held when it stopped).
    pub fn start(id: u64, peers: &[u64], log: MemLog, options: Options) -> Core {
        let snapshot_every = options.snapshot_every;
        let replica = Replica::open(id, peers, log, options).expect("the replica opens");
        let machine = match replica.stored_snapshot().expect("the snapshot reads") {
            Some((_, data)) => Machine::restore(&data).expect("the snapshot restores"),
            None => Machine::new(),
        };
        // Nothing here asks the apply thread: the core reads its state itself.
        let (hub, _reads) = Hub::new(id, Metrics::new());
        let state = State::new(machine, Limits::default(), &hub);
        Core {
            id,
            replica,
            hub: Arc::new(hub),
            state,
            snapshot_every,
            sessions: BTreeMap::new(),
            tables: BTreeMap::new(),
            peers: peers.to_vec(),
            heard: BTreeMap::new(),
            standing: Standing::new(SHED_AFTER),
            balance: Balance::new(REBALANCE),
            feed: Feed::default(),
        }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The applied state.
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn is_leader(&self) -> bool {
        self.replica.status().role == Role::Leader
    }

    pub fn term(&self) -> u64 {
        self.replica.status().term
    }

    pub fn applied(&self) -> u64 {
        self.state.revision()
    }

    /// Through which revision every node's agent holds what it should, as this replica knows.
    pub fn realized(&self) -> u64 {
        self.hub.progress(|p| p.rollout().realized_through())
    }

    pub fn tick(&mut self) {
        self.replica.tick();
    }

    /// Why it refuses agents now, if it does.
    pub fn refusing(&self) -> Option<&str> {
        self.standing.refusing()
    }

    /// A Raft message from `peer` arrived at `now`.
    pub fn heard_from(&mut self, peer: u64, now: Instant) {
        self.heard.insert(peer, now);
    }

    /// Step its standing at `now` (its status, and the peers heard from within the grace);
    /// when it starts refusing agents, its streams end: the nodes whose stream it ended.
    pub fn stand(&mut self, now: Instant) -> Vec<Name> {
        let status = GroupStatus {
            raft: self.replica.status(),
            ..GroupStatus::default()
        };
        let reach = Reach {
            voters: self.peers.len(),
            heard: self
                .heard
                .iter()
                .filter(|(p, t)| **p != self.id && now.duration_since(**t) < SHED_AFTER)
                .count(),
        };
        match self.standing.step(&status, reach, now).change {
            Some(Some(_)) => {
                let ended: Vec<Name> = self.sessions.keys().cloned().collect();
                for node in &ended {
                    self.close(node);
                }
                ended
            }
            _ => Vec::new(),
        }
    }

    /// Compare the agents it serves with its peers' (from their ack tables) at `now`, and end
    /// the streams of those it sends away (the first by name: the controller prefers the
    /// longest open); the nodes whose stream it ended.
    pub fn balance(&mut self, now: Instant) -> Vec<Name> {
        let counts = Counts {
            settled: self.replica.status().leader != 0 && self.standing.refusing().is_none(),
            own: self.sessions.len(),
            // Every peer whose table arrived (the harness's clock is not the tables' stamps).
            answering: self
                .hub
                .progress(|p| p.peers().answering(std::time::Duration::MAX)),
            applied: self.state.revision(),
        };
        let n = self.balance.step(now, &counts);
        let moved: Vec<Name> = self.sessions.keys().take(n).cloned().collect();
        for node in &moved {
            self.close(node);
        }
        moved
    }

    /// Step its source at `now`, reading `want`: it proposes only while this replica leads.
    pub fn feed(&mut self, want: &Desired, now: Instant) {
        let s = self.replica.status();
        let held = self.state.machine().owned_by(feed::OWNER);
        let seen = Seen {
            leader: s.role == Role::Leader,
            term: s.term,
            commit: s.commit,
            applied: self.state.revision(),
            held: &held,
            now,
        };
        if let Act::Propose(commands) = self.feed.step(&seen, want) {
            let index = self
                .replica
                .propose(feed::OWNER, commands)
                .ok()
                .map(|_| self.replica.status().last_index);
            self.feed.proposed(index);
        }
    }

    pub fn step(&mut self, m: Message) {
        // A message raft-rs refuses (from an old term, a removed peer) is dropped, as the
        // transport drops it.
        let _ = self.replica.step(m);
    }

    /// What became of a message this replica sent `to`, as its transport reports it.
    pub fn delivery(&mut self, to: u64, delivered: bool, snapshot: bool) {
        if snapshot {
            self.replica.report_snapshot(to, delivered);
        }
        if !delivered {
            self.replica.report_unreachable(to);
        }
    }

    /// Propose `commands`; the index of the entry that holds them.
    pub fn propose(&mut self, commands: Vec<Command>) -> Result<u64, ProposeError> {
        self.replica.propose("harness", commands)?;
        Ok(self.replica.status().last_index)
    }

    /// Run the replica's ready: apply what committed (checking each index in `ledger`), take
    /// snapshots when due; the messages to send.
    pub fn ready(&mut self, ledger: &mut Ledger) -> Vec<Message> {
        let out = self
            .replica
            .ready()
            .expect("the in-memory log takes every write");
        for e in out.events {
            let index = match e {
                Event::Committed { index, batch, .. } => {
                    self.state.apply(&*self.hub, &[(index, batch)]);
                    index
                }
                Event::Install { index, data } => {
                    let m = Machine::restore(&data).expect("the leader's snapshot");
                    self.state.install(&*self.hub, m);
                    index
                }
                Event::Membership { index, change, .. } => {
                    self.state.apply_change(&*self.hub, index, change.as_ref());
                    index
                }
                Event::Role { .. } | Event::ReadIndex { .. } => continue,
            };
            let digests = self.state.machine().digests();
            ledger.applied(self.id, index, digests);
        }
        if let Some((index, data)) = self.state.snapshot_if_due(self.snapshot_every) {
            self.replica
                .store_snapshot(index, data)
                .expect("the snapshot is stored");
        }
        out.messages
    }

    /// An agent says hello holding `version` with `digest`: served here once this replica
    /// has applied that far (as the sync service decides); whether it was taken.
    pub fn open(&mut self, node: &Name, version: u64, digest: Digest) -> bool {
        // Cut off from its group: it refuses streams (agents try another replica).
        if self.standing.refusing().is_some() {
            return false;
        }
        let s = self.replica.status();
        let applied = self.applied();
        if applied < version && !serves_ahead(s.role == Role::Leader, &s, applied, version) {
            return false;
        }
        let session = Session::new(node.clone(), Knowledge::Holds(version, digest));
        if let Some((v, d)) = session.hello_ack(&*self.hub.view()) {
            self.hub.ack(node, v, d, Some(d), None);
        }
        self.hub.connected(node, &AgentInfo::default());
        self.sessions.insert(node.clone(), session);
        true
    }

    pub fn close(&mut self, node: &Name) {
        if self.sessions.remove(node).is_some() {
            self.hub.disconnected(node, false);
        }
    }

    pub fn serves(&self, node: &Name) -> bool {
        self.sessions.contains_key(node)
    }

    /// What each session has due, encoded as the stream carries it.
    pub fn sync(&mut self, now: Instant) -> Vec<(Name, Vec<u8>)> {
        let mut out = vec![];
        for (node, session) in &mut self.sessions {
            let view = self.hub.view();
            let latest = view.desired(node).0;
            if !session.due(latest, now) {
                continue;
            }
            let Some(planned) = session.plan(&*view) else {
                continue;
            };
            let (msg, kind, desired, digest) =
                session::encode(node, planned).unwrap_or_else(|| {
                    let (v, d, slice) = self.state.latest(node);
                    session::snapshot(v, d, &slice)
                });
            session.sent(kind, desired, digest, now);
            out.push((node.clone(), msg.0.to_vec()));
        }
        out
    }

    /// A message from `node`'s agent; false when it ends the stream.
    pub fn from_agent(&mut self, node: &Name, m: pb::AgentMessage, now: Instant) -> bool {
        let Some(session) = self.sessions.get_mut(node) else {
            return false;
        };
        match m.msg {
            Some(Msg::Ack(a)) => {
                let Some(digest) = Digest::from_hex(&a.digest) else {
                    return false;
                };
                let acked = session.acked(a.version, now);
                let outcome = self.hub.ack(node, a.version, digest, acked.sent, None);
                session.ack_outcome(&outcome, now);
            }
            Some(Msg::Nack(n)) => {
                self.hub.nack(node, n.version, n.error);
                session.nacked(n.version);
            }
            _ => return false,
        }
        true
    }

    /// This replica's ack table since what `peer` holds of it.
    pub fn table_for(&self, peer_holds: (u64, u64)) -> pb::AckTable {
        exchange::table_since(&self.hub, peer_holds.0, peer_holds.1)
    }

    /// Where peer `peer`'s table stands here.
    pub fn holds_of(&self, peer: u64) -> (u64, u64) {
        self.tables.get(&peer).copied().unwrap_or_default()
    }

    /// Merge peer `peer`'s table, as the exchange does.
    pub fn merge(&mut self, peer: u64, table: pb::AckTable) {
        self.tables.insert(peer, (table.epoch, table.seq));
        let (changes, unreadable) = palisade_controller::acks::decode(table);
        assert!(unreadable.is_empty(), "{unreadable:?}");
        self.hub.merge_peer(peer, changes);
    }
}
