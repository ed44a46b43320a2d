//! How recently this replica's view of its group was confirmed, and up to which index:
//!
//! * a leader's by the answers of a quorum of its voters in its term (the messages it steps
//!   say who answered, [`Heard`]);
//! * a follower's by Raft's read index, asked of its leader every so often
//!   ([`Lease::want_read`]): the leader answers once a quorum confirmed it still leads, with
//!   its commit index; the follower is current as of when it asked, once it has applied that
//!   index. A heartbeat alone would not do: a follower paused or cut off hears one before the
//!   entries it missed, and would claim to be current while serving old state.
//!
//! This is what an answer served from the replica's applied state may claim about itself: a
//! leader paused past its lease (SIGSTOP, a long stall) or a follower cut off from its leader
//! serves what it last applied, and says so. Pure: the driver says when things happened.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Read index requests the lease asks itself have this bit set (an operator's do not).
pub const OWN_READ: u64 = 1 << 63;

/// Who a stepped message proves is still there (see [`crate::Replica::step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// The leader heard voter `id` answer in `term`.
    Follower { id: u64, term: u64 },
}

/// When this replica's view was last confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmed {
    /// A group of one: nobody else to hear from.
    Always,
    /// Current as of `at`, once the entry at `index` is applied.
    At { at: Instant, index: u64 },
    /// Not yet (a new leader not answered by a quorum, a follower whose leader has not
    /// confirmed a read).
    Never,
}

#[derive(Clone, Debug, Default)]
pub struct Lease {
    term: u64,
    followers: BTreeMap<u64, Instant>,
    /// Read indexes asked and not answered yet (within the last lease): when each was asked.
    asked: BTreeMap<u64, Instant>,
    next: u64,
    /// The latest read the leader answered: when it was asked, and the index.
    read: Option<(Instant, u64)>,
}

impl Lease {
    /// A message that proves `heard` arrived `at`. A new term forgets the old one's answers.
    pub fn heard(&mut self, heard: Heard, at: Instant) {
        let Heard::Follower { id, term } = heard;
        if term != self.term {
            self.term = term;
            self.followers.clear();
        }
        self.followers.insert(id, at);
    }

    /// On a follower that knows a leader: the read index request to ask now, if one is due
    /// (none asked in the last `every`: a leader drops a read it cannot serve yet, such as
    /// one just elected, without a word). Asks unanswered for a lease are forgotten.
    pub fn want_read(&mut self, now: Instant, every: Duration, lease: Duration) -> Option<u64> {
        self.asked
            .retain(|_, at| now.saturating_duration_since(*at) < lease);
        let last = self
            .asked
            .values()
            .copied()
            .chain(self.read.map(|(at, _)| at))
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
            // Answers may come out of order: the latest ask answered counts.
            if self.read.is_none_or(|(seen, _)| at > seen) {
                self.read = Some((at, index));
            }
        }
        true
    }

    /// When the view of a replica in `term` was last confirmed: as `leader`, by its `voters`
    /// (itself among them, `own`), the instant by which a quorum had answered in its term;
    /// as a follower, by the latest read its leader answered.
    pub fn confirmed(&self, term: u64, leader: bool, own: u64, voters: &[u64]) -> Confirmed {
        if !leader {
            return self
                .read
                .map_or(Confirmed::Never, |(at, index)| Confirmed::At { at, index });
        }
        // A quorum counts the leader itself: of the others, this many.
        let needed = voters.iter().filter(|v| **v != own).count().div_ceil(2);
        if needed == 0 {
            return Confirmed::Always;
        }
        if term != self.term {
            return Confirmed::Never;
        }
        let mut heard: Vec<Instant> = voters
            .iter()
            .filter(|v| **v != own)
            .filter_map(|v| self.followers.get(v).copied())
            .collect();
        if heard.len() < needed {
            return Confirmed::Never;
        }
        heard.sort_unstable_by(|a, b| b.cmp(a));
        Confirmed::At {
            at: heard[needed - 1],
            index: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_confirmed_when_a_quorum_answered() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let confirmed = |t| Confirmed::At { at: t, index: 0 };
        let mut l = Lease::default();
        let voters = [1, 2, 3];
        assert_eq!(l.confirmed(5, true, 1, &voters), Confirmed::Never);
        l.heard(Heard::Follower { id: 2, term: 5 }, at(1));
        // 1 and 2 are a quorum of three.
        assert_eq!(l.confirmed(5, true, 1, &voters), confirmed(at(1)));
        l.heard(Heard::Follower { id: 3, term: 5 }, at(3));
        assert_eq!(l.confirmed(5, true, 1, &voters), confirmed(at(3)));
        // Of five, two others are needed: the older of the two latest.
        let five = [1, 2, 3, 4, 5];
        assert_eq!(l.confirmed(5, true, 1, &five), confirmed(at(1)));
        l.heard(Heard::Follower { id: 4, term: 5 }, at(4));
        assert_eq!(l.confirmed(5, true, 1, &five), confirmed(at(3)));
        // A voter no longer in the group does not count.
        assert_eq!(l.confirmed(5, true, 1, &[1, 6, 7]), Confirmed::Never);
        // Another term: nothing heard in it.
        assert_eq!(l.confirmed(6, true, 1, &voters), Confirmed::Never);
        l.heard(Heard::Follower { id: 2, term: 6 }, at(9));
        assert_eq!(l.confirmed(6, true, 1, &five), Confirmed::Never);
        // A group of one.
        assert_eq!(
            Lease::default().confirmed(1, true, 1, &[1]),
            Confirmed::Always
        );
    }

    #[test]
    fn a_follower_is_confirmed_by_the_reads_its_leader_answers() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (every, lease) = (Duration::from_millis(300), Duration::from_secs(1));
        let mut l = Lease::default();
        assert_eq!(l.confirmed(2, false, 1, &[1, 2, 3]), Confirmed::Never);
        let first = l.want_read(at(0), every, lease).unwrap();
        assert_ne!(first & OWN_READ, 0);
        assert_eq!(l.want_read(at(100), every, lease), None, "not due yet");
        assert!(l.answered(first, 40));
        assert_eq!(
            l.confirmed(2, false, 1, &[1, 2, 3]),
            Confirmed::At {
                at: at(0),
                index: 40
            },
            "as of when it was asked"
        );
        assert_eq!(l.want_read(at(200), every, lease), None);
        // Unanswered (dropped by a leader just elected): asked again every heartbeat.
        let second = l.want_read(at(300), every, lease).unwrap();
        assert_eq!(l.want_read(at(500), every, lease), None);
        let third = l.want_read(at(600), every, lease).unwrap();
        assert!(l.answered(third, 45));
        assert_eq!(
            l.confirmed(3, false, 1, &[1, 2, 3]),
            Confirmed::At {
                at: at(600),
                index: 45
            }
        );
        // A late answer to an older ask changes nothing.
        assert!(l.answered(second, 41));
        assert_eq!(
            l.confirmed(3, false, 1, &[1, 2, 3]),
            Confirmed::At {
                at: at(600),
                index: 45
            }
        );
        // Asks unanswered for a lease are forgotten: their answers no longer count.
        let fourth = l.want_read(at(900), every, lease).unwrap();
        l.want_read(at(2000), every, lease).unwrap();
        assert!(l.answered(fourth, 50));
        assert_eq!(
            l.confirmed(3, false, 1, &[1, 2, 3]),
            Confirmed::At {
                at: at(600),
                index: 45
            }
        );
        assert!(!l.answered(7, 50), "an operator's read");
    }
}
