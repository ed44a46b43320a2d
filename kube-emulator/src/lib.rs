//! A Kubernetes API server emulator for tests and load tests, over real HTTP on loopback.
//!
//! Data comes from the test: it creates, replaces and deletes Namespaces, Pods and
//! NetworkPolicies ([`Emulator::apply`], [`Emulator::delete`]) in an in-memory store with one
//! global resourceVersion, as etcd has. It goes out to any Kubernetes client over HTTP/1.1 as
//! the API server serves it: paged lists with continue tokens, watches from a resourceVersion
//! (newline-delimited JSON events replayed from a bounded history, bookmarks, `timeoutSeconds`),
//! and `410 Gone` for a resourceVersion older than the history (as an ERROR event in a 200
//! response, as the real server does). The client is given a kubeconfig
//! ([`Emulator::write_kubeconfig`]) and needs to know nothing else. Faults for tests: compact
//! the history, drop every watch mid-stream, slow every stream down, refuse connections for a
//! while. Events posted to `events.k8s.io/v1` are kept for tests to read.

mod http;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

pub use store::Resource;
use store::Store;

/// State shared by the HTTP handlers and the test's handle.
pub(crate) struct Inner {
    pub(crate) store: Mutex<Store>,
    /// False from `go_down` until `come_up`: set before the connections are cancelled (which
    /// happens on other tasks, later), so nothing changed after `go_down` returned reaches a
    /// client through a connection not yet closed.
    pub(crate) serving: AtomicBool,
    /// Delay before each line of a watch (a slow stream), in milliseconds.
    pub(crate) delay_ms: AtomicU64,
    /// Bookmarks are sent this often on watches that ask for them, in milliseconds.
    pub(crate) bookmark_ms: AtomicU64,
    /// Bumped to drop every open watch.
    pub(crate) drops: tokio::sync::watch::Sender<u64>,
    /// Watches started (410 answers included).
    pub(crate) watches: AtomicU64,
    /// Bookmarks sent, per resource (in `Resource::ALL` order).
    pub(crate) bookmarks: [AtomicU64; 3],
    /// Requests received, as `GET path?sorted&query`.
    pub(crate) requests: Mutex<Vec<String>>,
    /// The `User-Agent` of each list and watch request ("" when none), in order.
    pub(crate) user_agents: Mutex<Vec<String>>,
    /// Events posted by clients.
    pub(crate) events: Mutex<Vec<Value>>,
}

/// A running emulator; stops when dropped.
pub struct Emulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    /// Cancelled to refuse connections (the listener closes and open connections drop).
    up: Mutex<Option<CancellationToken>>,
}

/// How the emulator behaves at start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept per resource for watches to replay (older resourceVersions get 410).
    pub history: usize,
    /// How often bookmarks are sent.
    pub bookmark_every: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            history: 100_000,
            bookmark_every: Duration::from_secs(1),
        }
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn serve(listener: TcpListener, app: axum::Router, up: CancellationToken) {
    use hyper_util::rt::TokioIo;
    use tower_service::Service;
    loop {
        let stream = tokio::select! {
            _ = up.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("emulator: accept failed: {e}");
                    continue;
                }
            },
        };
        let app = app.clone();
        let up = up.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| app.clone().call(request));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                // Going down: the connection is dropped, mid-request or not.
                _ = up.cancelled() => {}
            }
        });
    }
}

impl Emulator {
    /// Serve on a free loopback port.
    pub async fn start(options: Options) -> std::io::Result<Emulator> {
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new(options.history)),
            serving: AtomicBool::new(true),
            delay_ms: AtomicU64::new(0),
            bookmark_ms: AtomicU64::new(options.bookmark_every.as_millis() as u64),
            drops: tokio::sync::watch::channel(0).0,
            watches: AtomicU64::new(0),
            bookmarks: Default::default(),
            requests: Mutex::new(Vec::new()),
            user_agents: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
        });
        let l = listener(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = l.local_addr()?;
        let emulator = Emulator {
            inner,
            addr,
            up: Mutex::new(None),
        };
        emulator.serve_on(l);
        Ok(emulator)
    }

    fn serve_on(&self, l: TcpListener) {
        let token = CancellationToken::new();
        self.inner.serving.store(true, Ordering::SeqCst);
        tokio::spawn(serve(l, http::router(self.inner.clone()), token.clone()));
        *self.up.lock().expect("up lock") = Some(token);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this emulator (plain HTTP; a throwaway CA is named because clients
    /// build a TLS configuration even for http URLs).
    pub fn kubeconfig(&self) -> String {
        use base64::Engine;
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate")
            .cert
            .pem();
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: emulator\n  user:\n    token: emulator\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\ncurrent-context: emulator\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Create or replace an object (JSON as the API returns it; kind and apiVersion are set).
    /// Returns its resourceVersion.
    pub fn apply(&self, r: Resource, object: Value) -> u64 {
        self.inner
            .store
            .lock()
            .expect("store lock")
            .apply(r, object)
            .expect("objects given to the emulator have a name")
    }

    /// Delete the object at `key` (`namespace/name`, or a namespace's name).
    pub fn delete(&self, r: Resource, key: &str) -> Option<u64> {
        self.inner.store.lock().expect("store lock").delete(r, key)
    }

    /// Every object of `r`, as served (with kind, apiVersion and resourceVersion).
    pub fn objects(&self, r: Resource) -> Vec<Value> {
        self.inner.store.lock().expect("store lock").objects(r)
    }

    pub fn len(&self, r: Resource) -> usize {
        self.inner.store.lock().expect("store lock").len(r)
    }

    pub fn is_empty(&self) -> bool {
        self.inner.store.lock().expect("store lock").is_empty()
    }

    pub fn resource_version(&self) -> u64 {
        self.inner
            .store
            .lock()
            .expect("store lock")
            .resource_version()
    }

    /// Forget the change history: every watch that resumes from before now gets `410 Gone`.
    pub fn compact(&self) {
        self.inner.store.lock().expect("store lock").compact();
    }

    /// Break every open watch mid-stream (clients resume from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.inner.drops.send_modify(|g| *g += 1);
    }

    /// Delay every watch line by `delay` (zero: full speed).
    pub fn slow_streams(&self, delay: Duration) {
        self.inner
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Watches started so far (including those answered with 410).
    pub fn watches_started(&self) -> u64 {
        self.inner.watches.load(Ordering::Relaxed)
    }

    /// Bookmarks sent so far on watches of `r`.
    pub fn bookmarks_sent(&self, r: Resource) -> u64 {
        self.inner.bookmarks[r as usize].load(Ordering::Relaxed)
    }

    /// Requests received so far, as `GET path?query` with the parameters sorted.
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().expect("requests lock").clone()
    }

    /// The `User-Agent` each list and watch request carried ("" when none), in order.
    pub fn user_agents(&self) -> Vec<String> {
        self.inner
            .user_agents
            .lock()
            .expect("user agents lock")
            .clone()
    }

    /// Events clients posted (events.k8s.io/v1), with their later patches merged.
    pub fn events(&self) -> Vec<Value> {
        self.inner.events.lock().expect("events lock").clone()
    }

    /// Refuse connections: the listener closes and every open connection drops.
    pub fn go_down(&self) {
        self.inner.serving.store(false, Ordering::SeqCst);
        if let Some(token) = self.up.lock().expect("up lock").take() {
            token.cancel();
        }
    }

    /// Serve again on the same address (waiting, a few seconds at most, for the old listener
    /// to be gone).
    pub async fn come_up(&self) -> std::io::Result<()> {
        if self.up.lock().expect("up lock").is_some() {
            return Ok(());
        }
        let mut tries = 0;
        let l = loop {
            match listener(self.addr) {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 500 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.serve_on(l);
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.go_down();
    }
}
