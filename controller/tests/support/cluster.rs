//! A controller and agents in one test process, over real TCP sockets with mTLS: the real
//! server and the real agent client, with the in-memory dataplane.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palisade_agent::{
    Agent, AgentConfig, Capacities, ClientTls, MemoryDataplane, Phase, StateStore, Status,
};
use palisade_controller::hub::Hub;
use palisade_controller::server::{self, Config, Running, TlsFiles};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(20);

struct Controller {
    running: Running,
    shutdown: CancellationToken,
}

pub struct AgentHandle {
    pub status: watch::Receiver<Status>,
    shutdown: CancellationToken,
    join: JoinHandle<MemoryDataplane>,
}

/// How to run one agent.
#[derive(Clone, Default)]
pub struct AgentOpts {
    /// Use another node's certificate (to test authorization).
    pub cert_of: Option<String>,
    pub capacities: Capacities,
    pub delay: Option<Duration>,
}

pub struct Cluster {
    /// Applied to the controller's configuration at every start.
    tweak: Box<dyn Fn(&mut Config) + Send + Sync>,
    pub dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    controller: Option<Controller>,
    pub agents: BTreeMap<String, AgentHandle>,
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

impl Cluster {
    /// Manifests written, certificates minted for `nodes` (and operator `admin`), controller
    /// started.
    pub async fn start(manifests: &[(&str, String)], nodes: &[&str]) -> Cluster {
        Cluster::start_with(manifests, nodes, |_| {}).await
    }

    /// The same, with the controller's configuration changed by `tweak`.
    pub async fn start_with(
        manifests: &[(&str, String)],
        nodes: &[&str],
        tweak: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        for (name, text) in manifests {
            std::fs::write(dir.path().join("manifests").join(name), text).unwrap();
        }
        let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        palisadectl::certs::mint(&palisadectl::certs::Request {
            dir: &dir.path().join("certs"),
            hosts: &["127.0.0.1".to_string(), "localhost".to_string()],
            nodes: &nodes,
            operators: &["admin".to_string()],
            replicas: &[],
            valid_for: palisadectl::certs::DEFAULT_VALIDITY,
            renew: false,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let mut c = Cluster {
            tweak: Box::new(tweak),
            dir,
            addr,
            metrics_addr,
            controller: None,
            agents: BTreeMap::new(),
        };
        c.start_controller_on(listener, Some(metrics)).await;
        c
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn config(&self) -> Config {
        let mut config = Config {
            state_dir: Some(self.path("controller")),
            tls: Some(TlsFiles {
                ca: self.path("certs/ca.pem"),
                cert: self.path("certs/controller.pem"),
                key: self.path("certs/controller-key.pem"),
            }),
            keepalive: Duration::from_secs(2),
            rescan: Duration::from_secs(5),
            debounce: Duration::from_millis(20),
            ..Config::new(self.path("manifests"))
        };
        (self.tweak)(&mut config);
        config
    }

    async fn start_controller_on(
        &mut self,
        listener: tokio::net::TcpListener,
        metrics: Option<tokio::net::TcpListener>,
    ) {
        let shutdown = CancellationToken::new();
        let running = server::start(self.config(), listener, metrics, shutdown.clone())
            .await
            .unwrap();
        self.controller = Some(Controller { running, shutdown });
    }

    /// Start the controller again on the same address and state directory.
    pub async fn restart_controller(&mut self) {
        self.stop_controller().await;
        let mut listener = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.start_controller_on(listener.expect("the controller's port is free again"), None)
            .await;
    }

    pub async fn stop_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            c.shutdown.cancel();
            tokio::time::timeout(WAIT, c.running.wait())
                .await
                .expect("controller stops")
                .unwrap();
        }
    }

    /// Ask the replica's apply thread about its applied state (this thread waits: tests
    /// only).
    pub fn state<R: Send + 'static>(
        &self,
        f: impl FnOnce(&palisade_controller::applied::State) -> R + Send + 'static,
    ) -> R {
        self.hub().ask_blocking(f).expect("the replica runs")
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self
            .controller
            .as_ref()
            .expect("controller running")
            .running
            .hub
    }

    /// What the running controller's sources report.
    pub fn reports(&self) -> &Arc<palisade_controller::reports::Reports> {
        &self
            .controller
            .as_ref()
            .expect("controller running")
            .running
            .reports
    }

    /// The value of one metric line (`name{labels} value`) of the running controller, 0 when
    /// absent.
    pub fn metric(&self, line_start: &str) -> f64 {
        self.hub()
            .metrics
            .render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The manifest source's health, as /readyz reports it.
    pub fn source_health(&self) -> palisade_controller::source::Health {
        self.controller
            .as_ref()
            .expect("controller running")
            .running
            .source_health
            .borrow()
            .clone()
    }

    pub fn tls_of(&self, node: &str) -> ClientTls {
        ClientTls {
            ca: read(self.path("certs/ca.pem")),
            cert: read(self.path(&format!("certs/node-{node}.pem"))),
            key: read(self.path(&format!("certs/node-{node}-key.pem"))),
            domain: None,
        }
    }

    pub fn start_agent(&mut self, node: &str, opts: AgentOpts) {
        let cert_node = opts.cert_of.clone().unwrap_or_else(|| node.to_string());
        let config = AgentConfig {
            tls: Some(self.tls_of(&cert_node)),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            ..AgentConfig::new(node, &self.addr.to_string())
        };
        let mut dp = MemoryDataplane::new(opts.capacities);
        if let Some(d) = opts.delay {
            dp = dp.with_delay(d);
        }
        let store = StateStore::open(&self.path(&format!("agents/{node}"))).unwrap();
        let agent = Agent::new(config, dp, store).unwrap();
        let status = agent.status();
        let shutdown = CancellationToken::new();
        let join = tokio::spawn(agent.run(shutdown.clone()));
        self.agents.insert(
            node.to_string(),
            AgentHandle {
                status,
                shutdown,
                join,
            },
        );
    }

    pub async fn stop_agent(&mut self, node: &str) -> MemoryDataplane {
        let a = self.agents.remove(node).expect("agent running");
        a.shutdown.cancel();
        tokio::time::timeout(WAIT, a.join)
            .await
            .expect("agent stops")
            .unwrap()
    }

    /// Connection settings for `palisadectl`'s client with the operator certificate.
    pub fn operator(&self) -> palisadectl::remote::Conn {
        palisadectl::remote::Conn {
            controller: self.addr.to_string(),
            ca: Some(self.path("certs/ca.pem")),
            cert: Some(self.path("certs/operator-admin.pem")),
            key: Some(self.path("certs/operator-admin-key.pem")),
            server_name: None,
            insecure: false,
        }
    }

    /// GET `path` from the metrics listener.
    pub async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    pub fn status(&self, node: &str) -> Status {
        self.agents[node].status.borrow().clone()
    }

    /// Write a manifest the way editors do: a temporary file renamed over the old one.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.path("manifests").join(name);
        palisade_files::atomic::write(&path, text.as_bytes()).unwrap();
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path("manifests").join(name)).unwrap();
    }

    /// Wait until the controller's revision passes `after` (a change was picked up).
    pub async fn next_revision(&self, after: u64) -> u64 {
        let mut rx = self.hub().revisions();
        tokio::time::timeout(WAIT, rx.wait_for(|r| *r > after))
            .await
            .expect("a new revision")
            .unwrap();
        let r = *rx.borrow();
        r
    }

    pub fn revision(&self) -> u64 {
        self.hub().view().revision()
    }

    /// Wait until `revision` is realized.
    pub async fn realized(&self, revision: u64) {
        let mut rx = self.hub().realized();
        tokio::time::timeout(WAIT, rx.wait_for(|r| *r >= revision))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "revision {revision} realized in time; lagging: {:?}",
                    self.hub().progress(|p| p.rollout().lagging(revision))
                )
            })
            .unwrap();
    }

    /// Wait until `node`'s agent reaches `pred`.
    pub async fn agent_until(
        &self,
        node: &str,
        what: &str,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let mut rx = self.agents[node].status.clone();
        let s = tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s)))
            .await
            .unwrap_or_else(|_| panic!("agent {node}: {what}; status {:?}", self.status(node)))
            .unwrap()
            .clone();
        s
    }

    /// Wait until every running agent is synced at its node's desired version and digest,
    /// and the controller has recorded its ack.
    pub async fn all_in_sync(&self) {
        let nodes: Vec<String> = self.agents.keys().cloned().collect();
        for n in nodes {
            self.in_sync(&n).await;
        }
    }

    /// Wait until `node`'s agent holds the node's desired version and the controller knows it.
    pub async fn in_sync(&self, node: &str) {
        let (version, digest) = self.hub().view().desired(node);
        self.agent_until(node, "in sync", |s| {
            s.phase == Phase::Synced && s.version == version && s.digest == digest
        })
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let acked = self.hub().progress(|p| {
                p.rollout()
                    .node(node)
                    .map(|r| (r.acked_version, r.acked_digest))
            });
            if acked == Some((version, Some(digest)))
                || (version == 0 && acked.is_none_or(|a| a.0 == 0))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller never recorded {node}'s ack of {version}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn shutdown(mut self) {
        let nodes: Vec<String> = self.agents.keys().cloned().collect();
        for n in nodes {
            self.stop_agent(&n).await;
        }
        self.stop_controller().await;
    }
}

/// A pod manifest.
pub fn pod(ns: &str, name: &str, app: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {ip}}}\n"
    )
}

/// `target` pods accept TCP `port` from `from` pods of namespace `ns`.
pub fn allow(ns: &str, name: &str, target: &str, from: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: {target}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: {from}}}}}}}]\n    ports: [{{port: {port}}}]\n"
    )
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// A controller over namespace `shop` (web on n1, api on n2, db on n3; api takes web's
/// traffic, db api's) with agents on n1 and n2, in sync.
pub async fn shop() -> Cluster {
    let manifests = vec![(
        "app.yaml",
        [
            pod("shop", "web", "web", "n1", "10.0.0.1"),
            pod("shop", "api", "api", "n2", "10.0.0.2"),
            pod("shop", "db", "db", "n3", "10.0.0.3"),
            allow("shop", "api", "api", "web", 8080),
            allow("shop", "db", "db", "api", 5432),
        ]
        .join("---\n"),
    )];
    let mut c = Cluster::start(&manifests, &["n1", "n2", "n3"]).await;
    for n in ["n1", "n2"] {
        c.start_agent(n, AgentOpts::default());
    }
    c.in_sync("n1").await;
    c.in_sync("n2").await;
    c
}
