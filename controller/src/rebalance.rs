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
    let mut above_since: Option<Instant> = None;
    let mut next_move = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    // After a stall, one tick, not the missed ones at once.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let settled = group.status().raft.leader != 0 && group.refusing_agents().borrow().is_none();
        // Peers whose ack tables arrive serve agents (the long poll answers at least every
        // two seconds); one that is down holds none and takes none (an agent sent there is
        // refused at once and tries another). One still catching up (a restart replays its
        // log) would hold agents sent to it until it reached their versions, and the agents
        // choose at random: wait until it has caught up.
        let own = streams.count();
        let applied = *hub.revisions().borrow();
        let answering = hub.progress(|p| p.peers().answering(crate::replication::exchange::STALE));
        let caught_up = answering.iter().all(|(_, a)| a + CAUGHT_UP >= applied);
        let peers: Vec<usize> = answering.iter().map(|(n, _)| *n).collect();
        let settled = settled && caught_up;
        let want = if settled { excess(own, &peers) } else { 0 };
        if want == 0 {
            above_since = None;
            continue;
        }
        let since = *above_since.get_or_insert_with(Instant::now);
        if since.elapsed() < config.after || Instant::now() < next_move {
            continue;
        }
        let moved = streams.move_agents(want.min(config.rate.max(1)));
        // The peers' counts show the moved agents a long poll later; until then this
        // replica's share would look larger than it is.
        next_move = Instant::now() + COOL_DOWN;
        info!(
            here = own,
            peers = %peers.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
            moved,
            "this replica holds more than its share of the agents: sending some to other replicas"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::excess;

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
