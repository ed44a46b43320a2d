//! Agents back in balance across the replicas. Agents stay on a replica while it works and
//! never move back on their own, so after a few failures one replica can end up holding most
//! of them, and the next failure of that replica moves them all at once (thousands of
//! handshakes and resumes on the survivors). Each replica therefore compares the agents it
//! serves with its reachable peers' (from the exchanged ack tables) and, once it has held
//! more than its share for a while, ends some of its streams with UNAVAILABLE: those agents
//! move to another replica chosen at random and resume there by version (a few hundred bytes
//! each, never an older version). It sends at most half its excess at a time, a bounded
//! number, then waits for the peers' counts to show them (a moved agent is counted nowhere
//! for a moment, and the moved agents choose at random). It prefers the streams open longest
//! (not agents that just arrived). It does
//! nothing while no leader is known or while it refuses agents (then they move anyway), or
//! while a peer is still catching up with it (a peer replaying its log after a restart would
//! hold the agents that chose it until it reached their versions).
//!
//! [`Balance`] decides, with time passed in (the harness steps it); [`run`] is its shell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::hub::Hub;
use crate::replication::Group;
use crate::sync::Streams;

/// Agents over the fair share a replica may hold without moving any: a tenth of the share,
/// at least this many.
const MIN_TOLERANCE: usize = 10;

/// A peer this many revisions behind this replica (as of its last table, at most two
/// seconds old) counts as caught up.
const CAUGHT_UP: u64 = 100;

/// After a move, how long before the next (the peers' tables show moved agents within a
/// long poll, two seconds).
const COOL_DOWN: Duration = Duration::from_secs(3);

/// How often the counts are compared.
const TICK: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How long a replica must hold more than its share before it moves agents (zero: never).
    pub after: Duration,
    /// Agents moved at a time at most (then it waits for the peers' counts to show them).
    pub rate: usize,
}

/// How many agents a replica holding `own` should move now, when its reachable peers hold
/// `peers`: none while it is within its fair share (and a tolerance), else half its excess
/// (rounded up).
pub fn excess(own: usize, peers: &[usize]) -> usize {
    if peers.is_empty() {
        return 0;
    }
    let total = own + peers.iter().sum::<usize>();
    let fair = total.div_ceil(peers.len() + 1);
    if own <= fair + (fair / 10).max(MIN_TOLERANCE) {
        return 0;
    }
    (own - fair).div_ceil(2)
}

/// When a replica moves agents, and how many: it has held more than its share for
/// `after`, the group is settled, every answering peer has caught up, and the last move is a
/// cool-down ago.
#[derive(Debug)]
pub struct Balance {
    config: Config,
    /// Since when it has held more than its share.
    above_since: Option<Instant>,
    /// No move before then (the peers' counts show a move a long poll later).
    next_move: Option<Instant>,
}

/// What a replica sees when it compares, at one moment.
#[derive(Clone, Debug)]
pub struct Counts {
    /// A leader is known and this replica does not refuse agents.
    pub settled: bool,
    /// Agents streaming from this replica.
    pub own: usize,
    /// Each peer whose ack table arrives lately: its agents, and the revision it had applied.
    pub answering: Vec<(usize, u64)>,
    /// The revision applied here.
    pub applied: u64,
}

impl Balance {
    pub fn new(config: Config) -> Balance {
        Balance {
            config,
            above_since: None,
            next_move: None,
        }
    }

    /// Compare at `now`: how many agents to send away now (0: none).
    pub fn step(&mut self, now: Instant, c: &Counts) -> usize {
        if self.config.after.is_zero() {
            return 0;
        }
        // One still catching up (a restart replays its log) would hold agents sent to it
        // until it reached their versions, and the agents choose at random: wait for it.
        let caught_up = c.answering.iter().all(|(_, a)| a + CAUGHT_UP >= c.applied);
        let peers: Vec<usize> = c.answering.iter().map(|(n, _)| *n).collect();
        let want = if c.settled && caught_up {
            excess(c.own, &peers)
        } else {
            0
        };
        if want == 0 {
            self.above_since = None;
            return 0;
        }
        let since = *self.above_since.get_or_insert(now);
        if now.duration_since(since) < self.config.after || self.next_move.is_some_and(|t| now < t)
        {
            return 0;
        }
        // The peers' counts show the moved agents a long poll later; until then this
        // replica's share would look larger than it is.
        self.next_move = Some(now + COOL_DOWN);
        want.min(self.config.rate.max(1))
    }
}

/// Compare and move, every second, until `shutdown`.
pub async fn run(
    hub: Arc<Hub>,
    streams: Arc<Streams>,
    group: Group,
    config: Config,
    shutdown: CancellationToken,
) {
    if config.after.is_zero() {
        return;
    }
    let mut balance = Balance::new(config);
    let mut tick = tokio::time::interval(TICK);
    // After a stall, one tick, not the missed ones at once.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Peers whose ack tables arrive serve agents (the long poll answers at least every
        // two seconds); one that is down holds none and takes none (an agent sent there is
        // refused at once and tries another).
        let counts = Counts {
            settled: group.status().raft.leader != 0 && group.refusing_agents().borrow().is_none(),
            own: streams.count(),
            answering: hub.progress(|p| p.peers().answering(crate::replication::exchange::STALE)),
            applied: *hub.revisions().borrow(),
        };
        let want = balance.step(Instant::now(), &counts);
        if want == 0 {
            continue;
        }
        let moved = streams.move_agents(want);
        info!(
            here = counts.own,
            peers = %counts.answering.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>().join(", "),
            moved,
            "this replica holds more than its share of the agents: sending some to other replicas"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_moves_agents_after_holding_too_many_for_a_while_then_cools_down() {
        let mut b = Balance::new(Config {
            after: Duration::from_secs(10),
            rate: 50,
        });
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let crowded = Counts {
            settled: true,
            own: 900,
            answering: vec![(50, 1000), (50, 1000)],
            applied: 1000,
        };
        assert_eq!(b.step(at(0), &crowded), 0, "not at once");
        assert_eq!(b.step(at(9), &crowded), 0);
        assert_eq!(
            b.step(at(10), &crowded),
            50,
            "half the excess, at most the rate"
        );
        assert_eq!(b.step(at(11), &crowded), 0, "cooling down");
        assert_eq!(b.step(at(13), &crowded), 50);
        // A peer still catching up, no leader, or within the share: nothing, and the wait
        // starts over.
        let behind = Counts {
            answering: vec![(50, 10), (50, 1000)],
            ..crowded.clone()
        };
        assert_eq!(b.step(at(20), &behind), 0);
        let unsettled = Counts {
            settled: false,
            ..crowded.clone()
        };
        assert_eq!(b.step(at(21), &unsettled), 0);
        assert_eq!(
            b.step(at(22), &crowded),
            0,
            "held too many again only just now"
        );
        assert_eq!(b.step(at(32), &crowded), 50);
    }

    #[test]
    fn a_replica_within_its_share_moves_nobody() {
        assert_eq!(excess(100, &[]), 0, "alone: nowhere to go");
        assert_eq!(excess(1667, &[1667, 1666]), 0);
        assert_eq!(
            excess(1800, &[1600, 1600]),
            0,
            "within a tenth of the share"
        );
        assert_eq!(excess(12, &[0, 0]), 0, "a few agents over a small share");
    }

    #[test]
    fn a_crowded_replica_moves_half_its_excess() {
        // 5,000 agents, 3,762 here, 1,238 on one peer, none on the one just back.
        assert_eq!(excess(3762, &[1238, 0]), (3762usize - 1667).div_ceil(2));
        assert_eq!(excess(5000, &[0, 0]), (5000usize - 1667).div_ceil(2));
        assert_eq!(excess(40, &[0]), 10);
    }

    #[test]
    fn moving_half_at_a_time_converges_without_overshoot() {
        // Moved agents land at random on the peers; the crowded one never falls below its
        // share, and the counts end within the tolerance.
        let (mut own, mut peers) = (5000usize, [0usize, 0]);
        for round in 0..40 {
            let n = excess(own, &peers);
            if n == 0 {
                break;
            }
            own -= n;
            peers[0] += n / 2;
            peers[1] += n - n / 2;
            assert!(own >= 1667, "round {round}: {own}");
        }
        assert_eq!(excess(own, &peers), 0, "{own} {peers:?}");
        for p in peers {
            assert_eq!(excess(p, &[own, 5000 - own - p]), 0);
        }
    }
}
