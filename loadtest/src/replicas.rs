//! A Raft group of controller replicas as processes of the real `palisade-controller` binary
//! on loopback with mTLS (certificates under `DIR/certs`), each with its own state directory
//! and log file under `DIR`, started, killed and stopped by `palisade_procs` (the one kit the
//! lab and the controller's tests use too). Optionally each replica sits behind a TCP
//! [`Proxy`] that is its address for agents, peers and operators, so the load test can
//! partition it by closing that listener; peak RSS is noted when a replica stops. Used by
//! `failover` and `cluster`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use palisade_procs::{Group, Member, Rule, Security, Spec, Start};
use palisadectl::remote::Conn;

use crate::compile::peak_rss_of;
use crate::proxy::Proxy;

pub use palisade_procs::{beside_executable, http_get, sum, Handle};

/// How long a graceful stop waits before SIGKILL.
const GRACE: Duration = Duration::from_secs(30);

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

/// The leader as some live replica knows it and it confirms itself, waiting up to `limit`.
pub async fn leader(handle: &Handle, limit: Duration) -> anyhow::Result<u64> {
    Ok(handle
        .leader(Rule::Confirmed, handle.alive(), limit)
        .await?)
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
    group: Group,
    /// In front of each replica when the group was made with proxies: its address.
    proxies: BTreeMap<u64, Proxy>,
    extra: BTreeMap<u64, Vec<OsString>>,
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
        let mut group = Group::new(Spec {
            bin: controller,
            security: Security::Mtls {
                certs: o.dir.join("certs"),
                operator: "loadtest".into(),
            },
            args: o.args,
            log_filter: "info".into(),
        });
        let mut proxies = BTreeMap::new();
        for id in &o.ids {
            let mut member = Member::loopback(&o.dir, *id)?;
            if o.proxies {
                let proxy = Proxy::start(member.listen.clone()).await?;
                member.reached = proxy.addr().to_string();
                proxies.insert(*id, proxy);
            }
            group.add(*id, member);
        }
        Ok(Replicas {
            group,
            proxies,
            extra: o.extra,
            peak_rss: BTreeMap::new(),
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.group.ids()
    }

    /// The replica's address for agents, peers and operators (its proxy's, when it has one).
    pub fn addr(&self, id: u64) -> String {
        self.group.addr(id)
    }

    /// Every replica's address, comma-separated (what agents are given).
    pub fn addrs(&self) -> String {
        self.group.addrs()
    }

    /// Start replica `id` (`--bootstrap`: a new group on first start, ignored once its
    /// directory holds one).
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let args = self.extra.get(&id).cloned().unwrap_or_default();
        self.group.start(
            id,
            Start {
                args,
                ..Start::default()
            },
        )?;
        Ok(())
    }

    /// Arguments replica `id` alone gets from its next start on (a planted fault).
    pub fn set_extra(&mut self, id: u64, args: Vec<OsString>) {
        self.extra.insert(id, args);
    }

    /// SIGKILL (`graceful`: SIGTERM, then up to 30 s before SIGKILL), and wait for it.
    pub fn kill(&mut self, id: u64, graceful: bool) {
        if let Some(c) = self.take(id) {
            stop(c, graceful);
        }
    }

    /// The replica's process, to stop outside any lock (its peak RSS noted).
    pub fn take(&mut self, id: u64) -> Option<Child> {
        let c = self.group.take(id)?;
        self.peak_rss.insert(id, peak_rss_of(c.id()));
        Some(c)
    }

    /// Close or reopen the replica's proxy listener (dropping its open connections when
    /// closing). False when the group has no proxies.
    pub fn partition(&self, id: u64, cut: bool) -> bool {
        match self.proxies.get(&id) {
            Some(p) => {
                p.set_cut(cut);
                true
            }
            None => false,
        }
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.group.pid(id)
    }

    /// What async work needs, without holding the group.
    pub fn handle(&self) -> Handle {
        self.group.handle()
    }

    pub fn conn(&self, id: u64) -> Conn {
        self.group.conn(id)
    }

    pub fn metrics(&self, id: u64) -> String {
        self.group.metrics(id)
    }

    pub fn alive(&self) -> Vec<u64> {
        self.group.alive()
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
        self.group.tail(id, n)
    }
}

/// SIGKILL `c` (`graceful`: SIGTERM first, then up to 30 s for it to end) and reap it.
pub fn stop(c: Child, graceful: bool) {
    palisade_procs::stop(c, if graceful { GRACE } else { Duration::ZERO });
}

/// [`stop`] off the async threads.
pub async fn stop_child(c: Child, graceful: bool) {
    let _ = tokio::task::spawn_blocking(move || stop(c, graceful)).await;
}
