//! One agent stream's protocol as a machine without I/O: what the controller believes the
//! agent holds, whether something is due, what to send next (decided through a
//! [`NodeView`] of the applied state, and [`encode`]d), and what each ack and nack means. The connection
//! ([`super::connection`]) is its shell: it loads the hub's view, asks the apply thread for
//! the slice when a snapshot is due, encodes, sends, records acks in the rollout and counts
//! in the metrics; every decision is here, with the time passed in, so it is tested by
//! stepping it.

use std::time::{Duration, Instant};

use palisade_policy::delta::SliceDelta;
use palisade_policy::model::Name;
use palisade_policy::{Digest, NodeSlice};
use palisade_proto::encode::{self, SharedParts};
use palisade_proto::Encoded;

use crate::history::{compose_chain, Catchup, Entry};
use crate::rollout::AckOutcome;
use crate::view::NodeView;

/// What the session believes the agent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knowledge {
    Holds(u64, Digest),
    /// After a nack or a divergent ack: only a snapshot will do.
    Unknown,
}

/// For the logs: `version 7 (digest 3f2a…)`, or `unknown`.
impl std::fmt::Display for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Knowledge::Holds(v, d) => write!(f, "version {v} (digest {d})"),
            Knowledge::Unknown => f.write_str("unknown (a snapshot is due)"),
        }
    }
}

/// What to send, decided from one view of the applied state.
#[derive(Debug)]
pub enum Plan {
    /// An update from `from` to `to` with no change (a confirmation, or the same content
    /// under another version).
    Empty { from: u64, to: u64, digest: Digest },
    /// A recorded update, pre-encoded.
    Recorded(Entry),
    /// Recorded updates to compose (when they do not compose, a snapshot goes instead).
    Chain(Vec<Entry>),
    /// The node's whole slice (its latest, read apart: a view holds no slices).
    Snapshot,
}

/// A plan and the version and digest it takes the agent to.
#[derive(Debug)]
pub struct Planned {
    pub plan: Plan,
    pub desired: u64,
    pub digest: Digest,
}

/// What kind of message went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Update,
    Snapshot,
}

impl Kind {
    /// The name metrics count it under.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Update => "update",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// What a message sent means for the metrics.
#[derive(Debug, PartialEq, Eq)]
pub struct Sent {
    /// The first answer to an agent that resumed: how it was resumed (`snapshot`,
    /// `current`: it already held the latest, `delta`).
    pub resumed: Option<&'static str>,
    /// Sent on a stream in sync: the time from the revision's commit to this send counts
    /// as the `send` stage (a first answer waits on the agent's connecting, not on a change).
    pub timed: bool,
}

/// What an ack means before the rollout is asked.
#[derive(Debug, PartialEq, Eq)]
pub struct Acked {
    /// The digest this session sent for the acked version, to check the ack against.
    pub sent: Option<Digest>,
    /// The round trip of the update it answers, when timed.
    pub round_trip: Option<Duration>,
}

/// The back-off before the next snapshot after `n` divergent acks in a row.
pub fn divergence_backoff(n: u32) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    palisade_backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).delay(n - 2)
}

#[derive(Debug)]
pub struct Session {
    node: Name,
    holds: Knowledge,
    /// The version and digest of the last message sent: what an ack of it must say.
    sent: Option<(u64, Digest)>,
    /// The version of the update sent and not yet acked or nacked.
    awaiting: Option<u64>,
    /// Whether the Hello was answered (it always is, if only with an empty update, so the
    /// agent knows it is in sync).
    greeted: bool,
    /// Version of the last message sent, when it was a snapshot.
    last_snapshot: Option<u64>,
    /// A snapshot of this version was nacked: do not resend it until the node changes.
    snapshot_refused_at: Option<u64>,
    /// Acks in a row whose digest was not the one sent.
    divergences: u32,
    /// The agent said it held a version: it resumes.
    resuming: bool,
    /// When the update awaiting its ack was sent (streams in sync only).
    sent_at: Option<Instant>,
    /// Send nothing before this (back-off after divergent acks).
    hold_until: Option<Instant>,
}

impl Session {
    /// A session with an agent that said, in its Hello, that it holds `holds`.
    pub fn new(node: Name, holds: Knowledge) -> Session {
        Session {
            node,
            holds,
            sent: None,
            awaiting: None,
            greeted: false,
            last_snapshot: None,
            snapshot_refused_at: None,
            divergences: 0,
            resuming: matches!(holds, Knowledge::Holds(v, _) if v > 0),
            sent_at: None,
            hold_until: None,
        }
    }

    pub fn node(&self) -> &Name {
        &self.node
    }

    pub fn holds(&self) -> Knowledge {
        self.holds
    }

    /// Acks in a row whose digest was not the one sent.
    pub fn divergences(&self) -> u32 {
        self.divergences
    }

    /// Until when nothing is sent (a back-off after divergent acks); the shell wakes the
    /// session then ([`Session::hold_over`]).
    pub fn hold_until(&self) -> Option<Instant> {
        self.hold_until
    }

    pub fn hold_over(&mut self) {
        self.hold_until = None;
    }

    /// Whether a message is due, with the node's latest version at `latest`: one update
    /// unanswered at a time, none while held back, the Hello always answered, and a refused
    /// snapshot not sent again until the node changes.
    pub fn due(&self, latest: u64, now: Instant) -> bool {
        if self.awaiting.is_some() || self.hold_until.is_some_and(|t| now < t) {
            return false;
        }
        if !self.greeted {
            return true;
        }
        match self.holds {
            Knowledge::Holds(v, _) => v != latest,
            Knowledge::Unknown => self.snapshot_refused_at != Some(latest),
        }
    }

    /// The ack a Hello amounts to: the agent holds what this replica knows the node had at
    /// that version (so it is realized there without a message).
    pub fn hello_ack(&self, view: &impl NodeView) -> Option<(u64, Digest)> {
        let Knowledge::Holds(v, d) = self.holds else {
            return None;
        };
        let (desired, desired_digest) = view.desired(&self.node);
        let known =
            (v == desired && d == desired_digest) || view.digest_at(&self.node, v) == Some(d);
        (known && v > 0).then_some((v, d))
    }

    /// What takes the agent from what it holds to the node's latest version; `None` when it
    /// holds it already and only a first answer would confirm that (it has been given).
    pub fn plan(&mut self, view: &impl NodeView) -> Option<Planned> {
        let (desired, digest) = view.desired(&self.node);
        let plan = match self.holds {
            Knowledge::Unknown => Plan::Snapshot,
            Knowledge::Holds(v, d) if v == desired && d == digest => Plan::Empty {
                from: v,
                to: v,
                digest: d,
            },
            // An agent that holds nothing yet gets its slice whole.
            Knowledge::Holds(0, _) => Plan::Snapshot,
            Knowledge::Holds(v, d) => match view.catch_up(&self.node, v, &d) {
                Some(Catchup::UpToDate) => Plan::Empty {
                    from: desired,
                    to: desired,
                    digest,
                },
                Some(Catchup::One(entry)) => Plan::Recorded(entry),
                Some(Catchup::Chain(entries)) => Plan::Chain(entries),
                // Same content under another version (e.g. after a controller restart): move
                // the agent to the current version without sending any policy.
                None if d == digest => Plan::Empty {
                    from: v,
                    to: desired,
                    digest,
                },
                None => Plan::Snapshot,
            },
        };
        if let Plan::Empty { from, to, digest } = plan {
            if from == to && self.greeted {
                // Caught up without a message (only the first answer confirms).
                self.holds = Knowledge::Holds(to, digest);
                return None;
            }
        }
        Some(Planned {
            plan,
            desired,
            digest,
        })
    }

    /// A message of `kind` taking the agent to `desired` with `digest` went out at `now`.
    pub fn sent(&mut self, kind: Kind, desired: u64, digest: Digest, now: Instant) -> Sent {
        let how = match (kind, self.holds) {
            (Kind::Snapshot, _) => "snapshot",
            (_, Knowledge::Holds(v, _)) if v == desired => "current",
            _ => "delta",
        };
        let resumed = (!self.greeted && self.resuming).then_some(how);
        let timed = self.greeted;
        self.sent_at = timed.then_some(now);
        self.holds = Knowledge::Holds(desired, digest);
        self.sent = Some((desired, digest));
        self.greeted = true;
        self.awaiting = Some(desired);
        self.last_snapshot = (kind == Kind::Snapshot).then_some(desired);
        Sent { resumed, timed }
    }

    /// The agent acked `version`: what the rollout must check the ack against.
    pub fn acked(&mut self, version: u64, now: Instant) -> Acked {
        let mut round_trip = None;
        if self.awaiting.is_some_and(|v| version >= v) {
            self.awaiting = None;
            round_trip = self
                .sent_at
                .take()
                .map(|t| now.saturating_duration_since(t));
        }
        Acked {
            sent: self.sent.filter(|(v, _)| *v == version).map(|(_, d)| d),
            round_trip,
        }
    }

    /// What the rollout made of the ack: a divergent digest (the agent holds another slice
    /// than sent) or one nobody can check means a snapshot is due, after divergent acks in a
    /// row with a growing back-off, which is returned.
    pub fn ack_outcome(&mut self, outcome: &AckOutcome, now: Instant) -> Option<Duration> {
        match outcome {
            AckOutcome::Recorded => {
                self.divergences = 0;
                None
            }
            AckOutcome::Diverged { .. } => {
                self.divergences += 1;
                let wait = divergence_backoff(self.divergences);
                self.holds = Knowledge::Unknown;
                self.hold_until = Some(now + wait);
                Some(wait)
            }
            AckOutcome::Unverified => {
                self.holds = Knowledge::Unknown;
                None
            }
            AckOutcome::Unknown => None,
        }
    }

    /// The agent could not apply `version` and kept what it held before, which is now
    /// unknown here. After a refused update a snapshot goes; after a refused snapshot,
    /// nothing until the node changes, rather than the same thing again.
    pub fn nacked(&mut self, version: u64) {
        self.awaiting = None;
        if self.last_snapshot == Some(version) {
            self.snapshot_refused_at = Some(version);
        }
        self.holds = Knowledge::Unknown;
    }
}

/// What to send, encoded: a message, the kind it is, and the version and digest it takes the
/// agent to.
pub type Message = (Encoded, Kind, u64, Digest);

/// The message `planned` means for `node`, or `None` when it is the node's whole slice (a
/// snapshot was planned, or a chain does not compose): the shell reads the latest slice and
/// sends it with [`snapshot`] (the state may have moved on since the plan).
pub fn encode(node: &Name, planned: Planned) -> Option<Message> {
    let Planned {
        plan,
        desired,
        digest,
    } = planned;
    let update = |from, to, digest: &Digest, delta: &SliceDelta| {
        encode::update(node, from, to, digest, delta, &mut SharedParts::default())
    };
    match plan {
        Plan::Empty { from, to, digest } => Some((
            update(from, to, &digest, &SliceDelta::default()),
            Kind::Update,
            desired,
            digest,
        )),
        Plan::Recorded(entry) => Some((entry.encoded, Kind::Update, desired, digest)),
        Plan::Chain(entries) => {
            let from = entries.first().expect("a chain").from;
            let last = entries.last().expect("a chain");
            let delta = compose_chain(&entries)?;
            Some((
                update(from, last.to, &last.digest, &delta),
                Kind::Update,
                desired,
                digest,
            ))
        }
        Plan::Snapshot => None,
    }
}

/// The snapshot message of `slice`, at `version` with `digest`.
pub fn snapshot(version: u64, digest: Digest, slice: &NodeSlice) -> Message {
    (encode::snapshot(slice), Kind::Snapshot, version, digest)
}

#[cfg(test)]
mod tests;
