//! A Raft group of controller replicas as processes of the real `palisade-controller` binary
//! on loopback with mTLS (certificates under `DIR/certs`), each with its own state directory
//! and log file under `DIR`: started, SIGKILLed, stopped gracefully and restarted from their
//! data directories, asked who leads, scraped for metrics. Optionally each replica sits behind
//! a TCP [`Proxy`] that is its address for agents, peers and operators, so the load test can
//! partition it by closing that listener. Used by `failover` and `cluster`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisadectl::remote::Conn;

use crate::compile::peak_rss_of;
use crate::proxy::Proxy;
use palisadectl::output::Output;

pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET `path` from `addr` (HTTP/1.0); the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, b)| b.to_string()))
}

/// The sum of the samples of `name` (a full series name with labels, or a prefix ending in
/// `{`) in a Prometheus text page.
pub fn sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until `done` holds (checked every 10 ms), at most `limit`; what it took.
pub async fn until(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done() {
        anyhow::ensure!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

/// The directory of the running executable (where cargo puts the other binaries).
pub fn beside_executable() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Mint the CA and certificates a group on loopback needs into `dir`: one per replica id,
/// one per node's agent, and the operator `loadtest`.
pub fn mint_certs(dir: &Path, nodes: &[String], ids: &[u64]) -> anyhow::Result<()> {
    palisadectl::certs::mint(&palisadectl::certs::Request {
        dir,
        hosts: &["127.0.0.1".to_string()],
        nodes,
        operators: &["loadtest".to_string()],
        replicas: ids,
        valid_for: palisadectl::certs::DEFAULT_VALIDITY,
        renew: false,
    })?;
    Ok(())
}

/// Connection limits for a replica serving `agents` agents from one address (the load test).
pub fn connection_args(agents: usize) -> Vec<OsString> {
    let per_ip = agents + 64;
    vec![
        "--max-connections-per-ip".into(),
        per_ip.to_string().into(),
        "--max-connections".into(),
        (per_ip + 1024).to_string().into(),
    ]
}

/// One replica process.
struct Proc {
    child: Option<Child>,
    /// Where the process listens.
    port: u16,
    metrics: u16,
    /// In front of `port` when the group was made with proxies: the replica's address.
    proxy: Option<Proxy>,
}

/// How to start the group.
pub struct GroupOptions {
    /// Holds `certs/` (minted for every id) and gets each replica's state and log.
    pub dir: PathBuf,
    /// Directory holding `palisade-controller`.
    pub bin: PathBuf,
    pub ids: Vec<u64>,
    /// Arguments every replica gets (its source, limits, ...).
    pub args: Vec<OsString>,
    /// Arguments for one replica only (a planted fault).
    pub extra: BTreeMap<u64, Vec<OsString>>,
    /// Put a TCP proxy in front of every replica (for partitions).
    pub proxies: bool,
}

pub struct Replicas {
    o: GroupOptions,
    procs: BTreeMap<u64, Proc>,
    pub peak_rss: BTreeMap<u64, u64>,
}

impl Replicas {
    /// Ports for every replica (and proxies when asked); no process started yet.
    pub async fn new(o: GroupOptions) -> anyhow::Result<Replicas> {
        let controller = o.bin.join("palisade-controller");
        anyhow::ensure!(
            controller.exists(),
            "no palisade-controller in {} (cargo build --release --bins, or --bin-dir)",
            o.bin.display()
        );
        let mut procs = BTreeMap::new();
        for id in &o.ids {
            let port = free_port()?;
            let proxy = if o.proxies {
                Some(Proxy::start(format!("127.0.0.1:{port}")).await?)
            } else {
                None
            };
            procs.insert(
                *id,
                Proc {
                    child: None,
                    port,
                    metrics: free_port()?,
                    proxy,
                },
            );
        }
        Ok(Replicas {
            o,
            procs,
            peak_rss: BTreeMap::new(),
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.procs.keys().copied().collect()
    }

    /// The replica's address for agents, peers and operators (its proxy's, when it has one).
    pub fn addr(&self, id: u64) -> String {
        let p = &self.procs[&id];
        match &p.proxy {
            Some(proxy) => proxy.addr().to_string(),
            None => format!("127.0.0.1:{}", p.port),
        }
    }

    /// Every replica's address, comma-separated (what agents are given).
    pub fn addrs(&self) -> String {
        self.ids()
            .iter()
            .map(|id| self.addr(*id))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.o.dir.join(format!("replica-{id}.log"))
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let peers: Vec<String> = self
            .ids()
            .iter()
            .map(|i| format!("{i}={}", self.addr(*i)))
            .collect();
        let certs = self.o.dir.join("certs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let p = &self.procs[&id];
        let child = Command::new(self.o.bin.join("palisade-controller"))
            .args(["--id", &id.to_string(), "--peers", &peers.join(",")])
            // A new group on first start; ignored once a directory holds it.
            .arg("--bootstrap")
            .args(["--listen", &format!("127.0.0.1:{}", p.port)])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", p.metrics)])
            .arg("--state-dir")
            .arg(self.o.dir.join(format!("state-{id}")))
            .args(palisadectl::certs::replica_flags(&certs, id))
            .args(&self.o.args)
            .args(self.o.extra.get(&id).into_iter().flatten())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.procs.get_mut(&id).expect("known").child = Some(child);
        Ok(())
    }

    /// Arguments replica `id` alone gets from its next start on (a planted fault).
    pub fn set_extra(&mut self, id: u64, args: Vec<OsString>) {
        self.o.extra.insert(id, args);
    }

    /// SIGKILL (`graceful`: SIGTERM, then up to 30 s before SIGKILL), and wait for it.
    pub fn kill(&mut self, id: u64, graceful: bool) {
        if let Some(c) = self.take(id) {
            stop(c, graceful);
        }
    }

    /// The replica's process, to stop outside any lock (its peak RSS noted).
    pub fn take(&mut self, id: u64) -> Option<Child> {
        let c = self.procs.get_mut(&id).and_then(|p| p.child.take())?;
        self.peak_rss.insert(id, peak_rss_of(c.id()));
        Some(c)
    }

    /// Close or reopen the replica's proxy listener (dropping its open connections when
    /// closing). False when the group has no proxies.
    pub fn partition(&self, id: u64, cut: bool) -> bool {
        match &self.procs[&id].proxy {
            Some(p) => {
                p.set_cut(cut);
                true
            }
            None => false,
        }
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs[&id].child.as_ref().map(Child::id)
    }

    /// What async work needs, without holding the group.
    pub fn handle(&self) -> Handle {
        Handle {
            addrs: self
                .ids()
                .into_iter()
                .map(|id| (id, self.addr(id)))
                .collect(),
            metrics: self
                .ids()
                .into_iter()
                .map(|id| (id, self.metrics_addr(id)))
                .collect(),
            alive: self.alive(),
            certs: self.o.dir.join("certs"),
        }
    }

    pub fn conn(&self, id: u64) -> Conn {
        self.handle().conn(id)
    }

    pub fn metrics_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.procs[&id].metrics)
    }

    pub fn metrics(&self, id: u64) -> String {
        self.handle().metrics(id)
    }

    pub fn alive(&self) -> Vec<u64> {
        self.procs
            .iter()
            .filter(|(_, p)| p.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The leader replica `ask` knows, if any.
    pub async fn leader_known_to(&self, ask: u64) -> Option<u64> {
        self.handle().leader_known_to(ask).await
    }

    /// Record every live replica's peak RSS so far.
    pub fn note_peak_rss(&mut self) {
        for id in self.alive() {
            if let Some(pid) = self.pid(id) {
                self.peak_rss.insert(id, peak_rss_of(pid));
            }
        }
    }

    /// The last `n` lines of a replica's log (for errors).
    pub fn tail(&self, id: u64, n: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// SIGKILL `c` (`graceful`: SIGTERM first, then up to 30 s for it to end) and reap it.
pub fn stop(mut c: Child, graceful: bool) {
    if graceful {
        // SAFETY: a plain signal to a child this process started and has not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// [`stop`] off the async threads.
pub async fn stop_child(c: Child, graceful: bool) {
    let _ = tokio::task::spawn_blocking(move || stop(c, graceful)).await;
}

/// The addresses of a group, for async work that must not hold it.
#[derive(Clone)]
pub struct Handle {
    addrs: BTreeMap<u64, String>,
    metrics: BTreeMap<u64, String>,
    alive: Vec<u64>,
    certs: PathBuf,
}

impl Handle {
    pub fn ids(&self) -> Vec<u64> {
        self.addrs.keys().copied().collect()
    }

    /// Replicas running when the handle was taken.
    pub fn alive(&self) -> &[u64] {
        &self.alive
    }

    pub fn conn(&self, id: u64) -> Conn {
        Conn::operator(self.addrs[&id].clone(), &self.certs, "loadtest")
    }

    pub fn metrics(&self, id: u64) -> String {
        http_get(&self.metrics[&id], "/metrics").unwrap_or_default()
    }

    /// The leader replica `ask` knows, if any.
    pub async fn leader_known_to(&self, ask: u64) -> Option<u64> {
        let text = palisadectl::store::replicas(&self.conn(ask), Output::Json)
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["leader"].as_u64().filter(|l| *l != 0)
    }

    /// The leader as some live replica knows it and it confirms itself, waiting up to
    /// `limit`.
    pub async fn leader(&self, limit: Duration) -> anyhow::Result<u64> {
        let asked = Instant::now();
        loop {
            for id in &self.alive {
                if let Some(l) = self.leader_known_to(*id).await {
                    let confirmed = l == *id
                        || (self.alive.contains(&l) && self.leader_known_to(l).await == Some(l));
                    if confirmed {
                        return Ok(l);
                    }
                }
            }
            anyhow::ensure!(asked.elapsed() < limit, "no leader within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for id in self.alive() {
            self.kill(id, false);
        }
    }
}
