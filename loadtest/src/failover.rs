//! `palisade-loadtest failover`: three controller replicas as separate processes of the real
//! `palisade-controller` binary (loopback, mTLS, one manifests directory that the leader
//! ingests), many real agents in this process given every replica's address. Once every
//! agent holds its slice, the leader is SIGKILLed, again and again (the killed replica is
//! restarted from its data directory before the next kill): how long until a new leader, how
//! long until every agent streams from a live replica at its version, and what those resumes
//! put on the wire against a full resync of the agents that moved. The followers' staleness
//! of cluster-wide rollout state comes from their own histogram.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_agent::Phase;
use palisade_policy::engine::Engine;
use palisade_policy::Digest;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::compile::Percentiles;
use crate::fleet;
use crate::raft::ms;
use crate::replicas::{self, sum, until, GroupOptions, Replicas};
use crate::synth::{self, Shape};
use palisadectl::output::Output;

pub struct FailoverOptions {
    pub shape: Shape,
    /// Leader kills to measure.
    pub kills: usize,
    /// Single-pod manifest edits after the initial sync, each waited for on a follower.
    pub edits: usize,
    /// Directory holding `palisade-controller`.
    pub bin_dir: PathBuf,
}

#[derive(Serialize)]
pub struct FailoverReport {
    pub agents: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    /// From starting the agents to every one holding its slice.
    pub initial_sync_seconds: f64,
    pub kills: Vec<Kill>,
    /// From a manifest edit to a follower saying every affected node acked it (`palisadectl
    /// wait` on a follower: the edit went through the leader, the agents acked it wherever
    /// they are, and their acks reached the follower), milliseconds.
    pub edit_to_realized_on_follower_ms: Percentiles,
    /// From an ack recorded on one replica to another replica merging it (the replicas'
    /// `palisade_rollout_peer_ack_staleness_seconds`, read at bucket bounds), milliseconds:
    /// during the edits (steady operation), and since each replica's last start, at the end
    /// (the kills and restarted replicas catching up included; a restart clears its
    /// histogram).
    pub peer_ack_staleness_ms: Staleness,
    pub peer_ack_staleness_all_ms: Staleness,
    /// Peak RSS of each replica process (the last run of each), bytes.
    pub replica_peak_rss_bytes: BTreeMap<u64, u64>,
}

#[derive(Serialize)]
pub struct Kill {
    pub killed: u64,
    /// Agents that were streaming from the killed replica.
    pub moved: usize,
    /// From the SIGKILL to another replica leading.
    pub new_leader_ms: f64,
    /// From the SIGKILL to every agent streaming from a live replica at its version.
    pub all_streaming_ms: f64,
    /// What the surviving replicas sent meanwhile, and what snapshots of the moved agents'
    /// slices would weigh (their slices before the edits: 50 pods more among 30,000 change
    /// them by a fraction of a percent).
    pub resume_bytes: u64,
    pub full_resync_bytes: u64,
    pub resume_vs_full_percent: f64,
    /// Resumed streams on the survivors, by how they were brought up to date.
    pub resumes_delta: u64,
    pub resumes_current: u64,
    pub resumes_snapshot: u64,
}

/// Percentiles of a histogram, read at its bucket bounds.
#[derive(Serialize)]
pub struct Staleness {
    pub samples: u64,
    pub p50_at_most: f64,
    pub p99_at_most: f64,
}

const STALENESS: &str = "palisade_rollout_peer_ack_staleness_seconds";

/// The cumulative `_bucket` counts of histogram `name` over `pages`, by upper bound in
/// microseconds (+Inf as `u64::MAX`).
fn buckets(pages: &[String], name: &str) -> BTreeMap<u64, f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: BTreeMap<u64, f64> = BTreeMap::new();
    for page in pages {
        for l in page.lines() {
            let Some((le, value)) = l
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.split_once("\"} "))
            else {
                continue;
            };
            let key = le
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map_or(u64::MAX, |v| (v * 1e6) as u64);
            *out.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    out
}

/// Percentiles (upper bucket bounds) of what histogram `name` observed between two sets of
/// pages, in milliseconds.
pub(crate) fn histogram_between(before: &[String], after: &[String], name: &str) -> Staleness {
    let b = buckets(before, name);
    let counts: BTreeMap<u64, f64> = buckets(after, name)
        .into_iter()
        .map(|(k, v)| (k, (v - b.get(&k).copied().unwrap_or(0.0)).max(0.0)))
        .collect();
    percentiles_of(&counts)
}

fn staleness(pages: &[String]) -> Staleness {
    percentiles_of(&buckets(pages, STALENESS))
}

/// Percentiles (upper bucket bounds, milliseconds) of cumulative histogram buckets by upper
/// bound in microseconds.
pub(crate) fn percentiles_of(buckets: &BTreeMap<u64, f64>) -> Staleness {
    let total = buckets.values().copied().fold(0.0, f64::max);
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| **c >= q * total && total > 0.0)
            .map_or(0.0, |(k, _)| *k as f64 / 1e3)
    };
    Staleness {
        samples: total as u64,
        p50_at_most: at(0.5),
        p99_at_most: at(0.99),
    }
}

pub async fn run(o: &FailoverOptions, progress: &dyn Fn(&str)) -> anyhow::Result<FailoverReport> {
    let shape = &o.shape;
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    progress(&format!(
        "writing manifests and compiling them here too: {} nodes, {} pods, {} namespaces, {} policies",
        shape.nodes, shape.pods, shape.namespaces, shape.policies
    ));
    let commands: Vec<palisade_policy::model::Command> = synth::commands(shape).collect();
    let files = crate::sync::write_manifests(&manifests, &commands)?;
    let nodes: Vec<String> = (0..shape.nodes).map(synth::node_name).collect();
    // What every agent must end up holding, and what a snapshot of it weighs.
    let engine = Engine::load(1, commands);
    let expected: BTreeMap<String, (Digest, usize)> = nodes
        .iter()
        .map(|n| {
            let slice = engine.slice(n);
            (
                n.clone(),
                (
                    slice.digest(),
                    palisade_proto::encode::snapshot(&slice).len(),
                ),
            )
        })
        .collect();
    drop(engine);
    progress(&format!("minting certificates for {} nodes", nodes.len()));
    let ids = [1u64, 2, 3];
    replicas::mint_certs(&dir.path().join("certs"), &nodes, &ids)?;
    let mut args = vec!["--manifests".into(), manifests.clone().into_os_string()];
    args.extend(replicas::connection_args(nodes.len()));
    let mut r = Replicas::new(GroupOptions {
        dir: dir.path().to_path_buf(),
        bin: o.bin_dir.clone(),
        ids: ids.to_vec(),
        args,
        extra: BTreeMap::new(),
        proxies: false,
    })
    .await?;
    progress("starting three controller replicas");
    for id in ids {
        r.spawn(id)?;
    }
    let shutdown = CancellationToken::new();
    progress(&format!("starting {} agents", nodes.len()));
    let started = Instant::now();
    let mut agents = fleet::start(
        &nodes,
        &r.addrs(),
        Some(&dir.path().join("certs")),
        &dir.path().join("agents"),
        &shutdown,
    )?;
    // Every agent synced at `want` (its node's digest), and not on replica `exclude`.
    let in_sync = |want: &BTreeMap<String, Digest>, exclude: Option<&str>| {
        agents.iter().all(|a| {
            let s = a.status.borrow();
            s.phase == Phase::Synced
                && want.get(&a.node) == Some(&s.digest)
                && exclude.is_none_or(|x| s.controller != x)
        })
    };
    let initial: BTreeMap<String, Digest> =
        expected.iter().map(|(n, (d, _))| (n.clone(), *d)).collect();
    until(
        Duration::from_secs(900),
        "every agent holds its slice",
        || in_sync(&initial, None),
    )
    .await?;
    let initial_sync_seconds = started.elapsed().as_secs_f64();
    progress(&format!(
        "all {} agents hold their slices after {initial_sync_seconds:.1} s",
        nodes.len()
    ));

    // Steady operation: single-pod edits, each waited for on a follower.
    progress(&format!(
        "{} single-pod edits, each waited for on a follower",
        o.edits
    ));
    let before: Vec<String> = r.alive().iter().map(|id| r.metrics(*id)).collect();
    let mut edits = crate::manifests::Edits::new(&manifests, files, shape);
    let mut realized = Vec::new();
    for _ in 0..o.edits {
        let leader = r.leader_known_to(1).await.unwrap_or(1);
        let follower = if leader == 1 { 2 } else { 1 };
        let revision = |id: u64| {
            let conn = r.conn(id);
            async move {
                let text = palisadectl::remote::nodes(
                    &conn,
                    &Default::default(),
                    Default::default(),
                    Output::Json,
                )
                .await
                .ok()?;
                serde_json::from_str::<serde_json::Value>(&text).ok()?["revision"].as_u64()
            }
        };
        let was = revision(leader).await.unwrap_or(0);
        let t0 = Instant::now();
        edits.make()?;
        let now = loop {
            if let Some(v) = revision(leader).await.filter(|v| *v > was) {
                break v;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "the edit was not picked up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let (report, ok) =
            palisadectl::remote::wait(&r.conn(follower), Some(now), Duration::from_secs(60), false)
                .await?;
        anyhow::ensure!(ok, "the edit was not realized: {report}");
        realized.push(ms(t0.elapsed()));
    }
    let after: Vec<String> = r.alive().iter().map(|id| r.metrics(*id)).collect();
    let peer_ack_staleness_ms = histogram_between(&before, &after, STALENESS);
    let mut kills = Vec::new();
    for k in 0..o.kills {
        let alive = r.alive();
        let asked = Instant::now();
        let leader = loop {
            let mut known = None;
            for id in &alive {
                known = r.leader_known_to(*id).await;
                if known.is_some() {
                    break;
                }
            }
            if let Some(l) = known {
                break l;
            }
            anyhow::ensure!(
                asked.elapsed() < Duration::from_secs(60),
                "no leader within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let killed_addr = r.addr(leader);
        // What every agent holds now (all in sync: the edits were realized).
        let held: BTreeMap<String, Digest> = agents
            .iter()
            .map(|a| (a.node.clone(), a.status.borrow().digest))
            .collect();
        let moved: Vec<String> = agents
            .iter()
            .filter(|a| a.status.borrow().controller == killed_addr)
            .map(|a| a.node.clone())
            .collect();
        let survivors: Vec<u64> = alive.iter().copied().filter(|i| *i != leader).collect();
        let before: Vec<String> = survivors.iter().map(|id| r.metrics(*id)).collect();
        progress(&format!(
            "kill {}: SIGKILL replica {leader} (the leader), {} agents on it",
            k + 1,
            moved.len()
        ));
        let t0 = Instant::now();
        r.kill(leader, false);
        // Both watched at once: agents may be back before the group has a leader again.
        let (mut new_leader, mut streaming) = (None, None);
        while new_leader.is_none() || streaming.is_none() {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(120),
                "no new leader ({new_leader:?}) or not every agent on a live replica \
                 ({streaming:?}) within 120 s"
            );
            if streaming.is_none() && in_sync(&held, Some(&killed_addr)) {
                streaming = Some(t0.elapsed());
            }
            if new_leader.is_none() {
                for id in &survivors {
                    if let Some(l) = r.leader_known_to(*id).await.filter(|l| *l != leader) {
                        new_leader = Some((l, t0.elapsed()));
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let all_streaming = streaming.expect("seen");
        let after: Vec<String> = survivors.iter().map(|id| r.metrics(*id)).collect();
        let delta = |name: &str| -> u64 {
            let b: f64 = before.iter().map(|p| sum(p, name)).sum();
            let a: f64 = after.iter().map(|p| sum(p, name)).sum();
            (a - b).max(0.0) as u64
        };
        let resume_bytes = delta("palisade_sync_bytes_sent_total{");
        let full_resync_bytes: u64 = moved.iter().map(|n| expected[n].1 as u64).sum();
        let kill = Kill {
            killed: leader,
            moved: moved.len(),
            new_leader_ms: ms(new_leader.expect("found").1),
            all_streaming_ms: ms(all_streaming),
            resume_bytes,
            full_resync_bytes,
            resume_vs_full_percent: 100.0 * resume_bytes as f64 / full_resync_bytes.max(1) as f64,
            resumes_delta: delta("palisade_sync_resumes_total{by=\"delta\"}"),
            resumes_current: delta("palisade_sync_resumes_total{by=\"current\"}"),
            resumes_snapshot: delta("palisade_sync_resumes_total{by=\"snapshot\"}"),
        };
        progress(&format!(
            "  replica {} leads after {:.0} ms; every agent streams from a live replica after {:.0} ms; {} bytes sent ({:.3}% of a full resync)",
            new_leader.expect("found").0,
            kill.new_leader_ms,
            kill.all_streaming_ms,
            kill.resume_bytes,
            kill.resume_vs_full_percent
        ));
        kills.push(kill);
        // The killed replica comes back from its data directory before the next kill.
        r.spawn(leader)?;
        let back = leader;
        let applied = |id: u64| sum(&r.metrics(id), "palisade_raft_applied_index ");
        let target = survivors.iter().map(|id| applied(*id)).fold(0.0, f64::max);
        until(
            Duration::from_secs(120),
            "the restarted replica caught up",
            || applied(back) >= target,
        )
        .await?;
    }
    // Replicas restarted during the run lost their histograms: what they measured since.
    let pages: Vec<String> = r.alive().iter().map(|id| r.metrics(*id)).collect();
    let peer_ack_staleness_all_ms = staleness(&pages);
    r.note_peak_rss();
    shutdown.cancel();
    fleet::stop_all(&mut agents).await;
    Ok(FailoverReport {
        agents: nodes.len(),
        pods: shape.pods,
        namespaces: shape.namespaces,
        policies: shape.policies,
        initial_sync_seconds,
        kills,
        edit_to_realized_on_follower_ms: crate::compile::percentiles(realized),
        peer_ack_staleness_ms,
        peer_ack_staleness_all_ms,
        replica_peak_rss_bytes: r.peak_rss.clone(),
    })
}

pub fn table(r: &FailoverReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{} agents, {} pods, {} namespaces, {} policies; three replicas (processes), mTLS\n\
         initial sync of every agent: {:.1} s\n\
         edit -> realized as seen on a follower: p50 {:.1} ms, p99 {:.1} ms\n\n\
         {:<6} {:>6} {:>11} {:>14} {:>12} {:>12} {:>8} {:>16}\n",
        r.agents,
        r.pods,
        r.namespaces,
        r.policies,
        r.initial_sync_seconds,
        r.edit_to_realized_on_follower_ms.p50,
        r.edit_to_realized_on_follower_ms.p99,
        "KILLED",
        "MOVED",
        "LEADER(ms)",
        "STREAMING(ms)",
        "RESUME(B)",
        "FULL(B)",
        "RATIO",
        "DELTA/CUR/SNAP"
    );
    for k in &r.kills {
        let _ = writeln!(
            out,
            "{:<6} {:>6} {:>11.0} {:>14.0} {:>12} {:>12} {:>7.3}% {:>16}",
            k.killed,
            k.moved,
            k.new_leader_ms,
            k.all_streaming_ms,
            k.resume_bytes,
            k.full_resync_bytes,
            k.resume_vs_full_percent,
            format!(
                "{}/{}/{}",
                k.resumes_delta, k.resumes_current, k.resumes_snapshot
            )
        );
    }
    out.push('\n');
    for (when, s) in [
        ("during the edits", &r.peer_ack_staleness_ms),
        (
            "since each replica's last start (kills, catch-up)",
            &r.peer_ack_staleness_all_ms,
        ),
    ] {
        let _ = writeln!(
            out,
            "staleness of another replica's acks, {when}: p50 <= {} ms, p99 <= {} ms ({} samples)",
            s.p50_at_most, s.p99_at_most, s.samples
        );
    }
    for (id, rss) in &r.replica_peak_rss_bytes {
        let _ = writeln!(
            out,
            "replica {id} peak RSS: {:.0} MiB",
            *rss as f64 / 1048576.0
        );
    }
    out
}
