//! `palisade-loadtest sync`: a real controller and many real agents (in-memory dataplane) in
//! one process, over loopback gRPC with mTLS. The synthetic cluster is written as manifest
//! files (one per namespace); then single-pod edits are made to those files and timed from the
//! write to every affected agent's ack, with the bytes each change put on the wire.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use palisade_controller::server::{self, Config, TlsFiles};
use palisade_policy::model::Command;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::compile::{peak_rss_bytes, MeanMax, Percentiles};
use crate::fleet;
use crate::manifests;
use crate::synth::{self, Shape};

pub struct SyncOptions {
    pub shape: Shape,
    pub edits: usize,
    pub insecure: bool,
}

#[derive(Serialize)]
pub struct SyncReport {
    pub agents: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub tls: bool,
    /// From starting the agents to every node acking its initial slice.
    pub initial_sync_seconds: f64,
    /// Encoded size of the initial snapshots (nodes with policy).
    pub snapshot_bytes: MeanMax,
    pub snapshots: u64,
    /// Per single-pod edit: nodes whose slice changed.
    pub nodes_changed_per_edit: MeanMaxF,
    /// Encoded size of one node's update for a single-pod change.
    pub update_bytes: MeanMaxF,
    /// From writing the manifest to every affected agent's ack (realized), in milliseconds.
    pub edit_to_acked_ms: Percentiles,
    pub peak_rss_bytes: u64,
}

#[derive(Serialize)]
pub struct MeanMaxF {
    pub mean: f64,
    pub max: f64,
}

fn mean_max(v: &[f64]) -> MeanMaxF {
    MeanMaxF {
        mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
        max: v.iter().copied().fold(0.0, f64::max),
    }
}

/// The value of `name` (with its labels) in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Write the cluster as one manifest file per namespace; returns each namespace's documents.
pub fn write_manifests(
    dir: &Path,
    commands: &[Command],
) -> std::io::Result<BTreeMap<String, Vec<String>>> {
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in commands {
        let ns = match c {
            Command::UpsertNamespace(n) => n.name.to_string(),
            Command::UpsertPod(p) => p.key.namespace.to_string(),
            Command::UpsertPolicy(p) => p.key.namespace.to_string(),
            _ => continue,
        };
        files.entry(ns).or_default().extend(manifests::document(c));
    }
    for (ns, docs) in &files {
        std::fs::write(dir.join(format!("{ns}.yaml")), manifests::stream(docs))?;
    }
    Ok(files)
}

/// Why the sync load test could not run.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Certs(#[from] palisadectl::certs::CertError),
    #[error("controller: {0}")]
    Controller(#[from] palisade_controller::server::ServerError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Gone(#[from] palisade_controller::hub::Gone),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |e| SyncError::Io(what.to_string(), e)
}

async fn within<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> Result<T, SyncError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| SyncError::Timeout(format!("{what} within {limit:?}")))
}

pub async fn run(opts: &SyncOptions, progress: &dyn Fn(&str)) -> Result<SyncReport, SyncError> {
    let shape = &opts.shape;
    let dir = tempfile::tempdir().map_err(io("temporary directory"))?;
    let manifest_dir = dir.path().join("manifests");
    std::fs::create_dir_all(&manifest_dir).map_err(io("manifests directory"))?;
    progress(&format!(
        "writing manifests: {} nodes, {} pods, {} namespaces, {} policies",
        shape.nodes, shape.pods, shape.namespaces, shape.policies
    ));
    let commands: Vec<Command> = synth::commands(shape).collect();
    let files = write_manifests(&manifest_dir, &commands).map_err(io("writing manifests"))?;
    drop(commands);
    let nodes: Vec<String> = (0..shape.nodes).map(synth::node_name).collect();
    let certs = dir.path().join("certs");
    if !opts.insecure {
        progress(&format!("minting {} node certificates", nodes.len()));
        palisadectl::certs::mint(&palisadectl::certs::Request {
            dir: &certs,
            hosts: &["127.0.0.1".to_string()],
            nodes: &nodes,
            operators: &[],
            replicas: &[],
            valid_for: palisadectl::certs::DEFAULT_VALIDITY,
            renew: false,
        })?;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io("listening"))?;
    let addr = listener.local_addr().map_err(io("listening"))?;
    let shutdown = CancellationToken::new();
    let config = Config {
        state_dir: Some(dir.path().join("controller")),
        tls: (!opts.insecure).then(|| TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("controller.pem"),
            key: certs.join("controller-key.pem"),
        }),
        // Every simulated agent connects from 127.0.0.1: one address, thousands of nodes.
        connections: server::listen::Limits {
            max_connections: nodes.len() + 1024,
            max_per_ip: nodes.len() + 64,
            ..server::listen::Limits::default()
        },
        ..Config::new(&manifest_dir)
    };
    progress("starting the controller (full compile)");
    let controller = server::start(config, listener, None, shutdown.clone()).await?;
    let hub = controller.hub.clone();

    progress(&format!("starting {} agents", nodes.len()));
    let started = Instant::now();
    let mut agents = fleet::start(
        &nodes,
        &addr.to_string(),
        (!opts.insecure).then_some(certs.as_path()),
        &dir.path().join("agents"),
        &shutdown,
    )?;
    let loaded = controller.loaded_revision;
    let mut realized = hub.realized();
    let _ = within(
        Duration::from_secs(600),
        "every agent synced",
        realized.wait_for(|r| *r >= loaded),
    )
    .await?;
    let initial_sync_seconds = started.elapsed().as_secs_f64();
    progress(&format!(
        "all {} agents in sync after {initial_sync_seconds:.1} s",
        nodes.len()
    ));
    let page = hub.metrics.render();
    let snapshots = metric(
        &page,
        "palisade_sync_messages_sent_total{kind=\"snapshot\"}",
    ) as u64;
    let snapshot_bytes_total = metric(&page, "palisade_sync_bytes_sent_total{kind=\"snapshot\"}");
    let names = nodes.clone();
    let snapshot_max = hub
        .ask(move |st| {
            names
                .iter()
                .map(|n| palisade_proto::encode::snapshot(&st.engine().slice(n)).len())
                .max()
                .unwrap_or(0)
        })
        .await?;

    progress(&format!("{} single-pod edits", opts.edits));
    let mut edits = manifests::Edits::new(&manifest_dir, files, shape);
    let (mut latencies, mut changed, mut update_bytes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.edits {
        let before_page = hub.metrics.render();
        let before = *hub.revisions().borrow();
        let t0 = Instant::now();
        edits.make().map_err(io("editing a manifest"))?;
        let mut revisions = hub.revisions();
        let _ = within(
            Duration::from_secs(60),
            "the edit picked up",
            revisions.wait_for(|r| *r > before),
        )
        .await?;
        let revision = *revisions.borrow();
        let mut realized = hub.realized();
        let _ = within(
            Duration::from_secs(60),
            "the edit realized",
            realized.wait_for(|r| *r >= revision),
        )
        .await?;
        latencies.push(t0.elapsed().as_secs_f64() * 1e3);
        let after_page = hub.metrics.render();
        let d = |name: &str| metric(&after_page, name) - metric(&before_page, name);
        let updates = d("palisade_sync_messages_sent_total{kind=\"update\"}");
        changed.push(updates);
        if updates > 0.0 {
            update_bytes.push(d("palisade_sync_bytes_sent_total{kind=\"update\"}") / updates);
        }
    }
    shutdown.cancel();
    fleet::stop_all(&mut agents).await;
    controller.wait().await?;
    Ok(SyncReport {
        agents: nodes.len(),
        pods: shape.pods,
        namespaces: shape.namespaces,
        policies: shape.policies,
        tls: !opts.insecure,
        initial_sync_seconds,
        snapshot_bytes: MeanMax {
            mean: snapshot_bytes_total / snapshots.max(1) as f64,
            max: snapshot_max,
        },
        snapshots,
        nodes_changed_per_edit: mean_max(&changed),
        update_bytes: mean_max(&update_bytes),
        edit_to_acked_ms: crate::compile::percentiles(latencies),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

pub fn table(r: &SyncReport) -> String {
    format!(
        "cluster            {} agents (nodes), {} pods, {} namespaces, {} policies, {}\n\
         initial sync       {:.2} s for every agent to ack its first slice\n\
         snapshots          {} sent, mean {:.0} B, max {} B\n\
         single-pod edit    {:.1} nodes changed on average (max {:.0}), {:.0} B per node update (max {:.0})\n\
         edit -> all acked  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} edits)\n\
         peak RSS           {:.0} MiB (controller and all agents)\n",
        r.agents,
        r.pods,
        r.namespaces,
        r.policies,
        if r.tls { "mTLS" } else { "plaintext" },
        r.initial_sync_seconds,
        r.snapshots,
        r.snapshot_bytes.mean,
        r.snapshot_bytes.max,
        r.nodes_changed_per_edit.mean,
        r.nodes_changed_per_edit.max,
        r.update_bytes.mean,
        r.update_bytes.max,
        r.edit_to_acked_ms.p50,
        r.edit_to_acked_ms.p99,
        r.edit_to_acked_ms.max,
        r.edit_to_acked_ms.samples,
        r.peak_rss_bytes as f64 / 1048576.0,
    )
}
