//! `palisade-loadtest cluster`: a scale and chaos scenario. Three (or five) controller
//! replicas run as processes of the real binary on loopback with mTLS; the synthetic cluster
//! is loaded through the standalone store (`palisadectl apply`'s admin API); N real agents
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
use crate::manifests;
use crate::replicas::{self, GroupOptions, Replicas};
use crate::synth::{self, Shape};

pub mod check;
pub mod churn;
pub mod faults;
pub mod model;
mod phase;
pub mod plot;
pub mod report;
pub mod sample;
pub mod store;

use churn::{Churn, Mix};
use faults::{FaultPlan, Faults};
use model::Model;
use report::{ChangeRecord, ClusterReport};
use store::Store;

/// Objects per apply while loading (each apply is one log entry, well under its size limit).
const LOAD_CHUNK: usize = 500;

pub struct ClusterOptions {
    pub shape: Shape,
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
    let chunks = commands.len().div_ceil(LOAD_CHUNK) as u64;
    let mut args = replicas::connection_args(nodes.len());
    args.extend(o.controller_args.iter().map(OsString::from));
    let mut extra = BTreeMap::new();
    if o.plant_fault {
        // The last replica skips an entry a few changes into the churn.
        let at = chunks + 8;
        progress(&format!(
            "planted fault: replica {} skips the first entry with commands from index {at}",
            o.replicas
        ));
        extra.insert(
            o.replicas,
            vec![OsString::from(format!("--fault-drop-entry={at}"))],
        );
    }
    let group = Replicas::new(GroupOptions {
        dir: dir.path().to_path_buf(),
        bin: o.bin_dir.clone(),
        ids: ids.clone(),
        args,
        extra,
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
    let leader = handle.leader(Duration::from_secs(60)).await?;
    progress(&format!("replica {leader} leads"));

    // The initial load, through the store.
    progress(&format!(
        "loading {} objects through the store ({} pods, {} namespaces, {} policies) in {chunks} applies",
        commands.len(),
        shape.pods,
        shape.namespaces,
        shape.policies
    ));
    let mut model = Model::default();
    let mut store = Store::new(shape.seed);
    let loading = Instant::now();
    let mut bar = phase::Phase::new("loading", chunks, "applies", progress);
    for (i, chunk) in commands.chunks(LOAD_CHUNK).enumerate() {
        let docs: Vec<String> = chunk.iter().filter_map(manifests::document).collect();
        let acked = store
            .apply(&replicas, docs, false, Duration::from_secs(120))
            .await?;
        model.apply(acked.after, acked.at, chunk.to_vec());
        bar.set(i as u64 + 1);
    }
    drop(bar);
    let load_seconds = loading.elapsed().as_secs_f64();
    mins(progress, "loaded", loading.elapsed());
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
        let acked = store
            .apply(
                &replicas,
                vec![change.document],
                change.delete,
                Duration::from_secs(120),
            )
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
            format!("({} changes, revision {})", changes.len(), store.revision)
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
    let handle = replicas.lock().expect("replicas").handle();
    let samples = sampler.await?;

    progress("checking");
    let fresh = check::fresh(&model, &nodes);
    let check = {
        // Every replica has applied the last change before the comparison.
        let want = store.revision;
        let applied = |id: u64| replicas::sum(&handle.metrics(id), "palisade_raft_applied_index ");
        let waited = replicas::until(
            Duration::from_secs(60),
            "every replica applied the churn",
            || ids.iter().all(|id| applied(*id) >= want as f64),
        )
        .await;
        if let Err(e) = waited {
            let r = replicas.lock().expect("replicas");
            let behind: Vec<String> = ids
                .iter()
                .filter(|id| applied(**id) < want as f64)
                .map(|id| {
                    format!(
                        "replica {id} applied {} of {want}; the end of its log:\n{}",
                        applied(*id),
                        r.tail(*id, 10)
                    )
                })
                .collect();
            anyhow::bail!("{e}: {}", behind.join("\n"));
        }
        let agents = agents.lock().await;
        check::run(&model, &fresh, &agents, &mut store, &replicas).await?
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
        lost_answers: store.lost_answers,
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

fn handle_addrs(replicas: &faults::Shared) -> String {
    replicas.lock().expect("replicas").addrs()
}
