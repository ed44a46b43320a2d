//! The Kubernetes source: Namespaces, Pods and NetworkPolicies from the API server (kube-rs,
//! a kubeconfig or the in-cluster configuration), on the Raft leader only.
//!
//! Data comes from one kube-runtime watcher per kind ([`watch`]), each object projected at
//! once to what Palisade uses; it goes into the [`mirror`] (sans-I/O), which compares it with
//! what the replicated state holds from this source and yields batches of commands, proposed
//! to the Raft log ([`crate::replication::Group::propose`]). The first batch after this
//! replica begins leading holds the complete lists of all three kinds (one revision for a
//! cluster whose objects fit one log entry); later events are coalesced for
//! `batch_delay` after the first of them (one batch in flight at a time, the next collects
//! meanwhile). A relist (after `410 Gone`, or by a new leader) is reconciled against the
//! replicated state: what vanished is deleted, what is unchanged proposes nothing. Each
//! watch's state is on the [`status::Board`] (`palisadectl replicas`) and in metrics.
//! Objects Palisade rejects keep their last valid version in force, are listed by
//! introspection, and with `emit_events` are reported as Events on the object ([`events`]).

mod events;
pub mod mirror;
pub mod status;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Future;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher;
use palisade_policy::manifest::Key;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::replication::{Group, ProposeFailed};
use crate::source::Rejected;
use mirror::{Effect, Mirror};
use watch::{Backoff, Incoming};

pub use status::Board;

/// The owner of objects from the Kubernetes API.
pub const OWNER: &str = "kubernetes";

/// How the source reaches the API server and paces its proposals.
#[derive(Clone, Debug)]
pub struct Options {
    /// A kubeconfig file (`None`: `$KUBECONFIG`, `~/.kube/config`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Changes arriving within this long of the first are proposed together.
    pub batch_delay: Duration,
    /// How long one watch request lasts before the API server ends it (it is resumed).
    pub watch_timeout: Duration,
    /// Back-off after an error: from `min`, doubling to `max`, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Report rejected objects as Kubernetes Events on them.
    pub emit_events: bool,
    /// Namespace of objects that name none (never from a real API server).
    pub default_ns: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            kubeconfig: None,
            batch_delay: Duration::from_millis(20),
            watch_timeout: Duration::from_secs(290),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            emit_events: false,
            default_ns: "default".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the kubeconfig {0}: {1}")]
    Kubeconfig(PathBuf, String),
    #[error("no Kubernetes configuration found (give --kubeconfig, set KUBECONFIG, or run in a pod): {0}")]
    Infer(String),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
}

/// A client for the API server the options name.
pub async fn client(options: &Options) -> Result<kube::Client, KubeError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Kubeconfig(path.clone(), e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Kubeconfig(path.clone(), e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    info!(server = %config.cluster_url, "the Kubernetes source reads from this API server");
    kube::Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// Run the source until `shutdown`: it works while this replica leads.
pub async fn run(
    hub: Arc<Hub>,
    group: Group,
    client: kube::Client,
    options: Options,
    shutdown: CancellationToken,
) {
    let mut status = group.watch();
    let events = options.emit_events.then(|| {
        let (tx, rx) = mpsc::channel(events::QUEUE);
        tokio::spawn(events::publish(client.clone(), rx));
        tx
    });
    loop {
        let leading = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = status.wait_for(|s| s.is_leader()) => match s {
                Ok(s) => s.clone(),
                Err(_) => return,
            },
        };
        if !group.caught_up(Duration::from_secs(30)).await {
            warn!("leading, but entries committed before are not applied yet; waiting");
            continue;
        }
        let term = leading.raft.term;
        info!(term, "leading: the Kubernetes source lists and watches");
        let lead = Lead {
            hub: &hub,
            group: &group,
            options: &options,
            term,
        };
        let cx = watch::Context {
            client: client.clone(),
            config: watcher::Config::default()
                .timeout(options.watch_timeout.as_secs().clamp(1, u32::MAX as u64) as u32),
            default_ns: options.default_ns.clone(),
            backoff: Backoff::new(options.backoff_min, options.backoff_max),
            board: hub.kube.clone(),
            metrics: hub.metrics.clone(),
            events: events.clone(),
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = lead.run(cx) => {}
        }
        hub.kube.clear(&hub.metrics);
        if shutdown.is_cancelled() {
            return;
        }
        info!("no longer leading: the Kubernetes source stops");
    }
}

type Proposal = Pin<Box<dyn Future<Output = Result<u64, ProposeFailed>> + Send>>;

/// The source while this replica leads in `term`.
struct Lead<'a> {
    hub: &'a Arc<Hub>,
    group: &'a Group,
    options: &'a Options,
    term: u64,
}

/// Aborts the watch tasks when leadership ends.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Lead<'_> {
    fn still_leading(&self) -> bool {
        let s = self.group.status();
        s.is_leader() && s.raft.term == self.term
    }

    async fn run(&self, cx: watch::Context) {
        let mut mirror = Mirror::new(self.hub.lock().machine.owned_by(OWNER));
        let (tx, mut rx) = mpsc::channel(4096);
        let _tasks = Tasks(vec![
            tokio::spawn(watch::run::<Namespace>(cx.clone(), tx.clone())),
            tokio::spawn(watch::run::<Pod>(cx.clone(), tx.clone())),
            tokio::spawn(watch::run::<NetworkPolicy>(cx, tx)),
        ]);
        let mut status = self.group.watch();
        // When the batch collecting now is due, and when its first change arrived.
        let mut due: Option<Instant> = None;
        let mut first_change: Option<Instant> = None;
        let mut proposal: Option<(Proposal, Instant, usize)> = None;
        let mut failures = 0u32;
        let mut synced = false;
        let mut rejected_shown = usize::MAX;
        loop {
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() || !self.still_leading() {
                        return;
                    }
                }
                incoming = rx.recv() => {
                    let Some(incoming) = incoming else { return };
                    self.receive(&mut mirror, incoming);
                    // Take what else is queued before deciding.
                    while let Ok(more) = rx.try_recv() {
                        self.receive(&mut mirror, more);
                    }
                    if mirror.has_changes() {
                        first_change.get_or_insert_with(Instant::now);
                        if mirror.synced() && !synced {
                            // The first complete picture: at once.
                            synced = true;
                            due = Some(Instant::now());
                        } else if due.is_none() {
                            due = Some(Instant::now() + self.options.batch_delay);
                        }
                    }
                    let rejected = mirror.rejected().count();
                    if rejected != rejected_shown {
                        rejected_shown = rejected;
                        self.show_rejected(&mirror);
                    }
                }
                _ = sleep_until(due), if due.is_some() && proposal.is_none() => {
                    due = None;
                    if let Some(commands) = mirror.batch() {
                        let commands = self.drop_foreign(&mut mirror, commands);
                        let n = commands.len();
                        if n == 0 {
                            mirror.committed();
                            continue;
                        }
                        let group = self.group.clone();
                        let started = first_change.take().unwrap_or_else(Instant::now);
                        proposal = Some((
                            Box::pin(async move { group.propose(OWNER, commands).await }),
                            started,
                            n,
                        ));
                    } else {
                        first_change = None;
                    }
                }
                result = async { (&mut proposal.as_mut().expect("guarded").0).await }, if proposal.is_some() => {
                    let (_, started, n) = proposal.take().expect("guarded");
                    match result {
                        Ok(revision) => {
                            failures = 0;
                            mirror.committed();
                            self.hub.metrics.kube_batch(started.elapsed().as_secs_f64());
                            if n >= 100 {
                                info!(revision, changes = n, "Kubernetes changes committed");
                            } else {
                                debug!(revision, changes = n, "Kubernetes changes committed");
                            }
                        }
                        Err(e) => {
                            if !self.still_leading() {
                                return;
                            }
                            failures += 1;
                            let delay = Duration::from_millis(250u64 << failures.min(7));
                            warn!("cannot commit {n} Kubernetes changes: {e}; comparing again with the replicated state and retrying in {delay:?}");
                            self.group.caught_up(Duration::from_secs(30)).await;
                            mirror.failed(self.hub.lock().machine.owned_by(OWNER));
                            first_change.get_or_insert(started);
                            due = Some(Instant::now() + delay);
                            continue;
                        }
                    }
                    if mirror.has_changes() && due.is_none() {
                        due = Some(Instant::now());
                    }
                }
            }
        }
    }

    fn receive(&self, mirror: &mut Mirror, incoming: Incoming) {
        let metrics = &self.hub.metrics;
        match incoming {
            Incoming::ListStarted(kind) => mirror.list_started(kind),
            Incoming::Listed(kind, name, o) => mirror.listed(kind, name, o),
            Incoming::ListDone(kind) => {
                let relist = mirror.synced_kind(kind);
                let (changed, deleted) = mirror.list_done(kind);
                let objects = mirror.count(kind);
                let rejected = mirror.rejected().filter(|(k, _)| k.0 == kind).count();
                self.hub.kube.listed(kind, objects, rejected, relist);
                if relist {
                    metrics.kube_relisted(kind, objects);
                } else {
                    metrics.kube_objects(kind, objects);
                }
                info!(
                    kind = %kind,
                    objects,
                    changed,
                    deleted,
                    rejected,
                    "{}: compared with the replicated state",
                    if relist { "listed again" } else { "listed" }
                );
            }
            Incoming::Applied(kind, name, o) => match mirror.apply(kind, name, o) {
                Effect::Ignored => metrics.kube_ignored(kind),
                Effect::Changed | Effect::Rejected => {}
            },
            Incoming::Deleted(kind, name) => mirror.delete(kind, name),
        }
    }

    /// Publish the rejected objects (introspection, metrics) and log the new ones.
    fn show_rejected(&self, mirror: &Mirror) {
        let list: Vec<Rejected> = mirror
            .rejected()
            .map(|(k, why)| Rejected {
                source: OWNER.into(),
                kind: k.0.to_string(),
                object: k.1.clone(),
                errors: why
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.reason))
                    .collect(),
            })
            .collect();
        let before: BTreeSet<(String, String)> = self
            .hub
            .lock()
            .rejected
            .get(OWNER)
            .into_iter()
            .flatten()
            .map(|r| (r.kind.clone(), r.object.clone()))
            .collect();
        for r in &list {
            if !before.contains(&(r.kind.clone(), r.object.clone())) {
                warn!(
                    "rejected: {}: the last valid version stays in force",
                    crate::source::watch::rejection_line(r)
                );
            }
        }
        self.hub.set_rejected(OWNER, list);
    }

    /// Objects another source owns are not taken from the API server: reported instead.
    fn drop_foreign(
        &self,
        mirror: &mut Mirror,
        mut commands: Vec<palisade_policy::model::Command>,
    ) -> Vec<palisade_policy::model::Command> {
        let foreign: BTreeMap<Key, String> = crate::source::foreign(self.hub, OWNER, &commands);
        if foreign.is_empty() {
            return commands;
        }
        for (k, owner) in &foreign {
            warn!(
                "{} {}: managed by {owner}: the Kubernetes API's version is not applied",
                k.0, k.1
            );
        }
        commands.retain(|c| !foreign.contains_key(&palisade_policy::manifest::command_key(c)));
        mirror.not_ours(&foreign.keys().cloned().collect());
        commands
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}
