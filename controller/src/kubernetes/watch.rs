//! One task per kind: a kube-runtime watcher (list, then watch from the list's
//! resourceVersion; relist after `410 Gone`), each object projected at once to what Palisade
//! uses, sent to the source's loop. Errors never end the task: it backs off with jitter
//! (growing until a list completes or an event arrives), says so in the status board, the
//! metrics and the log, and lets the watcher retry.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use palisade_policy::k8s::Kind;
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
/// `min · 2^failures`, capped at `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    pub fn next(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// How an object of one kind becomes what the mirror keeps.
pub trait Watched: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + 'static
where
    Self: serde::de::DeserializeOwned,
{
    const KIND: Kind;
    /// `namespace/name`, or a namespace's name.
    fn key(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name_any()),
            None => self.name_any(),
        }
    }
    fn project(&self, default_ns: &str) -> Received;
}

impl Watched for k8s_openapi::api::core::v1::Namespace {
    const KIND: Kind = Kind::Namespace;
    fn project(&self, _: &str) -> Received {
        palisade_policy::k8s::namespace(self).map(palisade_policy::manifest::Object::Namespace)
    }
}

impl Watched for k8s_openapi::api::core::v1::Pod {
    const KIND: Kind = Kind::Pod;
    fn project(&self, default_ns: &str) -> Received {
        palisade_policy::k8s::pod(self, default_ns).map(palisade_policy::manifest::Object::Pod)
    }
}

impl Watched for k8s_openapi::api::networking::v1::NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    fn project(&self, default_ns: &str) -> Received {
        palisade_policy::k8s::network_policy(self, default_ns)
            .map(palisade_policy::manifest::Object::NetworkPolicy)
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
pub async fn run<K: Watched + serde::de::DeserializeOwned>(
    cx: Context,
    tx: mpsc::Sender<Incoming>,
) {
    let kind = K::KIND;
    let mut backoff = cx.backoff.clone();
    let stream = watcher::watcher(Api::<K>::all(cx.client.clone()), cx.config.clone());
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
                Incoming::Listed(kind, o.key(), project(&cx, &o))
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
                cx.metrics.kube_event(kind, "applied", 1);
                cx.board.event(kind);
                Incoming::Applied(kind, o.key(), project(&cx, &o))
            }
            Ok(Event::Delete(o)) => {
                backoff.reset();
                cx.metrics.kube_event(kind, "deleted", 1);
                cx.board.event(kind);
                Incoming::Deleted(kind, o.key())
            }
            Err(e) => {
                cx.metrics.kube_error(kind);
                // After 410 Gone the watcher lists again.
                if matches!(&e, watcher::Error::WatchError(s) if s.code == 410) {
                    listing = true;
                }
                let delay = backoff.next();
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
                let state = if listing {
                    State::Listing
                } else {
                    State::Watching
                };
                cx.board.set(&cx.metrics, kind, state, None);
                if !listing {
                    info!(kind = %kind, "watching again from the last resourceVersion");
                }
                continue;
            }
        };
        if tx.send(incoming).await.is_err() {
            return;
        }
    }
}

/// The object projected; a rejection is also queued as an Event on it (when enabled).
fn project<K: Watched>(cx: &Context, o: &K) -> Received {
    let received = o.project(&cx.default_ns);
    if let (Err(why), Some(events)) = (&received, &cx.events) {
        // A full queue drops the event: the rejection is still in introspection and metrics.
        let _ = events.try_send((o.object_ref(&()), why.to_string()));
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
}
