//! Whether this replica may serve agents. Every replica serves them from its applied state,
//! but one cut off from a quorum of its group (no leader known, and fewer than a quorum of
//! the group heard from lately: partitioned, or its peers are down) cannot know whether what
//! it serves is current. After a grace period (elections take a second or two) it refuses new
//! streams and ends the ones it has, so agents move to a replica that has a leader; its gRPC
//! health says NOT_SERVING for `palisade.v1.Sync` and `palisade_sync_refusing_agents` is 1.
//! Agents keep enforcing what they hold meanwhile.
//!
//! A replica that knows no leader but hears from a quorum of its group is in the middle of an
//! election, as every replica it hears from is: nothing can be committed anywhere until it
//! ends, so what it serves is as current as anything, and sending its agents away would only
//! move them to a replica in the same state (a large group of agents bouncing between the
//! survivors of a leader loss, with every handshake that costs, can delay the election). An
//! election that lasts three grace periods no longer counts as one: the replica steps aside.
//!
//! [`Standing`] decides, with time passed in (the harness steps it); [`watch`] is its shell.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::GroupStatus;
use crate::metrics::Metrics;

/// How this replica reaches its group: voters (itself included) and the peers heard from
/// within the grace period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    pub voters: usize,
    pub heard: usize,
}

impl Reach {
    /// It and the peers it hears from are a quorum.
    fn quorum(self) -> bool {
        self.voters > 1 && self.heard + 1 > self.voters / 2
    }
}

/// Why this replica should not serve agents right now, if it should not.
pub fn cut_off(s: &GroupStatus, reach: Reach) -> Option<String> {
    if let Some(f) = &s.failure {
        return Some(format!("this replica has failed ({f})"));
    }
    if s.raft.leader == 0 && !reach.quorum() {
        return Some(format!(
            "this replica knows no leader and hears from {} of its {} peers: it is cut off from a quorum of its group",
            reach.heard,
            reach.voters.saturating_sub(1)
        ));
    }
    None
}

/// Whether this replica serves agents: [`cut_off`] held for a grace, or an election that has
/// lasted two graces, refuses them; a leader (or a quorum reached again) serves them again.
#[derive(Debug)]
pub struct Standing {
    grace: Duration,
    /// Since when it has been cut off (and not yet refusing).
    since: Option<Instant>,
    /// Since when no leader has been known.
    leaderless_since: Option<Instant>,
    electing: bool,
    refusing: Option<String>,
}

/// What one step decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stepped {
    /// The refusal changed: `Some(Some(why))`, refuse agents from now; `Some(None)`, serve
    /// them again.
    pub change: Option<Option<String>>,
    /// An election began among reachable peers (agents keep being served).
    pub election: bool,
    /// When to step again if nothing changes before (`None`: at the next change).
    pub wake: Option<Instant>,
}

impl Standing {
    pub fn new(grace: Duration) -> Standing {
        Standing {
            grace,
            since: None,
            leaderless_since: None,
            electing: false,
            refusing: None,
        }
    }

    /// Why agents are refused now, if they are.
    pub fn refusing(&self) -> Option<&str> {
        self.refusing.as_deref()
    }

    /// The group's status `s` and reach `reach` at `now`.
    pub fn step(&mut self, s: &GroupStatus, reach: Reach, now: Instant) -> Stepped {
        let grace = self.grace;
        let mut why = cut_off(s, reach);
        let leaderless = s.raft.leader == 0 && s.failure.is_none();
        // An election that does not end is no longer one: two graces without a leader count
        // as cut off whatever the peers answer (refused one grace later: three in all).
        if !leaderless {
            self.leaderless_since = None;
        }
        let without = leaderless.then(|| *self.leaderless_since.get_or_insert(now));
        if why.is_none() && without.is_some_and(|t| now.duration_since(t) >= grace * 2) {
            why = Some(format!(
                "this replica has known no leader for {} s although a quorum of its group answers",
                (grace * 2).as_secs()
            ));
        }
        let election = leaderless && why.is_none() && !self.electing;
        self.electing = leaderless && why.is_none();
        let change = match why {
            None => {
                self.since = None;
                self.refusing.take().map(|_| None)
            }
            Some(why) => {
                let start = *self.since.get_or_insert(now);
                if now >= start + grace && self.refusing.as_ref() != Some(&why) {
                    self.refusing = Some(why.clone());
                    Some(Some(why))
                } else {
                    None
                }
            }
        };
        let wake = self
            .since
            .filter(|_| self.refusing.is_none())
            .map(|s| s + grace);
        // Without a leader, who is heard from changes without any status change.
        let recheck = leaderless.then(|| now + Duration::from_millis(250));
        let wake = match (wake, recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Stepped {
            change,
            election,
            wake,
        }
    }
}

/// Keep `refusing` at what [`Standing`] decides, until `shutdown`. `reach` says how the group
/// is reached now (asked again every 250 ms while no leader is known).
pub async fn watch(
    mut status: watch::Receiver<GroupStatus>,
    reach: impl Fn() -> Reach + Send + 'static,
    grace: Duration,
    refusing: watch::Sender<Option<String>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut standing = Standing::new(grace);
    loop {
        // A copy: `reach` may read the status too, and a read lock taken twice while the
        // Raft driver waits to write deadlocks (parking_lot lets the writer go first).
        let s = status.borrow_and_update().clone();
        // Tokio's clock (paused in tests), as the standard one.
        let now = tokio::time::Instant::now();
        let stepped = standing.step(&s, reach(), now.into_std());
        if stepped.election {
            info!("no leader yet, but a quorum of the group is reachable (an election): still serving agents");
        }
        match stepped.change {
            Some(Some(why)) => {
                warn!(
                    "refusing agent streams and ending those open, so agents move to another replica: {why}"
                );
                refusing.send_replace(Some(why));
                metrics.refusing_agents(true);
            }
            Some(None) => {
                info!("this replica has a leader again: serving agents");
                refusing.send_replace(None);
                metrics.refusing_agents(false);
            }
            None => {}
        }
        let wake = stepped.wake.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refuses_after_the_grace_and_serves_again_with_a_leader() {
        let led = GroupStatus {
            raft: palisade_replica::Status {
                id: 1,
                leader: 2,
                ..Default::default()
            },
            ..GroupStatus::default()
        };
        let (status_tx, status) = watch::channel(led.clone());
        let (tx, mut refusing) = watch::channel(None);
        let shutdown = CancellationToken::new();
        // Cut off: no peer heard from.
        tokio::spawn(watch(
            status,
            || Reach {
                voters: 3,
                heard: 0,
            },
            Duration::from_secs(3),
            tx,
            Metrics::new(),
            shutdown.clone(),
        ));
        let mut lost = led.clone();
        lost.raft.leader = 0;
        status_tx.send_replace(lost);
        let started = tokio::time::Instant::now();
        refusing.wait_for(Option::is_some).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "not before the grace"
        );
        status_tx.send_replace(led);
        refusing.wait_for(Option::is_none).await.unwrap();
        // A short election does not refuse anyone.
        let mut blip = status_tx.borrow().clone();
        blip.raft.leader = 0;
        status_tx.send_replace(blip);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut back = status_tx.borrow().clone();
        back.raft.leader = 3;
        status_tx.send_replace(back);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(refusing.borrow().is_none());
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_election_among_reachable_peers_sends_no_agent_away() {
        let (status_tx, status) = watch::channel(GroupStatus::default());
        let (tx, refusing) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let reach = {
            let heard = heard.clone();
            move || Reach {
                voters: 3,
                heard: heard.load(std::sync::atomic::Ordering::SeqCst),
            }
        };
        tokio::spawn(watch(
            status,
            reach,
            Duration::from_secs(3),
            tx,
            Metrics::new(),
            shutdown.clone(),
        ));
        // No leader, one of two peers heard: a quorum, an election. Serving.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(refusing.borrow().is_none());
        // The peer goes quiet too: cut off, refused after the grace.
        heard.store(0, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(refusing.borrow().is_some());
        // A leader: serving again.
        let mut led = GroupStatus::default();
        led.raft.leader = 2;
        status_tx.send_replace(led);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(refusing.borrow().is_none());
        // An election that never ends, with the peer answering: refused after three graces.
        heard.store(1, std::sync::atomic::Ordering::SeqCst);
        status_tx.send_replace(GroupStatus::default());
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(refusing.borrow().is_none(), "not before three graces");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(refusing.borrow().is_some());
        drop(status_tx);
        shutdown.cancel();
    }

    #[test]
    fn a_quorum_counts_this_replica() {
        let no_leader = GroupStatus::default();
        assert!(cut_off(
            &no_leader,
            Reach {
                voters: 3,
                heard: 1
            }
        )
        .is_none());
        assert!(cut_off(
            &no_leader,
            Reach {
                voters: 3,
                heard: 0
            }
        )
        .is_some());
        assert!(cut_off(
            &no_leader,
            Reach {
                voters: 5,
                heard: 1
            }
        )
        .is_some());
        assert!(cut_off(
            &no_leader,
            Reach {
                voters: 5,
                heard: 2
            }
        )
        .is_none());
    }
}
