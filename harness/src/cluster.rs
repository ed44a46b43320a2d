//! N controller cores, one fake agent per node and the simulated network between them,
//! stepped one tick at a time; every random choice comes from the run's seed, so a run
//! replays exactly from it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use palisade_policy::model::{Command, Name};
use palisade_replica::{MessageType, Options, ProposeError};
use palisade_storage::MemLog;

use crate::agent::Agent;
use crate::check::{normalized, Ledger};
use crate::core::Core;
use crate::net::{Addr, Envelope, Net, Payload};

/// What one tick stands for (the controller ticks Raft every 100 ms).
pub const TICK: Duration = Duration::from_millis(100);

pub struct Cluster {
    pub ids: Vec<u64>,
    options: Options,
    /// Each replica's log: it outlives a crash, as a disk does.
    logs: BTreeMap<u64, MemLog>,
    cores: BTreeMap<u64, Core>,
    pub agents: BTreeMap<Name, Agent>,
    pub net: Net,
    pub ledger: Ledger,
    base: Instant,
    /// Ticks between two asks of a peer's ack table.
    pub exchange_every: u64,
    /// Agents without a stream connect by themselves (to a replica drawn from the seed);
    /// off, only [`Cluster::connect`] opens streams.
    pub auto_connect: bool,
    /// What the source every replica reads says (`None`: no source runs).
    pub feed: Option<crate::feed::Desired>,
}

impl Cluster {
    /// `replicas` cores and one agent on each of `nodes`, the run drawn from `seed`.
    pub fn new(seed: u64, replicas: u64, nodes: &[&str]) -> Cluster {
        let ids: Vec<u64> = (1..=replicas).collect();
        let options = Options {
            election_tick: 10,
            heartbeat_tick: 3,
            snapshot_every: 20,
            keep_entries: 5,
            fixed_election: true,
        };
        let mut c = Cluster {
            ids: ids.clone(),
            options,
            logs: BTreeMap::new(),
            cores: BTreeMap::new(),
            agents: nodes.iter().map(|n| ((*n).into(), Agent::new(n))).collect(),
            net: Net::new(seed),
            ledger: Ledger::default(),
            base: Instant::now(),
            exchange_every: 5,
            auto_connect: true,
            feed: None,
        };
        for id in ids {
            c.logs.insert(id, MemLog::new());
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let core = Core::start(id, &self.ids, self.logs[&id].clone(), self.options.clone());
        self.cores.insert(id, core);
    }

    /// The harness's clock, as sessions see it.
    pub fn now(&self) -> Instant {
        self.base + TICK * self.net.now() as u32
    }

    pub fn core(&self, id: u64) -> Option<&Core> {
        self.cores.get(&id)
    }

    pub fn live(&self) -> Vec<u64> {
        self.cores.keys().copied().collect()
    }

    pub fn crashed(&self) -> Vec<u64> {
        self.ids
            .iter()
            .copied()
            .filter(|id| !self.cores.contains_key(id))
            .collect()
    }

    /// The leader with the highest term among live cores, if any.
    pub fn leader(&self) -> Option<u64> {
        self.cores
            .values()
            .filter(|c| c.is_leader())
            .max_by_key(|c| c.term())
            .map(|c| c.id)
    }

    /// Propose `commands` on the leader; the index of the entry that holds them (committed
    /// only if that leader keeps it).
    pub fn propose(&mut self, commands: Vec<Command>) -> Result<u64, ProposeError> {
        match self.leader() {
            Some(id) => self.cores.get_mut(&id).expect("live").propose(commands),
            None => Err(ProposeError::NotLeader { leader: None }),
        }
    }

    /// Replica `id` stops: its streams end, what it had in flight is lost, its log stays.
    pub fn crash(&mut self, id: u64) {
        if self.cores.remove(&id).is_none() {
            return;
        }
        for a in self.agents.values_mut() {
            if a.at == Some(id) {
                a.at = None;
            }
        }
        self.net.forget(&Addr::Replica(id));
    }

    /// Replica `id` starts again from its log.
    pub fn restart(&mut self, id: u64) {
        if !self.cores.contains_key(&id) {
            self.start(id);
        }
    }

    /// Cut replica `id` from every other replica and every agent.
    pub fn isolate(&mut self, id: u64) {
        let me = Addr::Replica(id);
        for other in self.ids.clone() {
            if other != id {
                self.net.cut(me.clone(), Addr::Replica(other));
            }
        }
        for node in self.agents.keys().cloned().collect::<Vec<_>>() {
            self.net.cut(me.clone(), Addr::Agent(node));
        }
    }

    /// Open `node`'s stream to replica `id` (ending the one it has); whether the replica
    /// took it (one that has not applied what the agent holds sends it away).
    pub fn connect(&mut self, node: &Name, id: u64) -> bool {
        self.disconnect(node);
        let agent = &self.agents[node];
        if self
            .net
            .is_cut(&Addr::Agent(node.clone()), &Addr::Replica(id))
        {
            return false;
        }
        let (v, d) = agent.holds();
        let Some(core) = self.cores.get_mut(&id) else {
            return false;
        };
        let taken = core.open(node, v, d);
        if taken {
            self.agents.get_mut(node).expect("an agent").at = Some(id);
        }
        taken
    }

    /// End `node`'s stream, both sides.
    pub fn disconnect(&mut self, node: &Name) {
        let agent = self.agents.get_mut(node).expect("an agent");
        if let Some(id) = agent.at.take() {
            if let Some(core) = self.cores.get_mut(&id) {
                core.close(node);
            }
            self.net
                .close_stream(&Addr::Agent(node.clone()), &Addr::Replica(id));
        }
    }

    /// One tick: Raft ticks (each replica, most ticks: their clocks drift apart by the seed),
    /// messages due are delivered, replicas run their ready and their streams, ack tables
    /// go out, agents without a stream connect, broken streams close.
    pub fn tick(&mut self) {
        let now = self.now();
        for core in self.cores.values_mut() {
            if self.net.rng().u8(0..10) < 9 {
                core.tick();
            }
        }
        for e in self.net.advance() {
            self.deliver(e, now);
        }
        if let Some(want) = &self.feed {
            for core in self.cores.values_mut() {
                core.feed(want, now);
            }
        }
        self.run_ready(now);
        self.stand(now);
        if self.net.now().is_multiple_of(self.exchange_every) {
            self.exchange();
        }
        self.connect_agents();
        for e in self.net.take_lost() {
            self.lost(e);
        }
    }

    /// A message lost on the way: its sender learns of it as from a transport.
    fn lost(&mut self, e: Envelope) {
        match (e.from, e.to, e.payload) {
            (Addr::Replica(from), Addr::Replica(to), Payload::Raft(m)) => {
                if let Some(core) = self.cores.get_mut(&from) {
                    core.delivery(to, false, m.get_msg_type() == MessageType::MsgSnapshot);
                }
            }
            (Addr::Agent(node), _, _) | (_, Addr::Agent(node), _) => self.disconnect(&node),
            _ => {}
        }
    }

    fn deliver(&mut self, e: Envelope, now: Instant) {
        match (e.from, e.to, e.payload) {
            (from, Addr::Replica(to), Payload::Raft(m)) => {
                let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
                let delivered = match self.cores.get_mut(&to) {
                    Some(core) => {
                        if let Addr::Replica(from) = &from {
                            core.heard_from(*from, now);
                        }
                        core.step(*m);
                        true
                    }
                    None => false,
                };
                if let (Addr::Replica(from), true) = (&from, snapshot || !delivered) {
                    if let Some(core) = self.cores.get_mut(from) {
                        core.delivery(to, delivered, snapshot);
                    }
                }
            }
            (Addr::Replica(from), Addr::Agent(node), Payload::ToAgent(bytes)) => {
                let agent = self.agents.get_mut(&node).expect("an agent");
                if agent.at != Some(from) {
                    return;
                }
                if let Some(answer) = agent.receive(&bytes) {
                    let (v, d) = agent.holds();
                    self.ledger.agent_holds(&node, v, d);
                    self.net.send(
                        Addr::Agent(node),
                        Addr::Replica(from),
                        Payload::FromAgent(answer),
                    );
                }
            }
            (Addr::Agent(node), Addr::Replica(to), Payload::FromAgent(m)) => {
                if self.agents[&node].at != Some(to) {
                    return;
                }
                let ok = self
                    .cores
                    .get_mut(&to)
                    .is_some_and(|c| c.from_agent(&node, m, now));
                if !ok {
                    self.disconnect(&node);
                }
            }
            (Addr::Replica(from), Addr::Replica(to), Payload::Acks(table)) => {
                if let Some(core) = self.cores.get_mut(&to) {
                    core.merge(from, table);
                }
            }
            (from, to, p) => panic!("{from:?} → {to:?}: {p:?} is not a message of this network"),
        }
    }

    fn run_ready(&mut self, now: Instant) {
        for (id, core) in &mut self.cores {
            for m in core.ready(&mut self.ledger) {
                let to = Addr::Replica(m.to);
                self.net
                    .send(Addr::Replica(*id), to, Payload::Raft(Box::new(m)));
            }
            for (node, bytes) in core.sync(now) {
                self.net.send(
                    Addr::Replica(*id),
                    Addr::Agent(node),
                    Payload::ToAgent(bytes),
                );
            }
        }
    }

    /// Each replica steps its standing (the streams of one that starts refusing agents end)
    /// and its rebalancing (the streams of agents it sends away end).
    fn stand(&mut self, now: Instant) {
        let mut ended = Vec::new();
        for (id, core) in &mut self.cores {
            ended.extend(core.stand(now).into_iter().map(|n| (*id, n)));
            ended.extend(core.balance(now).into_iter().map(|n| (*id, n)));
        }
        for (id, node) in ended {
            let agent = self.agents.get_mut(&node).expect("an agent");
            if agent.at == Some(id) {
                agent.at = None;
                self.net
                    .close_stream(&Addr::Agent(node.clone()), &Addr::Replica(id));
            }
        }
    }

    /// Cut replica `id` from every other replica (agents still reach it).
    pub fn cut_from_peers(&mut self, id: u64) {
        for other in self.ids.clone() {
            if other != id {
                self.net.cut(Addr::Replica(id), Addr::Replica(other));
            }
        }
    }

    /// Each replica sends each live peer the changes to its table since what the peer holds.
    fn exchange(&mut self) {
        let ids = self.live();
        for &from in &ids {
            for &to in &ids {
                if from == to {
                    continue;
                }
                let holds = self.cores[&to].holds_of(from);
                let table = self.cores[&from].table_for(holds);
                self.net
                    .send(Addr::Replica(from), Addr::Replica(to), Payload::Acks(table));
            }
        }
    }

    /// A stream whose link is cut ends (the agent hears no keepalive and leaves); each agent
    /// without a stream tries one replica, drawn from the seed (a replica that has not
    /// applied what the agent holds sends it away, as the sync service does).
    fn connect_agents(&mut self) {
        let nodes: Vec<Name> = self.agents.keys().cloned().collect();
        for node in &nodes {
            if let Some(id) = self.agents[node].at {
                if self
                    .net
                    .is_cut(&Addr::Agent(node.clone()), &Addr::Replica(id))
                {
                    self.disconnect(node);
                }
            }
        }
        let live = self.live();
        if live.is_empty() || !self.auto_connect {
            return;
        }
        for node in &nodes {
            if self.agents[node].at.is_none() {
                let id = live[self.net.rng().usize(0..live.len())];
                self.connect(node, id);
            }
        }
    }

    /// Run until `done` holds, at most `ticks` ticks; whether it did.
    pub fn run_until(&mut self, ticks: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..ticks {
            if done(self) {
                return true;
            }
            self.tick();
        }
        done(self)
    }

    /// Where every replica and agent stands, for a failure's message.
    pub fn describe(&self) -> String {
        let mut out = format!("tick {}, leader {:?}\n", self.net.now(), self.leader());
        for c in self.cores.values() {
            let (revision, digests) = (c.state().revision(), c.state().machine().digests());
            let versions: Vec<String> = digests
                .iter()
                .map(|(n, (v, d))| format!("{n}@{v}:{}", &d.to_hex()[..6]))
                .collect();
            let rollout: Vec<String> = c.hub().progress(|p| {
                digests
                    .keys()
                    .filter_map(|n| {
                        let r = p.rollout().node(n)?;
                        Some(format!(
                            "{n} desired {} acked {} ({} streams here)",
                            r.desired_version, r.acked_version, r.connections
                        ))
                    })
                    .collect()
            });
            out += &format!(
                "replica {}: term {}, leader {}, applied {revision}, realized {}, refusing {:?}, {}; {}\n",
                c.id,
                c.term(),
                c.is_leader(),
                c.realized(),
                c.refusing(),
                versions.join(" "),
                rollout.join(", ")
            );
        }
        for a in self.agents.values() {
            let (v, d) = a.holds();
            out += &format!(
                "agent {}: at {:?}, holds {v}:{}\n",
                a.node,
                a.at,
                &d.to_hex()[..6]
            );
        }
        out
    }

    /// Run until every live replica applied `index` and [`Cluster::converged`], at most
    /// `ticks` ticks; whether it did.
    pub fn settle_past(&mut self, index: u64, ticks: u64) -> bool {
        self.run_until(ticks, |c| {
            c.cores.values().all(|core| core.applied() >= index) && c.converged()
        })
    }

    /// Every live replica applied the same index to the same slices, every agent holds its
    /// node's latest slice, and every replica counts that revision realized.
    pub fn converged(&self) -> bool {
        let mut states = self.cores.values().map(|c| {
            (
                c.state().revision(),
                normalized(c.state().machine().digests()),
            )
        });
        let Some(first) = states.next() else {
            return false;
        };
        if !states.all(|s| s == first) {
            return false;
        }
        let (revision, digests) = first;
        let agents_hold = self.agents.values().all(|a| {
            let want = digests
                .get(&a.node)
                .copied()
                .unwrap_or((0, palisade_policy::NodeSlice::empty(&a.node).digest()));
            a.holds() == want
        });
        // Every replica knows it, from its own streams or its peers' tables.
        agents_hold && self.cores.values().all(|c| c.realized() == revision)
    }
}
