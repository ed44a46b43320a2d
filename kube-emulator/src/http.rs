//! The HTTP side: list (paged, with continue tokens), watch (newline-delimited JSON events
//! replayed from a resourceVersion, bookmarks, `410 Gone` as an in-stream ERROR event as the
//! real API server sends it, timeouts), and the events.k8s.io endpoint the controller's
//! Recorder posts to. Faults: slow streams, dropped watches.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::store::{event_line, Resource};
use crate::Inner;

type Params = Query<HashMap<String, String>>;

pub fn router(inner: Arc<Inner>) -> Router {
    let mut app = Router::new();
    for r in Resource::ALL {
        app = app.route(
            r.path(),
            get(move |s: State<Arc<Inner>>, h: HeaderMap, q: Params| collection(s, h, q, r)),
        );
    }
    app.route(
        "/apis/events.k8s.io/v1/namespaces/{ns}/events",
        post(create_event),
    )
    .route(
        "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
        patch(patch_event),
    )
    .fallback(|| async {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the emulator does not serve this path",
        )
    })
    .with_state(inner)
}

/// A `Status` object, as the API server answers errors.
fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, Json(status_object(code, reason, message))).into_response()
}

async fn collection(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Params,
    r: Resource,
) -> Response {
    if !inner.serving.load(Ordering::SeqCst) {
        // Gone down; this connection is about to be dropped.
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "going down",
        );
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    inner
        .user_agents
        .lock()
        .expect("user agents lock")
        .push(agent.to_string());
    let query: Vec<String> = {
        let mut q: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        q.sort();
        q
    };
    inner.requests.lock().expect("requests lock").push(format!(
        "GET {}?{}",
        r.path(),
        query.join("&")
    ));
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch(inner, r, &q)
    } else {
        list(&inner, r, &q)
    }
}

fn list(inner: &Inner, r: Resource, q: &HashMap<String, String>) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let store = inner.store.lock().expect("store lock");
    // A continue token: the list's resourceVersion and the last key sent.
    let (rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key.to_string())));
            match parsed {
                Some((rv, _)) if !store.replayable(r, rv) => {
                    return status(
                        StatusCode::GONE,
                        "Expired",
                        "the provided continue parameter is too old to display a consistent list result",
                    )
                }
                Some((rv, key)) => (rv, Some(key)),
                None => return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid continue token"),
            }
        }
        None => (store.resource_version(), None),
    };
    let page = store.page(r, after.as_deref(), limit);
    let more =
        page.len() == limit && store.page(r, page.last().map(|(k, _)| k.as_str()), 1).len() == 1;
    drop(store);
    let next = match (more, page.last()) {
        (true, Some((k, _))) => format!("{rv}:{k}"),
        _ => String::new(),
    };
    // Assembled from the stored encodings, without decoding them.
    let mut body = serde_json::to_vec(&json!({
        "kind": format!("{}List", r.kind()),
        "apiVersion": r.api_version(),
        "metadata": {"resourceVersion": rv.to_string(), "continue": next},
    }))
    .expect("JSON values encode");
    body.pop(); // the closing brace
    body.extend_from_slice(b",\"items\":[");
    for (i, (_, object)) in page.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(object);
    }
    body.extend_from_slice(b"]}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn watch(inner: Arc<Inner>, r: Resource, q: &HashMap<String, String>) -> Response {
    let from = q
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let started = {
        let store = inner.store.lock().expect("store lock");
        if from != 0 && !store.replayable(r, from) {
            None
        } else if from == 0 {
            Some((Vec::new(), store.watch_from(r, u64::MAX).1))
        } else {
            Some(store.watch_from(r, from))
        }
    };
    let Some((backlog, feed)) = started else {
        // As the API server does: 200, then the error as the stream's only event.
        let message = format!("too old resource version: {from}");
        let line = event_line(
            "ERROR",
            &status_object(StatusCode::GONE, "Expired", &message),
        );
        inner.watches.fetch_add(1, Ordering::Relaxed);
        return ([(header::CONTENT_TYPE, "application/json")], line).into_response();
    };
    inner.watches.fetch_add(1, Ordering::Relaxed);
    // Subscribed before the task starts: a drop right after the watch began is not missed.
    let mut drops = inner.drops.subscribe();
    drops.mark_unchanged();
    let inner2 = inner.clone();
    tokio::spawn(async move {
        let stream = Stream {
            inner: inner2,
            r,
            tx,
            bookmarks,
        };
        stream.run(backlog, feed, drops, timeout).await;
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

/// One open watch.
struct Stream {
    inner: Arc<Inner>,
    r: Resource,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    bookmarks: bool,
}

impl Stream {
    /// Send a line after the configured delay; whether the client still listens.
    async fn send(&self, line: Bytes) -> bool {
        let delay = self.inner.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        // Checked after the line was made: a line made before `go_down` may still go out,
        // nothing made after it does.
        self.inner.serving.load(Ordering::SeqCst) && self.tx.send(Ok(line)).await.is_ok()
    }

    /// End the response mid-stream with an error (the client sees the connection break).
    async fn abort(&self) {
        let _ = self
            .tx
            .send(Err(std::io::Error::other("dropped by the emulator")))
            .await;
    }

    async fn run(
        self,
        backlog: Vec<crate::store::Change>,
        mut feed: broadcast::Receiver<crate::store::Change>,
        mut drops: tokio::sync::watch::Receiver<u64>,
        timeout: Duration,
    ) {
        for change in backlog {
            if !self.send(change.line).await {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let every = Duration::from_millis(self.inner.bookmark_ms.load(Ordering::Relaxed).max(1));
        let mut bookmark = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = drops.changed() => return self.abort().await,
                _ = bookmark.tick(), if self.bookmarks => {
                    let rv = {
                        let store = self.inner.store.lock().expect("store lock");
                        // Only when every change recorded so far was sent.
                        feed.is_empty().then(|| store.resource_version())
                    };
                    if let Some(rv) = rv {
                        let object = json!({
                            "kind": self.r.kind(), "apiVersion": self.r.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()},
                        });
                        if !self.send(event_line("BOOKMARK", &object)).await {
                            return;
                        }
                        self.inner.bookmarks[self.r as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
                change = feed.recv() => match change {
                    Ok(change) => if !self.send(change.line).await { return },
                    // Too slow to keep up: end the watch; the client resumes from its position.
                    Err(broadcast::error::RecvError::Lagged(_)) => return self.abort().await,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

async fn create_event(
    State(inner): State<Arc<Inner>>,
    Path(ns): Path<String>,
    Json(mut event): Json<Value>,
) -> Response {
    let name = event["metadata"]["name"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("event-{}", inner.events.lock().expect("events lock").len()));
    event["metadata"]["name"] = name.into();
    event["metadata"]["namespace"] = ns.into();
    event["metadata"]["resourceVersion"] = "1".into();
    inner
        .events
        .lock()
        .expect("events lock")
        .push(event.clone());
    (StatusCode::CREATED, Json(event)).into_response()
}

async fn patch_event(
    State(inner): State<Arc<Inner>>,
    Path((ns, name)): Path<(String, String)>,
    Json(change): Json<Value>,
) -> Response {
    let mut events = inner.events.lock().expect("events lock");
    let Some(event) = events.iter_mut().rev().find(|e| {
        e["metadata"]["name"] == name.as_str() && e["metadata"]["namespace"] == ns.as_str()
    }) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such event");
    };
    if let (Some(target), Some(fields)) = (event.as_object_mut(), change.as_object()) {
        for (k, v) in fields {
            target.insert(k.clone(), v.clone());
        }
    }
    (StatusCode::OK, Json(event.clone())).into_response()
}
