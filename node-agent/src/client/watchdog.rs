//! Whether the replica the agent syncs from still deserves it. The controller sends a
//! keepalive first on every stream and then at a fixed interval, with what it has applied, the
//! commit index it knows and whether it can confirm it is current. The agent leaves a replica
//!
//! * that sends nothing for three intervals (frozen: SIGSTOP, a hung host; its TCP connection
//!   stays open, so only silence shows it), in seconds rather than the 35 s the agent waits
//!   for a controller that announces no interval;
//! * that says it is not current for `stale_after` (a leader past its lease, a follower cut
//!   off from its leader), unless only for a reason moving would not cure (`transient`: it
//!   is applying what was committed, or an election is under way; the next two cover those);
//! * whose applied revision trails the commit index it knows and does not move for
//!   `stale_after` (stalled: its apply thread is stuck).
//!
//! Pure: the shell says when each keepalive arrived. Leaving never touches what the dataplane
//! holds; the agent resumes from it on the next replica.

use std::time::{Duration, Instant};

use palisade_proto::v1 as pb;

/// Silence tolerated from a controller that announces no keepalive interval.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(35);
/// Keepalive intervals missed before a replica counts as frozen.
pub const MISSED: u32 = 3;
/// The shortest silence tolerated, however often keepalives are announced.
const MIN_SILENCE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Watchdog {
    stale_after: Duration,
    /// An operator's `--silence-timeout`, which wins over the announced interval.
    silence: Option<Duration>,
    /// The interval this stream's controller announced.
    interval: Option<Duration>,
    /// Since when, and why, the replica says it is not current.
    not_current: Option<(Instant, String)>,
    /// The applied revision seen trailing the commit index, and since when it has not moved.
    stuck: Option<(u64, Instant)>,
}

impl Watchdog {
    pub fn new(stale_after: Duration, silence: Option<Duration>) -> Watchdog {
        Watchdog {
            stale_after,
            silence,
            interval: None,
            not_current: None,
            stuck: None,
        }
    }

    /// A new stream: nothing known of its replica yet.
    pub fn reset(&mut self) {
        *self = Watchdog::new(self.stale_after, self.silence);
    }

    /// How long the replica may say nothing before the agent leaves it.
    pub fn silence_timeout(&self) -> Duration {
        self.silence.unwrap_or_else(|| {
            self.interval
                .map_or(DEFAULT_SILENCE, |i| (i * MISSED).max(MIN_SILENCE))
        })
    }

    /// A keepalive arrived `at`: why the agent should leave this replica, if it should.
    pub fn keepalive(&mut self, k: &pb::Keepalive, at: Instant) -> Option<String> {
        if k.interval_ms > 0 {
            self.interval = Some(Duration::from_millis(k.interval_ms));
        }
        let held = |since: Instant| at.saturating_duration_since(since);
        let mut leave = None;
        if k.current || k.transient {
            self.not_current = None;
        } else {
            let (since, _) = self.not_current.get_or_insert((at, k.reason.clone()));
            if held(*since) >= self.stale_after {
                leave = Some(format!(
                    "the replica has not been current for {}: {}",
                    humantime::format_duration(round(held(*since))),
                    if k.reason.is_empty() {
                        "it gives no reason"
                    } else {
                        &k.reason
                    }
                ));
            }
        }
        if k.revision >= k.commit {
            self.stuck = None;
        } else {
            let (revision, since) = match self.stuck {
                Some((r, since)) if r == k.revision => (r, since),
                _ => (k.revision, at),
            };
            self.stuck = Some((revision, since));
            if leave.is_none() && held(since) >= self.stale_after {
                leave = Some(format!(
                    "the replica has stalled: it has applied revision {} of {} committed and applied nothing for {}",
                    k.revision,
                    k.commit,
                    humantime::format_duration(round(held(since)))
                ));
            }
        }
        if leave.is_some() {
            // Said once per `stale_after`: an agent with nowhere else to go says it again only
            // after another such while.
            self.not_current = self.not_current.take().map(|(_, why)| (at, why));
            self.stuck = self.stuck.map(|(r, _)| (r, at));
        }
        leave
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(revision: u64, commit: u64, current: bool) -> pb::Keepalive {
        pb::Keepalive {
            revision,
            commit,
            current,
            reason: if current {
                String::new()
            } else {
                "this replica knows no leader".into()
            },
            interval_ms: 2000,
            transient: false,
        }
    }

    #[test]
    fn silence_follows_the_announced_interval_unless_the_operator_set_one() {
        let mut w = Watchdog::new(Duration::from_secs(5), None);
        assert_eq!(w.silence_timeout(), DEFAULT_SILENCE);
        w.keepalive(&k(1, 1, true), Instant::now());
        assert_eq!(w.silence_timeout(), Duration::from_secs(6));
        w.reset();
        assert_eq!(
            w.silence_timeout(),
            DEFAULT_SILENCE,
            "a new stream announces again"
        );
        let mut set = Watchdog::new(Duration::from_secs(5), Some(Duration::from_secs(20)));
        set.keepalive(&k(1, 1, true), Instant::now());
        assert_eq!(set.silence_timeout(), Duration::from_secs(20));
    }

    #[test]
    fn leaves_a_replica_not_current_or_stalled_for_a_while_and_no_other() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = Watchdog::new(Duration::from_secs(5), None);
        // Not current, then current again within the time: stays.
        assert_eq!(w.keepalive(&k(4, 4, false), at(0)), None);
        assert_eq!(w.keepalive(&k(4, 4, false), at(4)), None);
        assert_eq!(w.keepalive(&k(4, 4, true), at(6)), None);
        assert_eq!(w.keepalive(&k(4, 4, false), at(8)), None, "counted afresh");
        let why = w.keepalive(&k(4, 4, false), at(13)).unwrap();
        assert!(
            why.contains("not been current for 5s: this replica knows no leader"),
            "{why}"
        );
        assert_eq!(
            w.keepalive(&k(4, 4, false), at(15)),
            None,
            "said once a while"
        );
        assert!(w.keepalive(&k(4, 4, false), at(18)).is_some());
        // Not current only while applying, or electing: the stall rule decides.
        let mut w = Watchdog::new(Duration::from_secs(5), None);
        let transient = pb::Keepalive {
            transient: true,
            ..k(4, 4, false)
        };
        for s in [0, 3, 6, 9] {
            assert_eq!(w.keepalive(&transient, at(s)), None);
        }
        // Trailing the commit index while applying: stays.
        let mut w = Watchdog::new(Duration::from_secs(5), None);
        for (s, r) in [(0, 10), (2, 11), (4, 12), (6, 13), (8, 14)] {
            assert_eq!(w.keepalive(&k(r, 20, true), at(s)), None);
        }
        // Not moving: leaves after the time.
        assert_eq!(w.keepalive(&k(14, 21, true), at(12)), None);
        let why = w.keepalive(&k(14, 22, true), at(13)).unwrap();
        assert!(
            why.contains("applied revision 14 of 22 committed and applied nothing for 5s"),
            "{why}"
        );
        // Caught up: fine again.
        assert_eq!(w.keepalive(&k(22, 22, true), at(14)), None);
        assert_eq!(w.keepalive(&k(22, 23, true), at(30)), None);
    }
}
