//! `palisade-loadtest cluster`: a scale and chaos scenario. Three (or five) controller
//! replicas run as processes of the real binary on loopback with mTLS; the synthetic cluster
//! is loaded through the standalone store (`palisadectl apply`'s admin API) or served by the
//! Kubernetes API-server emulator to the leader's Kubernetes source ([`feed`]); N real agents
//! (in-memory dataplane, many in this process) spread over the replicas; then changes are
//! sent at a steady rate by a weighted mix while faults are injected on their periods. At
//! the end the [`check`]er proves nothing was lost, nothing went backwards and every ack
//! named the right digest; the report says what each change cost until every affected
//! agent acked it, and the plots show the lag over time with the faults marked.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_agent::Phase as AgentPhase;
use tokio_util::sync::CancellationToken;

use crate::compile::{peak_rss_bytes, percentiles};
use crate::fleet::{self, Fleet};
use crate::replicas::{self, GroupOptions, Replicas};
use crate::synth::{self, Shape};

mod channels;
pub mod check;
pub mod churn;
pub mod faults;
pub mod feed;
mod kubernetes;
pub mod model;
mod phase;
pub mod plot;
pub mod report;
pub mod sample;
pub mod store;

use churn::{Churn, Mix};
use faults::{FaultPlan, Faults};
use feed::{Feed, Source};
use model::Model;
use report::{ChangeRecord, ClusterReport};

pub struct ClusterOptions {
    pub shape: Shape,
    pub source: Source,
    pub replicas: u64,
    pub duration: Duration,
    /// Changes per second.
    pub rate: f64,
    pub mix: Mix,
    pub faults: FaultPlan,
    /// Plant a fault the checker must catch: one replica skips one committed entry.
    pub plant_fault: bool,
    /// How long to wait, after the churn, for every agent to hold its final slice.
    pub settle: Duration,
    pub plots: Option<PathBuf>,
    pub bin_dir: PathBuf,
    pub controller_args: Vec<String>,
}

fn mins(progress: &dyn Fn(&str), what: &str, took: Duration) {
    progress(&format!("{what} in {:.1} s", took.as_secs_f64()));
}

/// Current RSS of this process.
fn rss_now() -> u64 {
    sample::usage(std::process::id()).map_or(0, |(rss, _)| rss)
}

/// Wait until every agent holds the digest `want` gives its node, at most `limit`; progress
/// every few seconds. What it took.
async fn synced(
    agents: &faults::Agents,
    want: impl Fn(&str) -> palisade_policy::Digest,
    limit: Duration,
    what: &str,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let total = agents.lock().await.len();
    let mut bar = phase::Phase::new(what, total as u64, "agents", progress);
    loop {
        let (done, total) = {
            let agents = agents.lock().await;
            let done = agents
                .iter()
                .filter(|a| {
                    let s = a.status.borrow();
                    s.phase == AgentPhase::Synced && s.digest == want(&a.node)
                })
                .count();
            (done, agents.len())
        };
        if done == total {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{what}: {done} of {total} agents within {limit:?}"
        );
        bar.set(done as u64);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(o: &ClusterOptions, progress: &dyn Fn(&str)) -> anyhow::Result<ClusterReport> {
    let shape = &o.shape;
    let dir = tempfile::tempdir()?;
    let nodes: Vec<String> = (0..shape.nodes).map(synth::node_name).collect();
    let ids: Vec<u64> = (1..=o.replicas).collect();
    progress(&format!(
        "minting certificates for {} replicas and {} nodes",
        ids.len(),
        nodes.len()
    ));
    replicas::mint_certs(&dir.path().join("certs"), &nodes, &ids)?;
    let commands: Vec<palisade_policy::model::Command> = synth::commands(shape).collect();
    if o.source == Source::Kubernetes {
        progress(&format!(
            "filling the API server emulator with {} objects",
            commands.len()
        ));
    }
    let changes = (o.rate * o.duration.as_secs_f64()).ceil() as usize;
    let mut feed = Feed::new(o.source, shape.seed, dir.path(), &commands, changes).await?;
    let mut args = replicas::connection_args(nodes.len());
    args.extend(feed.controller_args());
    args.extend(o.controller_args.iter().map(OsString::from));
    let group = Replicas::new(GroupOptions {
        dir: dir.path().to_path_buf(),
        bin: o.bin_dir.clone(),
        ids: ids.clone(),
        args,
        extra: BTreeMap::new(),
        proxies: o.faults.partition_every.is_some(),
    })
    .await?;
    let replicas: faults::Shared = Arc::new(Mutex::new(group));
    progress(&format!("starting {} controller replicas", ids.len()));
    {
        let mut r = replicas.lock().expect("replicas");
        for id in &ids {
            r.spawn(*id)?;
        }
    }
    let handle = replicas.lock().expect("replicas").handle();
    let leader = replicas::leader(&handle, Duration::from_secs(60)).await?;
    progress(&format!("replica {leader} leads"));

    // The initial load.
    progress(&format!(
        "loading {} objects ({} pods, {} namespaces, {} policies) through {}",
        commands.len(),
        shape.pods,
        shape.namespaces,
        shape.policies,
        o.source.through()
    ));
    let mut model = Model::default();
    let loading = Instant::now();
    let loaded = feed
        .load(&replicas, &commands, &mut model, progress)
        .await?;
    let load_seconds = loading.elapsed().as_secs_f64();
    mins(progress, "loaded", loading.elapsed());
    applied_everywhere(&replicas, loaded, Duration::from_secs(300)).await?;
    if o.plant_fault {
        // The last replica, restarted, skips an entry a few changes into the churn.
        let (id, at) = (o.replicas, loaded + 8);
        progress(&format!(
            "planted fault: replica {id} restarts and skips the first entry with commands from index {at}"
        ));
        let child = {
            let mut r = replicas.lock().expect("replicas");
            r.set_extra(id, vec![OsString::from(format!("--fault-drop-entry={at}"))]);
            r.take(id)
        };
        if let Some(c) = child {
            replicas::stop_child(c, true).await;
        }
        replicas.lock().expect("replicas").spawn(id)?;
        applied_everywhere(&replicas, loaded, Duration::from_secs(300)).await?;
    }
    let snapshot_bytes: Arc<BTreeMap<String, u64>> = Arc::new(
        nodes
            .iter()
            .map(|n| (n.clone(), model.snapshot_bytes(n)))
            .collect(),
    );

    // The agents.
    let shutdown = CancellationToken::new();
    let fleet = Arc::new(Fleet::new(
        &handle_addrs(&replicas),
        Some(&dir.path().join("certs")),
        &dir.path().join("agents"),
        &shutdown,
    )?);
    progress(&format!("starting {} agents", nodes.len()));
    let rss_before = rss_now();
    let started_agents = Instant::now();
    let agents: faults::Agents = Arc::new(tokio::sync::Mutex::new(
        nodes
            .iter()
            .map(|n| fleet.start(n, None))
            .collect::<Result<_, _>>()?,
    ));
    let initial = synced(
        &agents,
        |n| model.current(n),
        Duration::from_secs(900),
        "initial sync",
        progress,
    )
    .await?;
    let _ = started_agents;
    let initial_sync_seconds = initial.as_secs_f64();
    let memory_per_agent_bytes = rss_now().saturating_sub(rss_before) / nodes.len().max(1) as u64;
    mins(progress, "every agent holds its slice", initial);

    // Churn, faults and sampling.
    let started = Instant::now();
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample::run(
        replicas.clone(),
        started,
        Duration::from_secs(1),
        stop.clone(),
    ));
    let faults = Faults {
        plan: o.faults.clone(),
        replicas: replicas.clone(),
        agents: agents.clone(),
        fleet: fleet.clone(),
        snapshot_bytes,
        started,
        seed: shape.seed,
    };
    let fault_log: Arc<Mutex<Vec<String>>> = Arc::default();
    let injector = {
        let stop = stop.clone();
        let log = fault_log.clone();
        tokio::spawn(async move {
            faults
                .run(stop, &|m| log.lock().expect("log").push(m.to_string()))
                .await
        })
    };
    progress(&format!(
        "churn: {:.0} s at {} changes/s{}",
        o.duration.as_secs_f64(),
        o.rate,
        if o.faults.any() { ", with faults" } else { "" }
    ));
    let mut churn = Churn::new(o.mix.clone(), shape);
    let mut changes: Vec<ChangeRecord> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bar = phase::Phase::new("churn", o.duration.as_secs(), "s", progress);
    while started.elapsed() < o.duration {
        tick.tick().await;
        let change = churn.next(&model);
        let sent = Instant::now();
        let acked = feed
            .apply(&replicas, &change, &model, Duration::from_secs(120))
            .await?;
        let affected = if acked.unchanged {
            Vec::new()
        } else {
            model.apply(acked.after, acked.at, change.commands)
        };
        changes.push(ChangeRecord {
            op: change.op,
            sent,
            acked: Instant::now(),
            after: acked.after,
            at: acked.at,
            nodes: affected,
        });
        for m in fault_log.lock().expect("log").drain(..) {
            bar.say(&m);
        }
        bar.set_with(started.elapsed().as_secs(), || {
            format!("({} changes, revision {})", changes.len(), feed.revision())
        });
    }
    drop(bar);
    let churn_seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let events = injector.await?;
    for m in fault_log.lock().expect("log").drain(..) {
        progress(&m);
    }
    faults::heal_all(&replicas)?;
    // Agents that never get there are the checker's to report, not an error here.
    let settle = match synced(
        &agents,
        |n| model.current(n),
        o.settle,
        "after the churn",
        progress,
    )
    .await
    {
        Ok(took) => {
            mins(progress, "every agent holds its final slice", took);
            took
        }
        Err(e) => {
            progress(&format!("NOT SETTLED: {e}"));
            o.settle
        }
    };
    let samples = sampler.await?;

    progress("checking");
    let fresh = check::fresh(&model, &nodes);
    // Every replica has applied the last change before the comparison.
    applied_everywhere(&replicas, feed.revision(), Duration::from_secs(60)).await?;
    let check = {
        let agents = agents.lock().await;
        check::run(&model, &fresh, &agents, feed.owner(), &replicas).await?
    };

    // The figures.
    let installs: HashMap<String, Vec<fleet::Install>> = {
        let agents = agents.lock().await;
        agents
            .iter()
            .map(|a| (a.node.clone(), a.installs.lock().expect("installs").clone()))
            .collect()
    };
    let outcomes = report::outcomes(&changes, &installs, started);
    let steady = outcomes
        .iter()
        .filter(|o| !report::near_fault(o, &events, 5.0));
    let change_to_acked_steady = report::latency(steady);
    let change_to_acked = report::latency(outcomes.iter());
    let lag = report::lag_series(&outcomes, churn_seconds + settle.as_secs_f64(), 0.25);
    let mut changes_by_op = BTreeMap::new();
    for c in &changes {
        *changes_by_op.entry(c.op.to_string()).or_insert(0) += 1;
    }
    let agent_apply: Vec<f64> = installs
        .values()
        .flatten()
        .filter(|i| i.at >= started)
        .map(|i| i.took.as_secs_f64() * 1e3)
        .collect();
    let stages = report::Stages {
        stages: sample::stage_totals(&samples)
            .into_iter()
            .map(|(stage, buckets)| (stage, crate::failover::percentiles_of(&buckets)))
            .filter(|(_, h)| h.samples > 0)
            .collect(),
        agent_apply_ms: (!agent_apply.is_empty()).then(|| percentiles(agent_apply)),
    };
    let mut report = ClusterReport {
        source: o.source,
        replicas: ids.len(),
        agents: nodes.len(),
        pods: shape.pods,
        namespaces: shape.namespaces,
        policies: shape.policies,
        duration_seconds: churn_seconds,
        rate_per_second: o.rate,
        load_seconds,
        initial_sync_seconds,
        memory_per_agent_bytes,
        changes_by_op,
        lost_answers: feed.lost_answers(),
        change_to_commit_ms: percentiles(outcomes.iter().map(|o| o.commit_ms).collect()),
        change_to_acked,
        change_to_acked_steady,
        stages,
        faults: events,
        replica_peak_rss_bytes: BTreeMap::new(),
        loadtest_peak_rss_bytes: peak_rss_bytes(),
        check,
        settle_seconds: settle.as_secs_f64(),
        plots: Vec::new(),
        outcome_ms: outcomes
            .iter()
            .filter_map(|o| Some((o.done_s? - o.sent_s) * 1e3))
            .collect(),
        lag,
        samples,
    };
    {
        let mut r = replicas.lock().expect("replicas");
        r.note_peak_rss();
        report.replica_peak_rss_bytes = r.peak_rss.clone();
    }
    if let Some(dir) = &o.plots {
        progress(&format!("drawing plots into {}", dir.display()));
        report.plots = plot::draw(&report, dir)?
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
    }
    shutdown.cancel();
    fleet::stop_all(&mut agents.lock().await).await;
    Ok(report)
}

/// Wait until every running replica has applied `revision` (at most `limit`); what the
/// laggards' logs end with when they do not.
async fn applied_everywhere(
    replicas: &faults::Shared,
    revision: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let handle = replicas.lock().expect("replicas").handle();
    let applied = |id: u64| replicas::sum(&handle.metrics(id), "palisade_raft_applied_index ");
    let waited = replicas::until(
        limit,
        &format!("every replica applied revision {revision}"),
        || {
            handle
                .alive()
                .iter()
                .all(|id| applied(*id) >= revision as f64)
        },
    )
    .await;
    if let Err(e) = waited {
        let r = replicas.lock().expect("replicas");
        let behind: Vec<String> = handle
            .alive()
            .iter()
            .filter(|id| applied(**id) < revision as f64)
            .map(|id| {
                format!(
                    "replica {id} applied {}; the end of its log:\n{}",
                    applied(*id),
                    r.tail(*id, 10)
                )
            })
            .collect();
        anyhow::bail!("{e}: {}", behind.join("\n"));
    }
    Ok(())
}

fn handle_addrs(replicas: &faults::Shared) -> String {
    replicas.lock().expect("replicas").addrs()
}
