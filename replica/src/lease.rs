//! How recently this replica's view of its group was confirmed, and up to which index. Every
//! replica that knows a leader, the leader itself included, asks for Raft's read index every
//! heartbeat ([`Lease::want_read`]); the leader answers once a quorum of its group confirmed, in
//! its term, that it still leads, with its commit index then. The replica is current as of when
//! it asked, once it has applied that index.
//!
//! The time counted is when the read was *asked*, never when an answer arrived: a leader
//! paused past its lease that steps answers buffered meanwhile, or a follower that hears its
//! leader's heartbeat before the entries it missed, would otherwise call old state current.
//!
//! This is what an answer served from the replica's applied state may claim about itself (not
//! a linearizable read: that is the read index asked for the answer itself). Pure: the driver
//! says when things happened.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Read index requests the lease asks itself have this bit set (an operator's do not).
pub const OWN_READ: u64 = 1 << 63;

/// Reads answered, kept to judge freshness: the newest whose index is applied counts.
const KEPT: usize = 16;

/// Reads the leader answered within the lease: when each was asked, and the commit index
/// the leader answered with; newest first. Current as of the newest one applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confirmed(pub Vec<(Instant, u64)>);

impl Confirmed {
    /// When the newest read whose index `applied` covers was asked.
    pub fn applied_as_of(&self, applied: u64) -> Option<Instant> {
        self.0
            .iter()
            .find(|(_, index)| *index <= applied)
            .map(|(at, _)| *at)
    }

    /// The newest read answered: when it was asked, and its index.
    pub fn newest(&self) -> Option<(Instant, u64)> {
        self.0.first().copied()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Lease {
    /// Reads asked and not answered yet (within the last lease): when each was asked.
    asked: BTreeMap<u64, Instant>,
    next: u64,
    /// Reads answered: when each was asked, and the index; newest first.
    answers: VecDeque<(Instant, u64)>,
}

impl Lease {
    /// The read index request to ask now, if one is due (none asked in the last `every`: a
    /// leader drops a read it cannot serve yet, such as one just elected, without a word).
    /// Asks unanswered for a lease are forgotten.
    pub fn want_read(&mut self, now: Instant, every: Duration, lease: Duration) -> Option<u64> {
        self.asked
            .retain(|_, at| now.saturating_duration_since(*at) < lease);
        let last = self
            .asked
            .values()
            .copied()
            .chain(self.answers.front().map(|(at, _)| *at))
            .max();
        if last.is_some_and(|at| now.saturating_duration_since(at) < every) {
            return None;
        }
        self.next += 1;
        let request = OWN_READ | self.next;
        self.asked.insert(request, now);
        Some(request)
    }

    /// The leader answered read `request` with `index`; whether it was this lease's own.
    pub fn answered(&mut self, request: u64, index: u64) -> bool {
        if request & OWN_READ == 0 {
            return false;
        }
        if let Some(at) = self.asked.remove(&request) {
            // Answers may come out of order: kept by when they were asked.
            let at_pos = self.answers.partition_point(|(seen, _)| *seen > at);
            self.answers.insert(at_pos, (at, index));
            self.answers.truncate(KEPT);
        }
        true
    }

    /// The reads answered that were asked within `lease` of `now`.
    pub fn confirmed(&self, now: Instant, lease: Duration) -> Confirmed {
        Confirmed(
            self.answers
                .iter()
                .copied()
                .filter(|(at, _)| now.saturating_duration_since(*at) <= lease)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_asked_every_heartbeat_and_count_from_when_they_were_asked() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (every, lease) = (Duration::from_millis(300), Duration::from_secs(1));
        let mut l = Lease::default();
        assert_eq!(l.confirmed(at(0), lease), Confirmed::default());
        let first = l.want_read(at(0), every, lease).unwrap();
        assert_ne!(first & OWN_READ, 0);
        assert_eq!(l.want_read(at(100), every, lease), None, "not due yet");
        assert!(l.answered(first, 40));
        let c = l.confirmed(at(200), lease);
        assert_eq!(c.applied_as_of(40), Some(at(0)), "as of when it was asked");
        assert_eq!(c.applied_as_of(39), None, "once applied");
        // Unanswered (dropped by a leader just elected): asked again every heartbeat.
        let second = l.want_read(at(300), every, lease).unwrap();
        assert_eq!(l.want_read(at(500), every, lease), None);
        let third = l.want_read(at(600), every, lease).unwrap();
        assert!(l.answered(third, 45));
        // A late answer to an older ask is kept in its place.
        assert!(l.answered(second, 43));
        let c = l.confirmed(at(700), lease);
        assert_eq!(c.newest(), Some((at(600), 45)));
        // Under steady writes the newest answer is not applied yet, an older one is.
        assert_eq!(c.applied_as_of(44), Some(at(300)));
        assert_eq!(c.applied_as_of(45), Some(at(600)));
        // Past the lease, answers no longer count.
        assert_eq!(l.confirmed(at(1650), lease), Confirmed::default());
        // Asks unanswered for a lease are forgotten: their answers change nothing.
        let fourth = l.want_read(at(900), every, lease).unwrap();
        l.want_read(at(2000), every, lease).unwrap();
        assert!(l.answered(fourth, 50));
        assert_eq!(l.confirmed(at(2000), lease), Confirmed::default());
        assert!(!l.answered(7, 50), "an operator's read");
    }

    #[test]
    fn at_most_a_few_answers_are_kept() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        let every = Duration::from_millis(10);
        for i in 0..40u64 {
            let r = l
                .want_read(t0 + every * i as u32, every, Duration::from_secs(1))
                .unwrap();
            l.answered(r, i);
        }
        let c = l.confirmed(t0 + every * 40, Duration::from_secs(1));
        assert_eq!(c.0.len(), KEPT);
        assert_eq!(c.newest().unwrap().1, 39);
    }
}
