//! The controller's plain HTTP endpoint: Prometheus metrics and the probes.
//!
//! * `/metrics`: the metrics as OpenMetrics text (its content type says so).
//! * `/livez` (and `/healthz`): the process serves.
//! * `/readyz`: the controller does its job: 503, with the reason, while this replica knows
//!   no leader (an election, or cut off from the quorum) or has failed, or while the
//!   manifest source cannot record or commit changes (what was enforced stays enforced;
//!   changes wait).

use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::Metrics;
use crate::replication::{role_name, GroupStatus};
use crate::source::Health;

/// Whether this replica is part of a working group.
fn group_ready(g: &GroupStatus) -> Result<String, String> {
    if let Some(why) = &g.failure {
        return Err(format!("raft: this replica failed: {why}"));
    }
    let r = &g.raft;
    if r.leader == 0 {
        return Err(format!(
            "raft: no leader known (term {}): an election is under way, or this replica cannot reach a quorum",
            r.term
        ));
    }
    Ok(format!(
        "raft: {} in term {}, leader {}, applied {}",
        role_name(r.role),
        r.term,
        r.leader,
        g.applied
    ))
}

fn readiness(health: &Health, group: &GroupStatus) -> (StatusCode, String) {
    let mut lines = Vec::new();
    let raft = group_ready(group);
    let raft_ok = raft.is_ok();
    lines.push(match raft {
        Ok(l) => format!("[+]{l}"),
        Err(l) => format!("[-]{l}"),
    });
    let ok = raft_ok
        && match &health.failing {
            None => {
                lines.push("[+]source ok".to_string());
                true
            }
            Some(why) => {
                lines.push(format!("[-]source failed: {why}"));
                false
            }
        };
    if !health.active {
        lines.push(if group.raft.role == palisade_replica::Role::Leader {
            "[+]source: no manifests directory (objects come from palisadectl apply)".into()
        } else {
            "[+]source: not running here (sources run on the leader)".into()
        });
    }
    if health.waiting > 0 {
        lines.push(format!(
            "[+]source: {} changed file(s) not applied yet (being written or holding removals)",
            health.waiting
        ));
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    lines.push(
        if ok {
            "readyz check passed"
        } else {
            "readyz check failed"
        }
        .into(),
    );
    (status, lines.join("\n") + "\n")
}

/// Serve metrics and probes on `listener` until `shutdown`.
pub fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: watch::Receiver<Health>,
    group: watch::Receiver<GroupStatus>,
    shutdown: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    let addr = listener.local_addr().ok();
    info!(
        addr = %addr.map_or_else(|| "unknown".to_string(), |a| a.to_string()),
        "serving metrics on /metrics, probes on /livez and /readyz"
    );
    let live = || async { "ok\n" };
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::metrics::CONTENT_TYPE,
                    )],
                    metrics.render(),
                )
            }),
        )
        .route("/livez", axum::routing::get(live))
        .route("/healthz", axum::routing::get(live))
        .route(
            "/readyz",
            axum::routing::get(move || async move {
                let h = health.borrow().clone();
                readiness(&h, &group.borrow())
            }),
        );
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    })
}

/// Mirror the source's health on the gRPC health service as `palisade.Source`.
/// Keep the gRPC health service current: the manifest source under [`SOURCE_SERVICE`], and
/// `palisade.v1.Sync` NOT_SERVING while this replica refuses agents.
pub fn mirror_health(
    reporter: tonic_health::server::HealthReporter,
    mut health: watch::Receiver<Health>,
    mut refusing: watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
) {
    let serving = |ok: bool| {
        if ok {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        }
    };
    tokio::spawn(async move {
        loop {
            let source = serving(health.borrow_and_update().failing.is_none());
            reporter.set_service_status(SOURCE_SERVICE, source).await;
            let sync = serving(refusing.borrow_and_update().is_none());
            reporter.set_service_status(SYNC_SERVICE, sync).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = health.changed() => if changed.is_err() { break },
                changed = refusing.changed() => if changed.is_err() { break },
            }
        }
    });
}

/// The agents' service, as the gRPC health service names it.
pub const SYNC_SERVICE: &str = "palisade.v1.Sync";

/// The name under which the gRPC health service reports the manifest source.
pub const SOURCE_SERVICE: &str = "palisade.Source";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_why() {
        let led = GroupStatus {
            raft: palisade_replica::Status {
                id: 1,
                leader: 1,
                term: 2,
                ..Default::default()
            },
            ..GroupStatus::default()
        };
        let (status, body) = readiness(&Health::default(), &led);
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("[+]source ok") && body.contains("leader 1"),
            "{body}"
        );
        let (status, body) = readiness(
            &Health {
                failing: Some("cannot record: No space left on device".into()),
                waiting: 2,
                ..Health::default()
            },
            &led,
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("No space left") && body.contains("2 changed file"));
        let (status, body) = readiness(&Health::default(), &GroupStatus::default());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no leader known"), "{body}");
    }
}
