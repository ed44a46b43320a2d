//! Faults injected while the churn runs, one at a time, each on its own period: SIGKILL the
//! leader or a follower (restarted from its data directory after `down_for`), restart a
//! replica gracefully (SIGTERM), partition a replica (its proxy listener closed for
//! `partition_for`), restart a fraction of the agents (from their saved state). A leader kill
//! is measured: how long until another replica leads, how long until every agent streams
//! from a live replica at its version, and the bytes those resumes cost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_agent::Phase;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, Running};
use crate::replicas::{stop_child, sum, Replicas};
use crate::synth::Rng;

pub type Shared = Arc<Mutex<Replicas>>;
pub type Agents = Arc<tokio::sync::Mutex<Vec<Running>>>;

/// Which faults to inject, how often (none by default).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct FaultPlan {
    /// SIGKILL the leader this often (it restarts after --down-for).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kill_leader_every: Option<Duration>,
    /// SIGKILL a follower this often (it restarts after --down-for).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kill_follower_every: Option<Duration>,
    /// Restart a replica gracefully (SIGTERM, then start it again) this often.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub restart_replica_every: Option<Duration>,
    /// Partition a replica this often: the TCP proxy in front of it (its address for
    /// agents, peers and operators) closes its listener and drops every connection for
    /// --partition-for.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub partition_every: Option<Duration>,
    /// Restart --agent-fraction of the agents (from their saved state) this often.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub restart_agents_every: Option<Duration>,
    /// How long a killed replica stays down.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub down_for: Duration,
    /// How long a partition lasts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub partition_for: Duration,
    /// Share of the agents a restart takes (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub agent_fraction: f64,
}

impl FaultPlan {
    pub fn any(&self) -> bool {
        self.periods().iter().any(|(_, p)| p.is_some())
    }

    fn periods(&self) -> [(Kind, Option<Duration>); 5] {
        [
            (Kind::KillLeader, self.kill_leader_every),
            (Kind::KillFollower, self.kill_follower_every),
            (Kind::RestartReplica, self.restart_replica_every),
            (Kind::Partition, self.partition_every),
            (Kind::RestartAgents, self.restart_agents_every),
        ]
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    KillLeader,
    KillFollower,
    RestartReplica,
    Partition,
    RestartAgents,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillLeader => "kill-leader",
            Kind::KillFollower => "kill-follower",
            Kind::RestartReplica => "restart-replica",
            Kind::Partition => "partition",
            Kind::RestartAgents => "restart-agents",
        }
    }
}

/// One fault, as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub kind: Kind,
    /// Seconds since the churn started: the fault, and its end (replica back, partition
    /// healed, agents started again).
    pub at_s: f64,
    pub ended_s: f64,
    /// The replica it hit (0 for agents).
    pub replica: u64,
    /// Agents streaming from the replica hit (or restarted).
    pub agents: usize,
    /// From the fault to another replica leading (leader kills and partitions of the
    /// leader).
    pub new_leader_ms: Option<f64>,
    /// From the fault to every agent streaming from a live replica at its version (`None`:
    /// not within a minute).
    pub all_streaming_ms: Option<f64>,
    /// What the other replicas sent to bring resumed streams up to date, against
    /// snapshots of the moved agents' slices (as they were after the initial sync).
    pub resume_bytes: Option<u64>,
    pub full_resync_bytes: Option<u64>,
}

impl Event {
    /// A fault without recovery measurements.
    fn plain(kind: Kind, at_s: f64, ended_s: f64, replica: u64, agents: usize) -> Event {
        Event {
            kind,
            at_s,
            ended_s,
            replica,
            agents,
            new_leader_ms: None,
            all_streaming_ms: None,
            resume_bytes: None,
            full_resync_bytes: None,
        }
    }
}

pub struct Faults {
    pub plan: FaultPlan,
    pub replicas: Shared,
    pub agents: Agents,
    pub fleet: Arc<Fleet>,
    /// Snapshot bytes of every node's slice after the initial sync.
    pub snapshot_bytes: Arc<BTreeMap<String, u64>>,
    pub started: Instant,
    pub seed: u64,
}

const RESUME_BYTES: &str = "palisade_sync_resume_bytes_total{";

impl Faults {
    /// Inject faults until `stop`; every replica is running and every partition healed
    /// when it returns.
    pub async fn run(
        self,
        stop: CancellationToken,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Vec<Event> {
        let mut rng = Rng::new(self.seed ^ 0xfa17);
        let mut due: BTreeMap<Kind, Instant> = self
            .plan
            .periods()
            .into_iter()
            .filter_map(|(k, p)| Some((k, self.started + p?)))
            .collect();
        let mut events = Vec::new();
        while let Some((&kind, &when)) = due.iter().min_by_key(|(_, t)| **t) {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(when.into()) => {}
            }
            let event = match kind {
                Kind::KillLeader | Kind::KillFollower => self.kill(kind, &mut rng).await,
                Kind::RestartReplica => self.restart_replica(&mut rng).await,
                Kind::Partition => self.partition(&mut rng).await,
                Kind::RestartAgents => self.restart_agents(&mut rng).await,
            };
            match event {
                Ok(e) => {
                    progress(&describe(&e));
                    events.push(e);
                }
                Err(e) => progress(&format!("fault {} not injected: {e}", kind.name())),
            }
            let period = self
                .plan
                .periods()
                .into_iter()
                .find(|(k, _)| *k == kind)
                .and_then(|(_, p)| p)
                .expect("scheduled");
            due.insert(kind, Instant::now().max(when + period));
        }
        events
    }

    fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Replicas) -> T) -> T {
        f(&mut self.replicas.lock().expect("replicas"))
    }

    async fn leader(&self) -> anyhow::Result<u64> {
        let r = self.replicas.lock().expect("replicas").handle();
        crate::replicas::leader(&r, Duration::from_secs(30)).await
    }

    /// Agents streaming from `addr`.
    async fn on(&self, addr: &str) -> Vec<String> {
        self.agents
            .lock()
            .await
            .iter()
            .filter(|a| a.status.borrow().controller == addr)
            .map(|a| a.node.clone())
            .collect()
    }

    async fn resume_bytes(&self, ids: &[u64]) -> f64 {
        let handle = self.with(|r| r.handle());
        let ids = ids.to_vec();
        tokio::task::spawn_blocking(move || {
            ids.iter()
                .map(|id| sum(&handle.metrics(*id), RESUME_BYTES))
                .sum()
        })
        .await
        .unwrap_or(0.0)
    }

    /// From now: another replica than `hit` leading (when `leader_change`), and every agent
    /// synced on a replica other than `away_from`, at most a minute.
    async fn recovery(
        &self,
        hit: u64,
        away_from: &str,
        leader_change: bool,
    ) -> (Option<f64>, Option<f64>) {
        let t0 = Instant::now();
        let handle = self.with(|r| r.handle());
        let others: Vec<u64> = handle.ids().into_iter().filter(|i| *i != hit).collect();
        let (mut leader, mut streaming) = (None, None);
        while t0.elapsed() < Duration::from_secs(60)
            && ((leader_change && leader.is_none()) || streaming.is_none())
        {
            if streaming.is_none() {
                let agents = self.agents.lock().await;
                if agents.iter().all(|a| {
                    let s = a.status.borrow();
                    s.phase == Phase::Synced && s.controller != away_from
                }) {
                    streaming = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            if leader_change && leader.is_none() {
                for id in &others {
                    if handle.leader_known_to(*id).await.is_some_and(|l| l != hit) {
                        leader = Some(t0.elapsed().as_secs_f64() * 1e3);
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (leader, streaming)
    }

    async fn kill(&self, kind: Kind, rng: &mut Rng) -> anyhow::Result<Event> {
        let leader = self.leader().await?;
        let target = if kind == Kind::KillLeader {
            leader
        } else {
            let followers: Vec<u64> = self
                .with(|r| r.alive())
                .into_iter()
                .filter(|i| *i != leader)
                .collect();
            anyhow::ensure!(!followers.is_empty(), "no follower is running");
            followers[rng.below(followers.len())]
        };
        let addr = self.with(|r| r.addr(target));
        let moved = self.on(&addr).await;
        let survivors: Vec<u64> = self
            .with(|r| r.alive())
            .into_iter()
            .filter(|i| *i != target)
            .collect();
        let before = self.resume_bytes(&survivors).await;
        let at_s = self.at();
        let child = self.with(|r| r.take(target));
        if let Some(c) = child {
            stop_child(c, false).await;
        }
        let (new_leader_ms, all_streaming_ms) =
            self.recovery(target, &addr, kind == Kind::KillLeader).await;
        let resume_bytes = (self.resume_bytes(&survivors).await - before).max(0.0) as u64;
        let full_resync_bytes = moved
            .iter()
            .map(|n| self.snapshot_bytes.get(n).copied().unwrap_or(0))
            .sum();
        let down_until =
            Instant::now().max(self.started + Duration::from_secs_f64(at_s) + self.plan.down_for);
        tokio::time::sleep_until(down_until.into()).await;
        self.with(|r| r.spawn(target))?;
        Ok(Event {
            kind,
            at_s,
            ended_s: self.at(),
            replica: target,
            agents: moved.len(),
            new_leader_ms,
            all_streaming_ms,
            resume_bytes: Some(resume_bytes),
            full_resync_bytes: Some(full_resync_bytes),
        })
    }

    async fn restart_replica(&self, rng: &mut Rng) -> anyhow::Result<Event> {
        let alive = self.with(|r| r.alive());
        anyhow::ensure!(!alive.is_empty(), "no replica is running");
        let target = alive[rng.below(alive.len())];
        let addr = self.with(|r| r.addr(target));
        let moved = self.on(&addr).await;
        let at_s = self.at();
        if let Some(c) = self.with(|r| r.take(target)) {
            stop_child(c, true).await;
        }
        self.with(|r| r.spawn(target))?;
        Ok(Event::plain(
            Kind::RestartReplica,
            at_s,
            self.at(),
            target,
            moved.len(),
        ))
    }

    async fn partition(&self, rng: &mut Rng) -> anyhow::Result<Event> {
        let alive = self.with(|r| r.alive());
        anyhow::ensure!(!alive.is_empty(), "no replica is running");
        let target = alive[rng.below(alive.len())];
        let was_leader = self.leader().await.ok() == Some(target);
        let addr = self.with(|r| r.addr(target));
        let moved = self.on(&addr).await;
        let at_s = self.at();
        anyhow::ensure!(
            self.with(|r| r.partition(target, true)),
            "the replicas run without proxies"
        );
        let (new_leader_ms, all_streaming_ms) = self.recovery(target, &addr, was_leader).await;
        let heal = self.started + Duration::from_secs_f64(at_s) + self.plan.partition_for;
        tokio::time::sleep_until(Instant::now().max(heal).into()).await;
        self.with(|r| r.partition(target, false));
        Ok(Event {
            new_leader_ms,
            all_streaming_ms,
            ..Event::plain(Kind::Partition, at_s, self.at(), target, moved.len())
        })
    }

    async fn restart_agents(&self, rng: &mut Rng) -> anyhow::Result<Event> {
        let at_s = self.at();
        let mut agents = self.agents.lock().await;
        let n = ((agents.len() as f64 * self.plan.agent_fraction).ceil() as usize)
            .clamp(1, agents.len().max(1));
        let mut picked: Vec<usize> = (0..agents.len()).collect();
        for i in 0..n.min(picked.len()) {
            let j = i + rng.below(picked.len() - i);
            picked.swap(i, j);
        }
        picked.truncate(n);
        for i in &picked {
            self.fleet.restart(&mut agents[*i]).await?;
        }
        drop(agents);
        Ok(Event::plain(Kind::RestartAgents, at_s, self.at(), 0, n))
    }
}

/// Stop injecting: every replica running again, every partition healed.
pub fn heal_all(replicas: &Shared) -> anyhow::Result<()> {
    let mut r = replicas.lock().expect("replicas");
    for id in r.ids() {
        r.partition(id, false);
        if r.pid(id).is_none() {
            r.spawn(id)?;
        }
    }
    Ok(())
}

pub fn describe(e: &Event) -> String {
    let mut s = format!("{:>7.1} s  {}", e.at_s, e.kind.name());
    if e.replica > 0 {
        s += &format!(" replica {}", e.replica);
    }
    s += &format!(" ({} agents)", e.agents);
    if let Some(ms) = e.new_leader_ms {
        s += &format!("; new leader after {ms:.0} ms");
    }
    match (e.kind, e.all_streaming_ms) {
        (Kind::KillLeader | Kind::KillFollower | Kind::Partition, Some(ms)) => {
            s += &format!("; every agent on a live replica after {ms:.0} ms")
        }
        (Kind::KillLeader | Kind::KillFollower | Kind::Partition, None) => {
            s += "; NOT every agent on a live replica within 60 s"
        }
        _ => {}
    }
    if let (Some(b), Some(f)) = (e.resume_bytes, e.full_resync_bytes) {
        s += &format!(
            "; resumes {b} bytes ({:.3}% of a full resync)",
            100.0 * b as f64 / f.max(1) as f64
        );
    }
    s
}
