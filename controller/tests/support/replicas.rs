//! Controller replicas as real processes of the `palisade-controller` binary, over loopback
//! with mTLS (replica certificates), each with its own state directory and log file; killed
//! with SIGKILL and restarted from their data directories, through `palisade_procs` (the one
//! kit the lab and the load test use too). Operators talk to them through `palisadectl`'s
//! library (the same code as the command line).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_procs::{Group, Member, Rule, Security, Spec, Start};
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
    group: Group,
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
        let mut args: Vec<OsString> = ["--raft-tick", "50ms", "--settle", "100ms"]
            .into_iter()
            .map(OsString::from)
            .collect();
        args.extend(opts.args.iter().map(OsString::from));
        if let Some(k) = &opts.kubeconfig {
            args.extend([
                "--kubeconfig".into(),
                k.into(),
                "--kube-watch-timeout".into(),
                "10s".into(),
            ]);
        }
        let group = Group::new(Spec {
            bin: env!("CARGO_BIN_EXE_palisade-controller").into(),
            security: Security::Mtls {
                certs: dir.path().join("certs"),
                operator: "admin".into(),
            },
            args,
            log_filter: "info".into(),
        });
        let watchdog = Watchdog::start(dir.path().to_path_buf());
        let mut r = Replicas {
            dir,
            group,
            opts,
            watchdog,
        };
        for id in &ids {
            let member = r.member(*id);
            r.group.add(*id, member);
        }
        for id in ids {
            if r.opts.manifests {
                std::fs::create_dir_all(r.manifests_dir(id)).unwrap();
            }
            r.spawn(id);
        }
        r
    }

    /// Where replica `id` listens, keeps its state and logs: loopback, or its namespace.
    fn member(&self, id: u64) -> Member {
        let mut m = Member::loopback(self.dir.path(), id).unwrap();
        if let Some(net) = &self.opts.netns {
            m.listen = format!("{}.{id}:7443", net.subnet);
            m.reached = m.listen.clone();
            m.metrics = Some("127.0.0.1:0".into());
            m.wrap = ["ip", "netns", "exec", &net.ns(id)]
                .into_iter()
                .map(OsString::from)
                .collect();
        }
        m
    }

    pub fn ids(&self) -> Vec<u64> {
        self.group.ids()
    }

    /// Where replica `id` serves agents, operators and its peers.
    pub fn addr(&self, id: u64) -> String {
        self.group.addr(id)
    }

    /// Every replica's address, separated by commas (an agent's `--controller`).
    pub fn addrs(&self) -> String {
        self.group.addrs()
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
        for peer in self.ids().into_iter().filter(|p| *p != id) {
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
        for id in self.ids() {
            let tmp = self.manifests_dir(id).join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.manifests_dir(id).join(name)).unwrap();
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.path(&format!("replica-{id}.log"))).unwrap_or_default()
    }

    fn spawn(&mut self, id: u64) {
        self.spawn_as(id, true, None)
    }

    /// Start replica `id`; in `slot`, it runs in the place of replica `slot` (its address and
    /// `--peers` entry), as a StatefulSet pod does under a new id: `--ordinal` and `--id-file`.
    fn spawn_as(&mut self, id: u64, bootstrap: bool, slot: Option<u64>) {
        let mut args = Vec::new();
        if self.opts.manifests {
            args.extend(["--manifests".into(), self.manifests_dir(id).into()]);
        }
        let pid = self
            .group
            .start(
                id,
                Start {
                    bootstrap,
                    slot,
                    args,
                },
            )
            .unwrap();
        self.watchdog.pids.lock().unwrap().insert(id, pid);
    }

    /// SIGKILL replica `id`.
    pub fn kill(&mut self, id: u64) {
        if self.group.kill(id) {
            self.watchdog.pids.lock().unwrap().remove(&id);
        }
    }

    /// SIGSTOP replica `id` (frozen: its connections stay open), or SIGCONT it.
    pub fn pause(&mut self, id: u64, paused: bool) {
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        self.group.signal(id, signal).unwrap();
    }

    /// SIGTERM replica `id` (see [`Replicas::exited`]).
    pub fn terminate(&mut self, id: u64) {
        self.group.signal(id, libc::SIGTERM).unwrap();
    }

    pub fn restart(&mut self, id: u64) {
        assert!(!self.group.alive().contains(&id), "replica {id} runs");
        self.spawn(id);
    }

    /// Restart replica `id` without `--bootstrap` (as an operator who never asked for a new
    /// group would).
    pub fn restart_without_bootstrap(&mut self, id: u64) {
        assert!(!self.group.alive().contains(&id), "replica {id} runs");
        self.spawn_as(id, false, None);
    }

    /// A port and a certificate for a replica `id` new to the group (`palisadectl certs
    /// --replica ID` reuses the CA); its address. Loopback only.
    pub fn reserve(&mut self, id: u64) -> String {
        assert!(self.opts.netns.is_none(), "new replicas on loopback only");
        self.mint(id);
        let member = self.member(id);
        self.group.add(id, member);
        self.addr(id)
    }

    /// Start replica `id` (reserved) with a blank directory and without `--bootstrap`, as an
    /// operator starts a replica added with `palisadectl replicas add`.
    pub fn join(&mut self, id: u64) {
        self.spawn_as(id, false, None);
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
        // Reached where the slot's replica was, with a state and log of its own.
        let mut member = self.group.member(slot).clone();
        let own = self.member(id);
        (member.state, member.log, member.metrics) = (own.state, own.log, own.metrics);
        self.group.add(id, member);
        self.spawn_as(id, true, Some(slot));
    }

    /// Stop naming replica `id` in `--peers` of replicas started from now on (removed).
    pub fn forget(&mut self, id: u64) {
        self.group.forget(id);
    }

    /// Delete replica `id`'s state directory (a lost disk); it must not run.
    pub fn wipe(&self, id: u64) {
        assert!(!self.group.alive().contains(&id), "replica {id} runs");
        std::fs::remove_dir_all(self.path(&format!("state-{id}"))).unwrap();
    }

    /// Wait until replica `id`'s process exits by itself (`WAIT` at most): its status.
    pub async fn exited(&mut self, id: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.group.exited(id).expect("replica runs") {
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
        self.group.running(id)
    }

    pub fn alive(&self) -> Vec<u64> {
        self.group.alive()
    }

    /// An operator's connection to replica `id`.
    pub fn conn(&self, id: u64) -> Conn {
        self.group.conn(id)
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
        match self.group.handle().leader(Rule::Agreed, ids, WAIT).await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
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
            net.remove(&self.ids());
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
