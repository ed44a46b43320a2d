//! One task per kind: a kube-runtime watcher (list, then watch from the list's
//! resourceVersion; relist after `410 Gone`), each object projected at once to what Palisade
//! uses, sent to the source's loop. Errors never end the task: it backs off with jitter
//! (growing until a list completes or an event arrives), says so in the status board, the
//! metrics and the log, and lets the watcher retry. Objects are read through [`Seen`], which
//! keeps the fields the typed schema lacks (the typed structs would drop them silently).

use std::time::{Duration, Instant};

use std::borrow::Cow;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use palisade_policy::k8s::unknown::{self, FieldPath};
use palisade_policy::k8s::Kind;
use palisade_policy::manifest::Object;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::mirror::Received;
use super::status::{Board, State};
use crate::metrics::Metrics;

/// What a watch task tells the source's loop.
pub enum Incoming {
    ListStarted(Kind),
    Listed(Kind, String, Received),
    ListDone(Kind),
    Applied(Kind, String, Received),
    Deleted(Kind, String),
}

/// Exponential back-off with jitter: each delay is drawn from the upper half of
/// `min · 2^failures`, capped at `max`. Forgotten after a healthy period: a failure more than
/// [`HEALTHY`] after the previous one starts again from `min` (a quiet kind, which sees no
/// event to reset it, does not keep the back-off of an old outage).
#[derive(Clone, Debug)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    failures: u32,
    last: Option<Instant>,
}

/// Without a failure for this long, the back-off starts over.
pub const HEALTHY: Duration = Duration::from_secs(60);

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
            last: None,
        }
    }

    /// The delay after a failure now.
    pub fn next(&mut self) -> Duration {
        self.next_at(Instant::now())
    }

    /// The delay after a failure at `now`.
    pub fn next_at(&mut self, now: Instant) -> Duration {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) > HEALTHY)
        {
            self.failures = 0;
        }
        self.last = Some(now);
        let delay = palisade_backoff::Backoff::new(self.min, self.max)
            .with_jitter(palisade_backoff::Jitter::Half)
            .delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// An object as the API server sent it: read with the schema Palisade knows, and the paths of
/// the fields that schema lacks (a newer Kubernetes').
#[derive(Clone, Debug)]
pub struct Seen<K> {
    pub object: K,
    pub unknown: Vec<FieldPath>,
}

impl<'de, K: serde::Deserialize<'de>> serde::Deserialize<'de> for Seen<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (object, unknown) = unknown::read(d)?;
        Ok(Seen { object, unknown })
    }
}

/// The API resource is `K`'s: kube-runtime lists and watches `K`'s path.
impl<K: Resource> Resource for Seen<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        self.object.meta()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.object.meta_mut()
    }
}

/// How an object of one kind becomes what the mirror keeps.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static
{
    const KIND: Kind;
    /// `namespace/name`, or a namespace's name.
    fn key(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name_any()),
            None => self.name_any(),
        }
    }
    /// What Palisade enforces of it, given the fields it holds that the schema lacks.
    fn project(&self, default_ns: &str, unknown: &[FieldPath]) -> Received;
}

impl Watched for k8s_openapi::api::core::v1::Namespace {
    const KIND: Kind = Kind::Namespace;
    fn project(&self, _: &str, unknown: &[FieldPath]) -> Received {
        Received {
            object: palisade_policy::k8s::namespace(self).map(Object::Namespace),
            unknown: unknown::ignored(Kind::Namespace, unknown),
        }
    }
}

impl Watched for k8s_openapi::api::core::v1::Pod {
    const KIND: Kind = Kind::Pod;
    fn project(&self, default_ns: &str, unknown: &[FieldPath]) -> Received {
        Received {
            object: palisade_policy::k8s::pod(self, default_ns).map(Object::Pod),
            unknown: unknown::ignored(Kind::Pod, unknown),
        }
    }
}

impl Watched for k8s_openapi::api::networking::v1::NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    fn project(&self, default_ns: &str, unknown: &[FieldPath]) -> Received {
        if unknown.is_empty() {
            return palisade_policy::k8s::network_policy(self, default_ns)
                .map(Object::NetworkPolicy)
                .into();
        }
        let mut narrowed = self.clone();
        let report = unknown::narrow_network_policy(&mut narrowed, unknown);
        Received {
            object: palisade_policy::k8s::network_policy(&narrowed, default_ns)
                .map(Object::NetworkPolicy),
            unknown: report,
        }
    }
}

/// What every watch task shares.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub config: watcher::Config,
    pub default_ns: String,
    pub backoff: Backoff,
    pub board: std::sync::Arc<Board>,
    pub metrics: Metrics,
    /// Rejected objects to report as Kubernetes Events (when enabled).
    pub events: Option<mpsc::Sender<(ObjectReference, String)>>,
}

/// Watch every `K` until the receiver is gone.
pub async fn run<K: Watched>(cx: Context, tx: mpsc::Sender<Incoming>) {
    let kind = K::KIND;
    let mut backoff = cx.backoff.clone();
    let stream = watcher::watcher(Api::<Seen<K>>::all(cx.client.clone()), cx.config.clone());
    let mut stream = std::pin::pin!(stream);
    let mut listing = true;
    let mut listed = 0usize;
    cx.board.set(&cx.metrics, kind, State::Listing, None);
    while let Some(item) = stream.next().await {
        let incoming = match item {
            Ok(Event::Init) => {
                listing = true;
                listed = 0;
                cx.board.set(&cx.metrics, kind, State::Listing, None);
                Incoming::ListStarted(kind)
            }
            Ok(Event::InitApply(o)) => {
                listed += 1;
                Incoming::Listed(kind, o.object.key(), project(&cx, &o))
            }
            Ok(Event::InitDone) => {
                listing = false;
                backoff.reset();
                cx.metrics.kube_event(kind, "listed", listed as u64);
                cx.board.event(kind);
                cx.board.set(&cx.metrics, kind, State::Watching, None);
                Incoming::ListDone(kind)
            }
            Ok(Event::Apply(o)) => {
                backoff.reset();
                let _ = cx.board.answered(&cx.metrics, kind);
                cx.metrics.kube_event(kind, "applied", 1);
                cx.board.event(kind);
                Incoming::Applied(kind, o.object.key(), project(&cx, &o))
            }
            Ok(Event::Delete(o)) => {
                backoff.reset();
                let _ = cx.board.answered(&cx.metrics, kind);
                cx.metrics.kube_event(kind, "deleted", 1);
                cx.board.event(kind);
                Incoming::Deleted(kind, o.object.key())
            }
            Err(e) => {
                cx.metrics.kube_error(kind);
                // After 410 Gone the watcher lists again, at once: the API server answers
                // (it lost the watch's history), and every moment waited is a moment stale.
                let gone = matches!(&e, watcher::Error::WatchError(s) if s.code == 410);
                if gone {
                    listing = true;
                }
                let delay = if gone { Duration::ZERO } else { backoff.next() };
                let why = error_line(&e);
                let until = std::time::Instant::now() + delay;
                warn!(
                    kind = %kind,
                    "{why}; nothing changes in force, retrying in {}",
                    humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                );
                cx.board
                    .set(&cx.metrics, kind, State::BackingOff { until }, Some(why));
                tokio::time::sleep(delay).await;
                if listing {
                    cx.board.set(&cx.metrics, kind, State::Listing, None);
                    continue;
                }
                // "Watching" only once the API server answers: the watcher resumes on its
                // own and says nothing when it has; a one-object list of this kind, beside
                // it (never delaying it), tells.
                cx.board.set(&cx.metrics, kind, State::Reconnecting, None);
                let (client, board, metrics) =
                    (cx.client.clone(), cx.board.clone(), cx.metrics.clone());
                tokio::spawn(async move {
                    let api = Api::<Seen<K>>::all(client);
                    let one = kube::api::ListParams::default().limit(1);
                    let probe = api.list(&one);
                    if tokio::time::timeout(Duration::from_secs(5), probe)
                        .await
                        .is_ok_and(|r| r.is_ok())
                        && board.answered(&metrics, kind)
                    {
                        info!(kind = %kind, "watching again from the last resourceVersion");
                    }
                });
                continue;
            }
        };
        if tx.send(incoming).await.is_err() {
            return;
        }
    }
}

/// The object projected; a rejection is also queued as an Event on it (when enabled).
fn project<K: Watched>(cx: &Context, seen: &Seen<K>) -> Received {
    let o = &seen.object;
    let received = o.project(&cx.default_ns, &seen.unknown);
    if let (Err(why), Some(events)) = (&received.object, &cx.events) {
        // A full queue drops the event: the rejection is still in introspection and metrics.
        // The version is part of the reference: an object is reported once per version
        // (a relist delivers the same version again), and each version it is rejected in.
        let mut reference = o.object_ref(&());
        reference.resource_version = o.meta().resource_version.clone();
        let _ = events.try_send((reference, why.to_string()));
    }
    received
}

/// A watcher error as one line: what failed and the API server's answer.
fn error_line(e: &watcher::Error) -> String {
    match e {
        watcher::Error::WatchError(status) if status.code == 410 => format!(
            "the watch's resourceVersion expired (410 Gone): listing again ({})",
            status.message
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let later: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(
            later[9] >= Duration::from_secs(1),
            "capped at 2 s, at least half of it"
        );
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_is_forgotten_after_a_healthy_period() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let t = Instant::now();
        for i in 0..10 {
            b.next_at(t + Duration::from_millis(i));
        }
        assert!(b.next_at(t + Duration::from_secs(1)) >= Duration::from_secs(1));
        // A failure long after the last one starts over.
        let later = t + Duration::from_secs(1) + HEALTHY + Duration::from_secs(1);
        assert!(b.next_at(later) <= Duration::from_millis(100));
    }
}
