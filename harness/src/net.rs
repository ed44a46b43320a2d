//! The simulated network: every message between replicas, and between agents and replicas,
//! goes through one queue, delivered by tick. Seeded faults: each kind of message can be
//! dropped with a probability and delayed by up to some ticks; links can be cut and healed.
//! A sync stream is ordered (it is one HTTP/2 stream): its messages are never reordered, and
//! losing one of them breaks the stream, which the cluster then closes.

use std::collections::{BTreeMap, BTreeSet};

use palisade_policy::model::Name;
use palisade_proto::v1 as pb;
use palisade_replica::Message;

/// Who sends or receives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Addr {
    Replica(u64),
    Agent(Name),
}

/// Faults apply by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Raft's messages between replicas.
    Raft,
    /// A sync stream, either way.
    Sync,
    /// An ack table a replica sends a peer.
    Acks,
}

#[derive(Debug)]
pub enum Payload {
    Raft(Box<Message>),
    /// A `ControllerMessage` as the stream carries it.
    ToAgent(Vec<u8>),
    FromAgent(pb::AgentMessage),
    Acks(pb::AckTable),
}

impl Payload {
    pub fn kind(&self) -> Kind {
        match self {
            Payload::Raft(_) => Kind::Raft,
            Payload::ToAgent(_) | Payload::FromAgent(_) => Kind::Sync,
            Payload::Acks(_) => Kind::Acks,
        }
    }
}

#[derive(Debug)]
pub struct Envelope {
    pub from: Addr,
    pub to: Addr,
    pub payload: Payload,
}

/// What a kind of message suffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Probability that one message is lost.
    pub drop: f64,
    /// Each message is late by up to this many ticks (drawn per message).
    pub delay: u64,
}

pub struct Net {
    rng: fastrand::Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Envelope>,
    /// When the last message of each ordered link is delivered (sync streams).
    ordered: BTreeMap<(Addr, Addr), u64>,
    cut: BTreeSet<(Addr, Addr)>,
    faults: BTreeMap<Kind, Faults>,
    /// Messages lost (dropped, or on a link cut), for their senders to learn of, as a
    /// transport does: a lost Raft message is reported unreachable, a lost stream message
    /// breaks the stream.
    lost: Vec<Envelope>,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        Net {
            rng: fastrand::Rng::with_seed(seed),
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            ordered: BTreeMap::new(),
            cut: BTreeSet::new(),
            faults: BTreeMap::new(),
            lost: Vec::new(),
        }
    }

    /// The seeded generator every random choice of a run draws from.
    pub fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn set_faults(&mut self, kind: Kind, faults: Faults) {
        self.faults.insert(kind, faults);
    }

    /// Messages between `a` and `b` are lost, both ways, until healed.
    pub fn cut(&mut self, a: Addr, b: Addr) {
        self.cut.insert((a.clone(), b.clone()));
        self.cut.insert((b, a));
    }

    pub fn is_cut(&self, a: &Addr, b: &Addr) -> bool {
        self.cut.contains(&(a.clone(), b.clone()))
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Faults of every kind gone (links heal apart).
    pub fn calm(&mut self) {
        self.faults.clear();
    }

    pub fn send(&mut self, from: Addr, to: Addr, payload: Payload) {
        let kind = payload.kind();
        let f = self.faults.get(&kind).copied().unwrap_or_default();
        if self.is_cut(&from, &to) || (f.drop > 0.0 && self.rng.f64() < f.drop) {
            self.lost.push(Envelope { from, to, payload });
            return;
        }
        let mut at = self.now
            + 1
            + if f.delay > 0 {
                self.rng.u64(0..=f.delay)
            } else {
                0
            };
        if kind == Kind::Sync {
            let last = self.ordered.entry((from.clone(), to.clone())).or_default();
            at = at.max(*last);
            *last = at;
        }
        self.seq += 1;
        self.queue
            .insert((at, self.seq), Envelope { from, to, payload });
    }

    /// Messages lost since the last call.
    pub fn take_lost(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.lost)
    }

    /// Forget what is in flight on the stream between `a` and `b` (it was closed).
    pub fn close_stream(&mut self, a: &Addr, b: &Addr) {
        self.queue.retain(|_, e| {
            !(e.payload.kind() == Kind::Sync
                && ((&e.from, &e.to) == (a, b) || (&e.from, &e.to) == (b, a)))
        });
        self.ordered.remove(&(a.clone(), b.clone()));
        self.ordered.remove(&(b.clone(), a.clone()));
    }

    /// `a` crashed: what it sent is gone, and what was on its way to it is lost (its
    /// connections died with it: nothing meant for it reaches the process that replaces it).
    pub fn forget(&mut self, a: &Addr) {
        let queue = std::mem::take(&mut self.queue);
        for (k, e) in queue {
            if &e.from == a {
                continue;
            }
            if &e.to == a {
                self.lost.push(e);
            } else {
                self.queue.insert(k, e);
            }
        }
        self.lost.retain(|e| &e.from != a);
        self.ordered.retain(|(x, y), _| x != a && y != a);
    }

    /// Advance the clock one tick; the messages due by then, in order.
    pub fn advance(&mut self) -> Vec<Envelope> {
        self.now += 1;
        let later = self.queue.split_off(&(self.now + 1, 0));
        let due = std::mem::replace(&mut self.queue, later);
        let (lost, delivered): (Vec<Envelope>, Vec<Envelope>) = due
            .into_values()
            .partition(|e| self.cut.contains(&(e.from.clone(), e.to.clone())));
        self.lost.extend(lost);
        delivered
    }

    /// Nothing in flight.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }
}
