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
pub use crate::reports::watches as status;
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
use palisade_policy::manifest::{Key, Object};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::leader::{Ended, LeaderSource};
use crate::replication::{Committed, Group, ProposeFailed};
use crate::reports::{Rejected, Reports};
use mirror::{Effect, Mirror};
use watch::{Backoff, Incoming};

pub use status::Board;

/// The `User-Agent` of every request to the API server.
pub const USER_AGENT: &str = concat!("palisade-controller/", env!("CARGO_PKG_VERSION"));

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
            // Current again within about 4 s of an API server that answers again (a 410
            // after it lists at once).
            backoff_max: Duration::from_secs(4),
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
    let mut config = config;
    // The API server's audit log and priority-and-fairness name the caller by it.
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(USER_AGENT),
    ));
    info!(server = %config.cluster_url, "the Kubernetes source reads from this API server");
    kube::Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// Run the source until `shutdown`: it works while this replica leads.
pub async fn run(
    hub: Arc<Hub>,
    reports: Arc<Reports>,
    group: Group,
    client: kube::Client,
    options: Options,
    shutdown: CancellationToken,
) {
    let events = options.emit_events.then(|| {
        let (tx, rx) = mpsc::channel(events::QUEUE);
        tokio::spawn(events::publish(client.clone(), rx));
        tx
    });
    let source = Source {
        hub: hub.clone(),
        reports,
        group: group.clone(),
        client,
        options,
        events,
    };
    crate::leader::run(source, hub, group, shutdown).await
}

/// The Kubernetes source: what leading means for it.
struct Source {
    hub: Arc<Hub>,
    reports: Arc<Reports>,
    group: Group,
    client: kube::Client,
    options: Options,
    events: Option<mpsc::Sender<(k8s_openapi::api::core::v1::ObjectReference, String)>>,
}

impl LeaderSource for Source {
    const OWNER: &'static str = OWNER;

    fn name(&self) -> &'static str {
        "the Kubernetes source"
    }

    /// List and watch; propose what differs from `applied`, then each change.
    async fn lead(&mut self, term: u64, applied: BTreeMap<Key, Object>) -> Ended {
        let options = &self.options;
        let lead = Lead {
            hub: &self.hub,
            reports: &self.reports,
            group: &self.group,
            options,
            term,
        };
        let cx = watch::Context {
            client: self.client.clone(),
            // Lists are quorum reads (not the API server's cache, which may be older than
            // what the replicated state holds: a stale list would delete live objects).
            config: watcher::Config::default()
                .list_semantic(watcher::ListSemantic::MostRecent)
                .timeout(options.watch_timeout.as_secs().clamp(1, u32::MAX as u64) as u32),
            default_ns: options.default_ns.clone(),
            backoff: Backoff::new(options.backoff_min, options.backoff_max),
            board: self.reports.kube.clone(),
            metrics: self.hub.metrics.clone(),
            events: self.events.clone(),
        };
        lead.run(cx, applied).await
    }

    /// What the session showed goes with it.
    fn ended(&mut self) {
        self.reports.kube.clear(&self.hub.metrics);
        self.reports.set_rejected(OWNER, Vec::new());
    }
}

type Proposal = Pin<Box<dyn Future<Output = Result<Committed, ProposeFailed>> + Send>>;

/// How often objects another source holds are looked at again.
const PARKED_CHECK: Duration = Duration::from_secs(2);

/// The source while this replica leads in `term`.
struct Lead<'a> {
    hub: &'a Arc<Hub>,
    reports: &'a Reports,
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

    async fn run(&self, cx: watch::Context, applied: BTreeMap<Key, Object>) -> Ended {
        let mut mirror = Mirror::new(applied);
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
        let mut synced = false;
        let mut shown = u64::MAX;
        let mut parked_check = tokio::time::interval(PARKED_CHECK);
        loop {
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() || !self.still_leading() {
                        return Ended::Lost;
                    }
                }
                incoming = rx.recv() => {
                    let Some(incoming) = incoming else { return Ended::Lost };
                    self.receive(&mut mirror, incoming);
                    // Take what else is queued before deciding.
                    while let Ok(more) = rx.try_recv() {
                        self.receive(&mut mirror, more);
                    }
                    if mirror.synced() && !synced {
                        // The first complete picture: at once.
                        synced = true;
                        due = Some(Instant::now());
                    }
                    if mirror.has_changes() {
                        first_change.get_or_insert_with(Instant::now);
                        if due.is_none() {
                            due = Some(Instant::now() + self.options.batch_delay);
                        }
                    }
                    if mirror.generation() != shown {
                        shown = mirror.generation();
                        self.show_rejected(&mirror);
                    }
                    self.show_counts(&mirror);
                }
                _ = parked_check.tick(), if !mirror.parked().is_empty() => {
                    let parked: Vec<Key> = mirror.parked().keys().cloned().collect();
                    let Ok(freed) = self.hub.ask(move |st| {
                        parked
                            .into_iter()
                            .find(|k| st.machine().owner(k).is_none_or(|o| o == OWNER))
                    }).await else {
                        return Ended::Lost;
                    };
                    if let Some(k) = freed {
                        return Ended::Restart(format!("{} {} is no longer held by another source", k.0, k.1));
                    }
                }
                _ = sleep_until(due), if due.is_some() && proposal.is_none() => {
                    due = None;
                    if let Some(commands) = mirror.batch() {
                        // Objects another source holds go too: the state machine decides
                        // ownership, and its answer says what it refused.
                        let n = commands.len();
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
                        Ok(Committed { revision, refused }) => {
                            // Objects another source holds were left alone by the state
                            // machine: not ours to record as applied; parked and reported.
                            let parked = !refused.is_empty();
                            mirror.committed(refused);
                            if parked || mirror.generation() != shown {
                                shown = mirror.generation();
                                self.show_rejected(&mirror);
                            }
                            self.hub.metrics.kube_batch(started.elapsed().as_secs_f64());
                            if n >= 100 {
                                info!(revision, changes = n, "Kubernetes changes committed");
                            } else {
                                debug!(revision, changes = n, "Kubernetes changes committed");
                            }
                        }
                        Err(e) => {
                            // It may or may not have been committed: start over from the
                            // replicated state (new lists, compared with it).
                            if !self.still_leading() {
                                return Ended::Lost;
                            }
                            self.hub.metrics.source_failure();
                            return Ended::Restart(format!("cannot commit {n} changes: {e}"));
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
                self.reports.kube.listed(kind, objects, rejected, relist);
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

    /// Every kind's object and rejection counts, on the status board and in metrics.
    fn show_counts(&self, mirror: &Mirror) {
        for kind in mirror::KINDS {
            let objects = mirror.count(kind);
            let rejected = mirror.rejected().filter(|(k, _)| k.0 == kind).count();
            self.reports.kube.counts(kind, objects, rejected);
            self.hub.metrics.kube_objects(kind, objects);
        }
    }

    /// Publish the rejected objects and those another source holds (introspection, metrics)
    /// and log the new ones.
    fn show_rejected(&self, mirror: &Mirror) {
        let entry = |k: &Key, errors: Vec<String>, applied: bool| Rejected {
            applied,
            source: OWNER.into(),
            kind: k.0.to_string(),
            object: k.1.clone(),
            errors,
        };
        let lines = |errors: &[palisade_policy::k8s::FieldError]| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect()
        };
        let rejected = mirror
            .rejected()
            .map(|(k, why)| entry(k, lines(&why.errors), false));
        let parked = mirror.parked().iter().map(|(k, owner)| {
            let why = format!("managed by {owner}: the Kubernetes API's version is not applied");
            entry(k, vec![why], false)
        });
        let narrowed = mirror
            .unknown()
            .map(|(k, fields)| entry(k, lines(fields), true));
        let list: Vec<Rejected> = rejected.chain(parked).chain(narrowed).collect();
        let before: BTreeSet<(String, String, bool)> = self
            .reports
            .rejected_by(OWNER)
            .into_iter()
            .flatten()
            .map(|r| (r.kind, r.object, r.applied))
            .collect();
        for r in &list {
            if !before.contains(&(r.kind.clone(), r.object.clone(), r.applied)) {
                let line = crate::source::watch::rejection_line(r);
                if r.applied {
                    warn!("fields Palisade's schema lacks: {line}");
                } else {
                    warn!("rejected: {line}: what was in force stays");
                }
            }
        }
        self.reports.set_rejected(OWNER, list);
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}
