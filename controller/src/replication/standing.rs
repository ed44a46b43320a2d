//! Whether this replica may serve agents. Every replica serves them from its applied state,
//! but one cut off from a quorum of its group (no leader known: partitioned, or its peers are
//! down) cannot know whether what it serves is current. After a grace period (elections take
//! a second or two) it refuses new streams and ends the ones it has, so agents move to a
//! replica that has a leader; its gRPC health says NOT_SERVING for `palisade.v1.Sync` and
//! `palisade_sync_refusing_agents` is 1. Agents keep enforcing what they hold meanwhile.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::GroupStatus;
use crate::metrics::Metrics;

/// Why this replica should not serve agents right now, if it should not.
pub fn cut_off(s: &GroupStatus) -> Option<String> {
    if let Some(f) = &s.failure {
        return Some(format!("this replica has failed ({f})"));
    }
    if s.raft.leader == 0 {
        return Some(
            "this replica knows no leader: it is cut off from a quorum of its group".to_string(),
        );
    }
    None
}

/// Keep `refusing` at [`cut_off`] once that has lasted `grace`, until `shutdown`.
pub async fn watch(
    mut status: watch::Receiver<GroupStatus>,
    grace: Duration,
    refusing: watch::Sender<Option<String>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        let why = cut_off(&status.borrow_and_update());
        let now = tokio::time::Instant::now();
        match why {
            None => {
                since = None;
                if refusing.borrow().is_some() {
                    info!("this replica has a leader again: serving agents");
                    refusing.send_replace(None);
                    metrics.refusing_agents(false);
                }
            }
            Some(why) => {
                let start = *since.get_or_insert(now);
                if now >= start + grace && refusing.borrow().as_ref() != Some(&why) {
                    warn!(
                        "refusing agent streams and ending those open, so agents move to another replica: {why}"
                    );
                    refusing.send_replace(Some(why));
                    metrics.refusing_agents(true);
                }
            }
        }
        let wake = since
            .filter(|_| refusing.borrow().is_none())
            .map(|s| s + grace);
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
        tokio::spawn(watch(
            status,
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
}
