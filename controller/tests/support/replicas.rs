//! Controller replicas as real processes of the `palisade-controller` binary, over loopback
//! with mTLS (replica certificates), each with its own state directory and log file; killed
//! with SIGKILL and restarted from their data directories. Operators talk to them through
//! `palisadectl`'s library (the same code as the command line).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisadectl::output::Output;
use palisadectl::remote::Conn;
use palisadectl::store;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(30);

#[path = "netns.rs"]
mod netns;
#[path = "watchdog.rs"]
mod watchdog;

use netns::ip;
pub use netns::Netns;
use watchdog::{bounded, Watchdog};

pub struct Replicas {
    pub dir: tempfile::TempDir,
    pub ports: BTreeMap<u64, u16>,
    children: BTreeMap<u64, Child>,
    opts: Options,
    watchdog: Watchdog,
}

/// How the replicas run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Each replica watches its own manifests directory (`manifests-N/`).
    pub manifests: bool,
    /// Nodes to mint agent certificates for (besides n1).
    pub nodes: Vec<String>,
    /// Each replica in its own network namespace on a bridge, so its peer traffic can be cut
    /// ([`Replicas::partition`]) while agents (in this process) still reach it. Needs root.
    pub netns: Option<Netns>,
    /// Every replica reads this kubeconfig's API server (`--kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// More arguments for every replica.
    pub args: Vec<String>,
}

/// A free port below the kernel's ephemeral range: a replica restarts on its port, and a
/// port from that range could meanwhile be handed to any listener on port 0 (another
/// replica's metrics) or outgoing connection, which a test would then talk to instead.
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12000 {
        (10000, low)
    } else {
        (low.max(1024), 65535)
    };
    loop {
        let port = fastrand::u16(from..to);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Replicas {
    /// `n` replicas; with `manifests`, each watches `manifests-N/` under the test directory.
    pub fn start(n: u64, manifests: bool) -> Replicas {
        Replicas::start_with(
            n,
            Options {
                manifests,
                ..Options::default()
            },
        )
    }

    pub fn start_with(n: u64, opts: Options) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u64> = (1..=n).collect();
        let mut hosts = vec!["127.0.0.1".to_string()];
        if let Some(net) = &opts.netns {
            net.create(&ids);
            hosts.extend(ids.iter().map(|i| format!("{}.{i}", net.subnet)));
        }
        let mut nodes = vec!["n1".to_string()];
        nodes.extend(opts.nodes.iter().filter(|n| *n != "n1").cloned());
        palisadectl::certs::mint(&palisadectl::certs::Request {
            dir: &dir.path().join("certs"),
            hosts: &hosts,
            nodes: &nodes,
            operators: &["admin".to_string()],
            replicas: &ids,
            valid_for: palisadectl::certs::DEFAULT_VALIDITY,
            renew: false,
        })
        .unwrap();
        let ports = ids
            .iter()
            .map(|i| {
                (
                    *i,
                    if opts.netns.is_some() {
                        7443
                    } else {
                        free_port()
                    },
                )
            })
            .collect();
        let watchdog = Watchdog::start(dir.path().to_path_buf());
        let mut r = Replicas {
            dir,
            ports,
            children: BTreeMap::new(),
            opts,
            watchdog,
        };
        for id in ids {
            if r.opts.manifests {
                std::fs::create_dir_all(r.manifests_dir(id)).unwrap();
            }
            r.spawn(id);
        }
        r
    }

    /// Where replica `id` serves agents, operators and its peers.
    pub fn addr(&self, id: u64) -> String {
        match &self.opts.netns {
            Some(net) => format!("{}.{id}:{}", net.subnet, self.ports[&id]),
            None => format!("127.0.0.1:{}", self.ports[&id]),
        }
    }

    /// Every replica's address, separated by commas (an agent's `--controller`).
    pub fn addrs(&self) -> String {
        self.ports
            .keys()
            .map(|id| self.addr(*id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cut replica `id` off from its peers (blackhole routes in its namespace); agents still
    /// reach it.
    pub fn partition(&self, id: u64) {
        self.blackholes(id, "add");
    }

    pub fn heal(&self, id: u64) {
        self.blackholes(id, "del");
    }

    fn blackholes(&self, id: u64, op: &str) {
        let net = self.opts.netns.as_ref().expect("replicas in namespaces");
        for peer in self.ports.keys().filter(|p| **p != id) {
            let to = format!("{}.{peer}/32", net.subnet);
            ip(&["-n", &net.ns(id), "route", op, "blackhole", &to]);
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn manifests_dir(&self, id: u64) -> PathBuf {
        self.path(&format!("manifests-{id}"))
    }

    /// Write `name` into every replica's manifests directory (atomically: renamed into place).
    pub fn write_everywhere(&self, name: &str, text: &str) {
        for id in self.ports.keys() {
            let tmp = self.manifests_dir(*id).join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.manifests_dir(*id).join(name)).unwrap();
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.path(&format!("replica-{id}.log"))).unwrap_or_default()
    }

    fn spawn(&mut self, id: u64) {
        self.spawn_with(id, true)
    }

    fn spawn_with(&mut self, id: u64, bootstrap: bool) {
        self.spawn_as(id, bootstrap, None)
    }

    /// Start replica `id`; in `slot`, it runs in the place of replica `slot` (its address and
    /// `--peers` entry), as a StatefulSet pod does under a new id: `--ordinal` and `--id-file`.
    fn spawn_as(&mut self, id: u64, bootstrap: bool, slot: Option<u64>) {
        let peers: Vec<String> = self
            .ports
            .keys()
            .map(|i| format!("{i}={}", self.addr(*i)))
            .collect();
        let certs = self.path("certs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("replica-{id}.log")))
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_palisade-controller");
        let mut cmd = match &self.opts.netns {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.ns(id), bin]);
                c
            }
            None => Command::new(bin),
        };
        match slot {
            Some(s) => {
                let file = self.path(&format!("id-in-slot-{s}"));
                std::fs::write(&file, format!("{id}\n")).unwrap();
                cmd.arg("--ordinal")
                    .arg((s - 1).to_string())
                    .arg("--id-file")
                    .arg(file)
            }
            None => cmd.arg("--id").arg(id.to_string()),
        };
        cmd.arg("--peers")
            .arg(peers.join(","))
            .arg(format!("--bootstrap={bootstrap}"))
            .arg("--listen")
            .arg(self.addr(slot.unwrap_or(id)))
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(self.path(&format!("state-{id}")))
            .args(palisadectl::certs::replica_flags(&certs, id))
            .arg("--raft-tick")
            .arg("50ms")
            .arg("--settle")
            .arg("100ms")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd.args(&self.opts.args);
        if self.opts.manifests {
            cmd.arg("--manifests").arg(self.manifests_dir(id));
        }
        if let Some(k) = &self.opts.kubeconfig {
            cmd.arg("--kubeconfig")
                .arg(k)
                .args(["--kube-watch-timeout", "10s"]);
        }
        let child = cmd.spawn().unwrap();
        self.watchdog.pids.lock().unwrap().insert(id, child.id());
        self.children.insert(id, child);
    }

    /// SIGKILL replica `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
            self.watchdog.pids.lock().unwrap().remove(&id);
        }
    }

    /// SIGSTOP replica `id` (frozen: its connections stay open), or SIGCONT it.
    pub fn pause(&self, id: u64, paused: bool) {
        self.signal(id, if paused { "-STOP" } else { "-CONT" });
    }

    /// SIGTERM replica `id` (see [`Replicas::exited`]).
    pub fn terminate(&self, id: u64) {
        self.signal(id, "-TERM");
    }

    fn signal(&self, id: u64, signal: &str) {
        let pid = self.children[&id].id().to_string();
        let ok = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    pub fn restart(&mut self, id: u64) {
        assert!(!self.children.contains_key(&id), "replica {id} runs");
        self.spawn(id);
    }

    /// Restart replica `id` without `--bootstrap` (as an operator who never asked for a new
    /// group would).
    pub fn restart_without_bootstrap(&mut self, id: u64) {
        assert!(!self.children.contains_key(&id), "replica {id} runs");
        self.spawn_with(id, false);
    }

    /// A port and a certificate for a replica `id` new to the group (`palisadectl certs
    /// --replica ID` reuses the CA); its address. Loopback only.
    pub fn reserve(&mut self, id: u64) -> String {
        assert!(self.opts.netns.is_none(), "new replicas on loopback only");
        self.mint(id);
        self.ports.insert(id, free_port());
        self.addr(id)
    }

    /// Start replica `id` (reserved) with a blank directory and without `--bootstrap`, as an
    /// operator starts a replica added with `palisadectl replicas add`.
    pub fn join(&mut self, id: u64) {
        self.spawn_with(id, false);
    }

    /// A certificate for replica `id` (the CA is reused), to run it in another's place.
    pub fn mint(&self, id: u64) {
        palisadectl::certs::mint(&palisadectl::certs::Request {
            dir: &self.path("certs"),
            hosts: &["127.0.0.1".to_string()],
            nodes: &[],
            operators: &[],
            replicas: &[id],
            valid_for: palisadectl::certs::DEFAULT_VALIDITY,
            renew: false,
        })
        .unwrap();
    }

    /// Start replica `id` in the place of replica `slot` (its address, its `--peers` entry
    /// naming `slot`), with `--bootstrap` as the StatefulSet always passes it, and a blank
    /// directory: a pod whose volume was lost, running a replica under a new id.
    pub fn join_in_slot(&mut self, id: u64, slot: u64) {
        self.spawn_as(id, true, Some(slot));
        // Reached where the slot's replica was.
        self.ports.insert(id, self.ports[&slot]);
    }

    /// Stop naming replica `id` in `--peers` of replicas started from now on (removed).
    pub fn forget(&mut self, id: u64) {
        self.ports.remove(&id);
    }

    /// Delete replica `id`'s state directory (a lost disk); it must not run.
    pub fn wipe(&self, id: u64) {
        assert!(!self.children.contains_key(&id), "replica {id} runs");
        std::fs::remove_dir_all(self.path(&format!("state-{id}"))).unwrap();
    }

    /// Wait until replica `id`'s process exits by itself (`WAIT` at most): its status.
    pub async fn exited(&mut self, id: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.children.get_mut(&id).expect("replica runs");
            if let Some(s) = c.try_wait().unwrap() {
                self.children.remove(&id);
                self.watchdog.pids.lock().unwrap().remove(&id);
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "replica {id} still runs: {}",
                self.log(id)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether replica `id`'s process still runs.
    pub fn running(&mut self, id: u64) -> bool {
        self.children
            .get_mut(&id)
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn alive(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    /// An operator's connection to replica `id`.
    pub fn conn(&self, id: u64) -> Conn {
        Conn::operator(self.addr(id), &self.path("certs"), "admin")
    }

    /// `palisadectl replicas -o json` against `id`.
    pub async fn replicas(&self, id: u64) -> Option<Value> {
        let what = format!("replicas on replica {id}");
        let text = bounded(
            self.dir.path(),
            &what,
            store::replicas(&self.conn(id), Output::Json),
        )
        .await
        .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The leader every live replica agrees on, once there is one.
    pub async fn leader(&self) -> u64 {
        self.leader_among(&self.alive()).await
    }

    /// The leader replicas `ids` agree on, once there is one.
    pub async fn leader_among(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut seen = Vec::new();
            for &id in ids {
                if let Some(v) = self.replicas(id).await {
                    seen.push(v["leader"].as_u64().unwrap_or(0));
                }
            }
            if let Some(&l) = seen.first() {
                if l != 0 && self.alive().contains(&l) && seen.iter().all(|s| *s == l) {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Apply `text` through the leader, retrying while one is being elected: the revision.
    pub async fn apply_to_leader(&self, text: &str) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader().await;
            match self.apply(leader, text, false).await {
                Ok(rev) => return rev,
                Err(e) => assert!(Instant::now() < deadline, "no apply goes through: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Apply `text` through replica `id`; the revision, or the error's text.
    pub async fn apply(&self, id: u64, text: &str, delete: bool) -> Result<u64, String> {
        let change = store::Change {
            sources: vec![("test.yaml".into(), text.into())],
            namespace: "default".into(),
            delete,
            dry_run: false,
        };
        let what = format!("apply on replica {id}");
        let out = bounded(
            self.dir.path(),
            &what,
            store::apply(&self.conn(id), change, true),
        )
        .await
        .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&out).unwrap();
        Ok(v["revision"].as_u64().unwrap())
    }

    /// What a dry-run apply of `text` on replica `id` says of each object.
    pub async fn dry_run(&self, id: u64, text: &str) -> Vec<String> {
        let change = store::Change {
            sources: vec![("test.yaml".into(), text.into())],
            namespace: "default".into(),
            delete: false,
            dry_run: true,
        };
        let what = format!("dry-run apply on replica {id}");
        let out = bounded(
            self.dir.path(),
            &what,
            store::apply(&self.conn(id), change, true),
        )
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["action"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every node's (desired version, digest) as replica `id` serves them, and its revision.
    pub async fn digests(&self, id: u64) -> Option<(u64, BTreeMap<String, (u64, String)>)> {
        let conn = self.conn(id);
        let what = format!("nodes on replica {id}");
        let text = bounded(
            self.dir.path(),
            &what,
            palisadectl::remote::nodes(
                &conn,
                &Default::default(),
                Default::default(),
                Output::Json,
            ),
        )
        .await
        .ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let nodes = v["nodes"]
            .as_array()?
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap().to_string(),
                    (
                        n["desiredVersion"].as_u64().unwrap(),
                        n["desiredDigest"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect();
        Some((v["revision"].as_u64()?, nodes))
    }

    /// Wait until every live replica has applied at least `revision` and serves the same
    /// versions and digests for every node; returns them.
    pub async fn converged(&self, revision: u64) -> BTreeMap<String, (u64, String)> {
        self.converged_among(&self.alive(), revision).await
    }

    /// [`Replicas::converged`] for replicas `ids`.
    pub async fn converged_among(
        &self,
        ids: &[u64],
        revision: u64,
    ) -> BTreeMap<String, (u64, String)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut all = Vec::new();
            for &id in ids {
                all.push(self.digests(id).await);
            }
            let first = all.first().cloned().flatten();
            let done = first.as_ref().is_some_and(|(r, nodes)| {
                *r >= revision
                    && all
                        .iter()
                        .all(|d| d.as_ref().is_some_and(|(r2, n2)| r2 == r && n2 == nodes))
            });
            if done {
                return first.expect("checked").1;
            }
            assert!(
                Instant::now() < deadline,
                "replicas never converged at {revision}: {all:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for id in self.alive() {
            self.kill(id);
        }
        if let Some(net) = &self.opts.netns {
            net.remove(&self.ports.keys().copied().collect::<Vec<_>>());
        }
    }
}

/// A pod `i` on node n1..n3 of namespace `shop`, with a namespace and a policy selecting it.
pub fn pod(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, labels: {{app: web}}}}\nspec: {{nodeName: n{}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: 10.1.{}.{}}}\n",
        i % 3 + 1,
        i / 200,
        i % 200 + 1
    )
}

pub const SHOP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}]}\n";
