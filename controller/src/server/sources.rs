//! Starting the leader's sources: the manifests directory on its own thread, the Kubernetes
//! API as a task; a group of one with manifests serves once they are first applied.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::open::open_source;
use super::{Config, ServerError};
use crate::hub::Hub;
use crate::replication::Group;
use crate::reports::Reports;
use crate::source::watch::Pace;
use crate::source::{self, Health};

/// What the sources work with.
pub(super) struct Parts {
    pub hub: Arc<Hub>,
    pub reports: Arc<Reports>,
    pub group: Group,
    /// The revision applied at start.
    pub applied: u64,
    pub shutdown: CancellationToken,
}

/// Start the sources `config` names (the manifests thread joins `threads`); the manifest
/// source's health, and the revision to say the controller serves from.
pub(super) async fn start(
    config: &Config,
    parts: Parts,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<(tokio::sync::watch::Receiver<Health>, u64), ServerError> {
    let Parts {
        hub,
        reports,
        group,
        applied,
        shutdown,
    } = parts;
    let (source_health_tx, source_health) = tokio::sync::watch::channel(Health::default());
    if let Some(dir) = &config.manifests {
        let source = {
            let config = config.clone();
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || open_source(&dir, &config))
                .await
                .expect("opening the manifest source")?
        };
        let context = source::Context {
            hub: hub.clone(),
            reports: reports.clone(),
            group: group.clone(),
            pace: Pace {
                rescan: config.rescan,
                debounce: config.debounce,
                settle: config.timing.settle,
            },
            health: source_health_tx,
            shutdown: shutdown.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || source::watch(context, source))
            .map_err(ServerError::State)?;
        threads.push(thread);
    }
    if let Some(options) = &config.kubernetes {
        let client = crate::kubernetes::client(options).await?;
        tokio::spawn(crate::kubernetes::run(
            hub.clone(),
            reports.clone(),
            group.clone(),
            client,
            options.clone(),
            shutdown.clone(),
        ));
    }
    // A group of one with manifests: serve once they are read and applied, as a single
    // controller always did (a replica of a larger group cannot wait: it may not lead).
    let mut loaded_revision = applied;
    if config.manifests.is_some() && config.replication.voters().len() == 1 {
        // ... unless the replica fails first: then serve, and say so (readiness, replicas).
        let mut h = source_health.clone();
        let mut g = group.watch();
        let first = tokio::select! {
            r = h.wait_for(|h| h.revision.is_some() || h.failing.is_some()) => {
                r.map(|h| h.revision).ok().flatten()
            }
            _ = g.wait_for(|s| s.failure.is_some()) => None,
        };
        loaded_revision = first.unwrap_or(applied);
    }
    Ok((source_health, loaded_revision))
}
