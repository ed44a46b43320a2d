//! `palisade-loadtest raft`: a Raft group of real controller replicas in one process (each
//! with its own state directory, Raft and apply threads, and gRPC listener), peers over
//! loopback with mTLS. It measures proposal → applied on every replica for single objects and
//! for batches, the log's disk use after many commands with compaction on against the live
//! state's encoded size, and, optionally, how long a replica that was down while a large
//! cluster was loaded takes to catch up by snapshot once restarted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_controller::replication;
use palisade_controller::server::{self, Config, Running, TlsFiles};
use palisade_policy::model::{Command, Namespace};
use palisade_replica::Options;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::compile::{percentiles, Percentiles};
use crate::synth::{self, Shape};

pub struct RaftOptions {
    pub replicas: u64,
    pub singles: usize,
    pub batches: usize,
    pub batch_size: usize,
    /// Commands for the disk measurement (0: skip), in entries of `disk_entry` commands.
    pub disk_commands: usize,
    pub disk_entry: usize,
    pub snapshot_every: u64,
    /// A cluster to load while one replica is down, before restarting it (None: skip).
    pub catch_up: Option<Shape>,
    pub insecure: bool,
}

#[derive(Serialize)]
pub struct RaftReport {
    pub replicas: u64,
    pub tls: bool,
    /// Proposal on the leader to the entry applied on every replica, one object per entry.
    pub single_ms: Percentiles,
    pub batch_size: usize,
    /// The same for batches of `batch_size` objects in one entry.
    pub batch_ms: Percentiles,
    pub disk: Option<Disk>,
    pub catch_up: Option<CatchUp>,
}

#[derive(Serialize)]
pub struct Disk {
    pub commands: usize,
    pub entries: usize,
    pub snapshot_every: u64,
    /// The state machine's encoded size (what a snapshot holds).
    pub live_state_bytes: u64,
    /// Each replica's Raft directory (sled) on disk.
    pub log_bytes: Vec<u64>,
    /// The largest of `log_bytes` over `live_state_bytes`.
    pub ratio: f64,
}

#[derive(Serialize)]
pub struct CatchUp {
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub load_seconds: f64,
    pub snapshot_bytes: u64,
    /// From restarting the replica that was down to it applying the leader's index.
    pub catch_up_seconds: f64,
}

struct Replica {
    running: Running,
    shutdown: CancellationToken,
}

struct Group {
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, SocketAddr>,
    options: Options,
    insecure: bool,
    up: BTreeMap<u64, Replica>,
}

impl Group {
    async fn start(n: u64, options: Options, insecure: bool) -> anyhow::Result<Group> {
        let dir = tempfile::tempdir()?;
        let ids: Vec<u64> = (1..=n).collect();
        if !insecure {
            palisadectl::certs::mint(&palisadectl::certs::Request {
                dir: &dir.path().join("certs"),
                hosts: &["127.0.0.1".to_string()],
                nodes: &[],
                operators: &[],
                replicas: &ids,
                valid_for: palisadectl::certs::DEFAULT_VALIDITY,
                renew: false,
            })?;
        }
        let mut listeners = BTreeMap::new();
        for id in &ids {
            listeners.insert(*id, tokio::net::TcpListener::bind("127.0.0.1:0").await?);
        }
        let addrs = listeners
            .iter()
            .map(|(id, l)| Ok((*id, l.local_addr()?)))
            .collect::<std::io::Result<_>>()?;
        let mut g = Group {
            dir,
            addrs,
            options,
            insecure,
            up: BTreeMap::new(),
        };
        // Together: the first replica of a new group starts once every other answers.
        let starts = listeners.into_iter().map(|(id, l)| {
            let config = g.config(id);
            async move {
                let shutdown = CancellationToken::new();
                let running = server::start(config, l, None, shutdown.clone()).await?;
                anyhow::Ok((id, Replica { running, shutdown }))
            }
        });
        for started in futures::future::join_all(starts).await {
            let (id, r) = started?;
            g.up.insert(id, r);
        }
        Ok(g)
    }

    fn state_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("state-{id}"))
    }

    async fn spawn(&mut self, id: u64, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let config = self.config(id);
        let shutdown = CancellationToken::new();
        let running = server::start(config, listener, None, shutdown.clone()).await?;
        self.up.insert(id, Replica { running, shutdown });
        Ok(())
    }

    fn config(&self, id: u64) -> Config {
        let certs = self.dir.path().join("certs");
        Config {
            state_dir: Some(self.state_dir(id)),
            tls: (!self.insecure).then(|| TlsFiles {
                ca: certs.join("ca.pem"),
                cert: certs.join(format!("replica-{id}.pem")),
                key: certs.join(format!("replica-{id}-key.pem")),
            }),
            replication: replication::Config {
                id,
                peers: self
                    .addrs
                    .iter()
                    .map(|(i, a)| (*i, a.to_string()))
                    .collect(),
                tick: Duration::from_millis(100),
                options: self.options.clone(),
                bootstrap: true,
                ..replication::Config::default()
            },
            ..Config::standalone()
        }
    }

    async fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(r) = self.up.remove(&id) {
            r.shutdown.cancel();
            r.running.wait().await?;
        }
        Ok(())
    }

    async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addrs[&id]).await?;
        self.spawn(id, listener).await
    }

    async fn leader(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (id, r) in &self.up {
                if r.running.group.status().is_leader() {
                    return Ok(*id);
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "no leader within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Propose on the leader; wait until every live replica applied it. Returns the index.
    async fn commit(&self, leader: u64, commands: Vec<Command>) -> anyhow::Result<u64> {
        let index = self.up[&leader]
            .running
            .group
            .propose("loadtest", commands)
            .await?
            .revision;
        self.applied_everywhere(index).await?;
        Ok(index)
    }

    async fn applied_everywhere(&self, index: u64) -> anyhow::Result<()> {
        for r in self.up.values() {
            let mut w = r.running.hub.revisions();
            w.wait_for(|v| *v >= index).await?;
        }
        Ok(())
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn bench_pod(i: usize, flip: bool) -> Command {
    let app = (i % 7) + usize::from(flip) * 7;
    Command::UpsertPod(synth::pod(
        "bench",
        format!("p{i}"),
        app,
        i % 50,
        synth::pod_ip(i),
    ))
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub async fn run(o: &RaftOptions, progress: &dyn Fn(&str)) -> anyhow::Result<RaftReport> {
    let options = Options {
        snapshot_every: o.snapshot_every,
        ..Options::default()
    };
    progress(&format!("starting {} replicas", o.replicas));
    let mut g = Group::start(o.replicas, options, o.insecure).await?;
    let leader = g.leader().await?;
    g.commit(
        leader,
        vec![Command::UpsertNamespace(Namespace::implicit("bench"))],
    )
    .await?;

    progress(&format!("{} single-object proposals", o.singles));
    let mut single = Vec::new();
    for i in 0..o.singles {
        let started = Instant::now();
        g.commit(leader, vec![bench_pod(i % 500, i >= 500)]).await?;
        single.push(ms(started.elapsed()));
    }
    progress(&format!(
        "{} proposals of {} objects",
        o.batches, o.batch_size
    ));
    let mut batch = Vec::new();
    for b in 0..o.batches {
        let commands = (0..o.batch_size)
            .map(|i| bench_pod(10_000 + i, b % 2 == 1))
            .collect();
        let started = Instant::now();
        g.commit(leader, commands).await?;
        batch.push(ms(started.elapsed()));
    }

    let disk = if o.disk_commands > 0 {
        let entries = o.disk_commands.div_ceil(o.disk_entry.max(1));
        progress(&format!(
            "{} commands in {entries} entries (snapshot every {})",
            o.disk_commands, o.snapshot_every
        ));
        for e in 0..entries {
            let commands = (0..o.disk_entry)
                .map(|i| bench_pod(20_000 + (e * o.disk_entry + i) % 2_000, e % 2 == 1))
                .collect();
            g.commit(leader, commands).await?;
            if e % 1000 == 999 {
                progress(&format!("  {} entries", e + 1));
            }
        }
        let live = g.up[&leader]
            .running
            .hub
            .ask(|st| st.machine().encode().len())
            .await? as u64;
        let log_bytes: Vec<u64> =
            g.up.keys()
                .map(|id| dir_bytes(&g.state_dir(*id).join("raft")))
                .collect();
        let worst = log_bytes.iter().copied().max().unwrap_or(0);
        Some(Disk {
            commands: o.disk_commands,
            entries,
            snapshot_every: o.snapshot_every,
            live_state_bytes: live,
            log_bytes,
            ratio: worst as f64 / live.max(1) as f64,
        })
    } else {
        None
    };

    let catch_up = match &o.catch_up {
        Some(shape) => Some(catch_up(&mut g, shape, progress).await?),
        None => None,
    };
    for id in g.up.keys().copied().collect::<Vec<_>>() {
        g.stop(id).await?;
    }
    Ok(RaftReport {
        replicas: o.replicas,
        tls: !o.insecure,
        single_ms: percentiles(single),
        batch_size: o.batch_size,
        batch_ms: percentiles(batch),
        disk,
        catch_up,
    })
}

/// Stop a follower; load `shape` and enough entries after it that a snapshot holds it and
/// the log is compacted past the follower's position; restart the follower (from its data
/// directory) and time its catch-up, which can only come by snapshot. (A replica restarted
/// with its data directory emptied is a new member to Raft: it forgot its votes and its log,
/// and rejoining under its old id is unsafe; that needs membership changes, not built yet.)
async fn catch_up(
    g: &mut Group,
    shape: &Shape,
    progress: &dyn Fn(&str),
) -> anyhow::Result<CatchUp> {
    let leader = g.leader().await?;
    let follower = *g.up.keys().find(|id| **id != leader).expect("a follower");
    g.stop(follower).await?;
    progress(&format!(
        "replica {follower} stopped; loading {} pods, {} namespaces, {} policies",
        shape.pods, shape.namespaces, shape.policies
    ));
    let started = Instant::now();
    let commands: Vec<Command> = synth::commands(shape).collect();
    g.commit(leader, commands).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    // Small entries until a snapshot is taken past the load and the log compacted behind it.
    let every = g.options.snapshot_every + g.options.keep_entries + 2;
    progress(&format!(
        "{every} small entries for a snapshot and compaction"
    ));
    for i in 0..every as usize {
        g.commit(leader, vec![bench_pod(30_000 + i % 10, i % 2 == 1)])
            .await?;
    }
    let (snapshot_bytes, target) = g.up[&leader]
        .running
        .hub
        .ask(|st| (st.machine().encode().len() as u64, st.revision()))
        .await?;
    progress(&format!(
        "replica {follower} restarted; catching up to {target}"
    ));
    let started = Instant::now();
    g.restart(follower).await?;
    g.applied_everywhere(target).await?;
    Ok(CatchUp {
        pods: shape.pods,
        namespaces: shape.namespaces,
        policies: shape.policies,
        load_seconds,
        snapshot_bytes,
        catch_up_seconds: started.elapsed().as_secs_f64(),
    })
}

pub fn table(r: &RaftReport) -> String {
    let mut out = format!(
        "{} replicas, {}\nproposal -> applied on every replica (ms):\n  single object:        p50 {:.2}  p99 {:.2}  max {:.2}  ({} samples)\n  batch of {:<6}       p50 {:.2}  p99 {:.2}  max {:.2}  ({} samples)\n",
        r.replicas,
        if r.tls { "mTLS" } else { "plaintext" },
        r.single_ms.p50,
        r.single_ms.p99,
        r.single_ms.max,
        r.single_ms.samples,
        r.batch_size,
        r.batch_ms.p50,
        r.batch_ms.p99,
        r.batch_ms.max,
        r.batch_ms.samples,
    );
    if let Some(d) = &r.disk {
        out += &format!(
            "disk after {} commands in {} entries (snapshot every {}): live state {:.1} MiB, Raft directories {} MiB: {:.2}x\n",
            d.commands,
            d.entries,
            d.snapshot_every,
            d.live_state_bytes as f64 / 1048576.0,
            d.log_bytes
                .iter()
                .map(|b| format!("{:.1}", *b as f64 / 1048576.0))
                .collect::<Vec<_>>()
                .join(" / "),
            d.ratio
        );
    }
    if let Some(c) = &r.catch_up {
        out += &format!(
            "catch-up by snapshot ({} pods, {} namespaces, {} policies; snapshot {:.1} MiB): load {:.1} s, replica down during the load caught up in {:.1} s\n",
            c.pods,
            c.namespaces,
            c.policies,
            c.snapshot_bytes as f64 / 1048576.0,
            c.load_seconds,
            c.catch_up_seconds
        );
    }
    out
}
