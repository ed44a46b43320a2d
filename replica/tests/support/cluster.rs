//! A cluster of replicas in one process, with a network the test controls: messages are
//! queued and delivered in order, links can be cut and healed, replicas crashed (their store
//! closed) and restarted from their data directories. Each replica's state machine is applied
//! here, as the controller's apply thread does: committed entries in order, snapshots
//! installed, a snapshot taken every `snapshot_every` entries and handed back to the replica.
//! No threads, no clock: time is `tick`.
//! (raft-rs draws election timeouts at random, so which replica wins an election varies;
//! tests wait for conditions, bounded in ticks.)

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use palisade_policy::model::{Command, Name};
use palisade_policy::Digest;
use palisade_replica::membership::Kind;
use palisade_replica::{
    Change, Event, Machine, Message, Options, ProposalId, ProposeError, Replica,
};
use palisade_storage::{Create, SledStorage};

pub struct Cluster {
    pub ids: Vec<u64>,
    /// The voters the group was created with (the configuration its log starts from).
    initial: Vec<u64>,
    pub options: Options,
    dir: tempfile::TempDir,
    replicas: BTreeMap<u64, Replica<SledStorage>>,
    machines: BTreeMap<u64, Machine>,
    queue: VecDeque<Message>,
    /// Directed links that drop messages.
    cut: BTreeSet<(u64, u64)>,
    /// Every event each replica reported, in order.
    pub events: BTreeMap<u64, Vec<Event>>,
    /// Applied indexes each replica reported, in order (must only go up).
    pub applied: BTreeMap<u64, Vec<u64>>,
    /// Indexes at which each replica took a snapshot.
    pub snapshots: BTreeMap<u64, Vec<u64>>,
}

impl Cluster {
    pub fn new(n: u64, options: Options) -> Cluster {
        let ids: Vec<u64> = (1..=n).collect();
        let mut c = Cluster {
            initial: ids.clone(),
            ids: ids.clone(),
            options,
            dir: tempfile::tempdir().unwrap(),
            replicas: BTreeMap::new(),
            machines: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            events: BTreeMap::new(),
            applied: BTreeMap::new(),
            snapshots: BTreeMap::new(),
        };
        for id in ids {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let store =
            SledStorage::open(&self.dir.path().join(format!("r{id}")), Create::IfMissing).unwrap();
        let r = Replica::open(id, &self.ids, store, self.options.clone()).unwrap();
        let machine = match r.stored_snapshot().unwrap() {
            Some((_, data)) => Machine::restore(&data).unwrap(),
            None => Machine::new(),
        };
        self.replicas.insert(id, r);
        self.machines.insert(id, machine);
    }

    /// Start replica `id`, new to the group (added as a learner), as the controller does:
    /// a blank directory holding the configuration the group's log starts from.
    pub fn join(&mut self, id: u64) {
        let store =
            SledStorage::open(&self.dir.path().join(format!("r{id}")), Create::IfMissing).unwrap();
        let mut c0 = palisade_storage::ConfState::default();
        c0.set_voters(self.initial.clone());
        store
            .write(palisade_storage::Write {
                conf_state: Some(c0.clone()),
                initial_conf: Some(c0),
                ..Default::default()
            })
            .unwrap();
        drop(store);
        if !self.ids.contains(&id) {
            self.ids.push(id);
        }
        self.start(id);
    }

    /// Propose a membership change on `id` (the leader), checked as the controller does.
    pub fn change(&mut self, id: u64, change: Change) -> Result<(), String> {
        let up: BTreeSet<u64> = self.replicas.keys().copied().collect();
        let r = &self.replicas[&id];
        palisade_replica::membership::check(
            &change,
            &r.members(),
            self.machines[&id].retired(),
            &up,
            r.has_pending_change(),
        )
        .map_err(|e| e.to_string())?;
        let r = self.replicas.get_mut(&id).unwrap();
        r.propose_change(&change).map_err(|e| e.to_string())?;
        self.settle();
        Ok(())
    }

    pub fn replica(&self, id: u64) -> &Replica<SledStorage> {
        &self.replicas[&id]
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.replicas.contains_key(&id)
    }

    /// The replica stops (its store is closed; what it had not made durable is lost).
    pub fn crash(&mut self, id: u64) {
        self.replicas.remove(&id);
        self.machines.remove(&id);
    }

    /// The replica starts again from its data directory (it rebuilds its state machine from
    /// its snapshot and log: what it applies from there starts a new run of indexes).
    pub fn restart(&mut self, id: u64) {
        assert!(!self.is_up(id));
        self.applied.remove(&id);
        self.start(id);
    }

    /// Cut every link between `id` and the others (both ways).
    pub fn isolate(&mut self, id: u64) {
        for other in self.ids.clone() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Run every replica's ready and deliver messages until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let ids: Vec<u64> = self.replicas.keys().copied().collect();
            for id in ids {
                let out = self.replicas.get_mut(&id).unwrap().ready().unwrap();
                moved |= !out.messages.is_empty() || !out.events.is_empty();
                self.apply(id, &out.events);
                self.events.entry(id).or_default().extend(out.events);
                self.queue.extend(out.messages);
            }
            while let Some(m) = self.queue.pop_front() {
                moved = true;
                if self.cut.contains(&(m.from, m.to)) {
                    continue;
                }
                if let Some(r) = self.replicas.get_mut(&m.to) {
                    r.step(m).unwrap();
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster never settles");
    }

    /// What the controller's apply thread does with a replica's events.
    fn apply(&mut self, id: u64, events: &[Event]) {
        let machine = self.machines.get_mut(&id).unwrap();
        let mut added = false;
        for e in events {
            match e {
                Event::Committed { index, batch, .. } => {
                    machine.apply(*index, batch.as_ref());
                    self.applied.entry(id).or_default().push(*index);
                }
                Event::Membership { index, change, .. } => {
                    added |= change.as_ref().is_some_and(|c| c.kind == Kind::AddLearner);
                    machine.apply_change(*index, change.as_ref());
                    self.applied.entry(id).or_default().push(*index);
                }
                Event::Install { data, .. } => *machine = Machine::restore(data).unwrap(),
                Event::Role { .. } | Event::ReadIndex { .. } => {}
            }
        }
        // A replica added gets a snapshot that holds it (as the controller's apply thread).
        let every = if added {
            1
        } else {
            self.options.snapshot_every
        };
        if machine.snapshot_due(every) {
            let index = machine.applied();
            let data = machine.snapshot();
            let replica = self.replicas.get_mut(&id).unwrap();
            assert!(replica.store_snapshot(index, data).unwrap());
            self.snapshots.entry(id).or_default().push(index);
        }
    }

    pub fn machine(&self, id: u64) -> &Machine {
        &self.machines[&id]
    }

    /// One tick on every live replica, then settle.
    pub fn tick(&mut self) {
        for r in self.replicas.values_mut() {
            r.tick();
        }
        self.settle();
    }

    /// Tick until `done` holds, at most `ticks` times; whether it did.
    pub fn run_until(&mut self, ticks: usize, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..ticks {
            if done(self) {
                return true;
            }
            self.tick();
        }
        done(self)
    }

    /// The live leader every live replica that can reach it agrees on, if any.
    pub fn leader(&self) -> Option<u64> {
        let leaders: Vec<u64> = self
            .replicas
            .values()
            .filter(|r| r.is_leader())
            .map(|r| r.id())
            .collect();
        // After a partition two may think they lead: the one with the higher term does.
        leaders
            .into_iter()
            .max_by_key(|id| self.replicas[id].status().term)
    }

    pub fn elect(&mut self) -> u64 {
        assert!(
            self.run_until(500, |c| c.leader().is_some()),
            "a leader within 500 ticks"
        );
        self.leader().unwrap()
    }

    pub fn propose(&mut self, id: u64, commands: Vec<Command>) -> Result<ProposalId, ProposeError> {
        let r = self.replicas.get_mut(&id).unwrap();
        let p = r.propose("test", commands);
        self.settle();
        p
    }

    /// Propose on `id` without settling (a leader cut off still takes proposals); its id if
    /// it did.
    pub fn replicas_propose_anyway(&mut self, id: u64) -> Option<ProposalId> {
        self.replicas
            .get_mut(&id)
            .unwrap()
            .propose("test", pods(900, 1))
            .ok()
    }

    /// Ask replica `id` for a read index, then settle; the index it got, if it got one.
    pub fn read_index(&mut self, id: u64, request: u64) -> Option<u64> {
        self.ask_read(id, request);
        self.settle();
        self.read_answered(id, request)
    }

    /// Ask replica `id` for a read index, without settling.
    pub fn ask_read(&mut self, id: u64, request: u64) {
        self.replicas.get_mut(&id).unwrap().read_index(request);
    }

    /// The index replica `id` got for read `request`, if it got one yet.
    pub fn read_answered(&self, id: u64, request: u64) -> Option<u64> {
        self.events.get(&id)?.iter().find_map(|e| match e {
            Event::ReadIndex { request: r, index } if *r == request => Some(*index),
            _ => None,
        })
    }

    pub fn applied_index(&self, id: u64) -> u64 {
        self.machines[&id].applied()
    }

    pub fn digests(&self, id: u64) -> BTreeMap<Name, (u64, Digest)> {
        self.machines[&id].digests()
    }

    /// Every live replica at the same applied index with the same versions and digests.
    pub fn converged(&self) -> bool {
        let live: Vec<&Machine> = self.machines.values().collect();
        live.windows(2)
            .all(|w| w[0].applied() == w[1].applied() && w[0].digests() == w[1].digests())
    }

    /// Applied indexes only went up, on every replica (across restarts too).
    pub fn revisions_never_went_back(&self) -> bool {
        self.applied
            .values()
            .all(|v| v.windows(2).all(|w| w[0] < w[1]))
    }
}

/// Commands that make slices on three nodes change: a namespace, a default-deny policy, and
/// pods `first..first+n` spread over nodes n1..n3.
pub fn pods(first: usize, n: usize) -> Vec<Command> {
    let mut text = String::new();
    if first == 0 {
        text.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n");
        text.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 80}]}]}\n---\n");
    }
    for i in first..first + n {
        let app = if i % 2 == 0 { "web" } else { "api" };
        text.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{nodeName: n{}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: 10.0.{}.{}}}\n---\n",
            i % 3 + 1,
            i / 200,
            i % 200 + 1
        ));
    }
    palisade_policy::manifest::parse("test", &text, "default")
        .upserts()
        .expect("valid manifests")
}
