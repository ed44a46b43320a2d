//! `palisade-loadtest kube`: the Kubernetes source at scale. The synthetic cluster is served
//! by the API-server emulator (real HTTP, in this process); one controller process of the real
//! binary reads it through a kubeconfig. Measured: the initial list to its revision
//! committed; single pod events to the revision applied on the pod's node's agent (and the
//! controller's own event-to-commit histogram); a burst of status-only pod updates (which
//! must propose nothing); the controller's peak RSS.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_kube_emulator::{Emulator, Resource};
use palisade_policy::model::Command as Change;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::compile::{peak_rss_of, percentiles, Percentiles};
use crate::failover::{histogram_between, Staleness};
use crate::raft::ms;
use crate::replicas::{sum, until};
use crate::synth::{self, Shape};
use crate::{fleet, manifests};
use palisade_procs::{Group, Member, Security, Spec, Start};

pub struct KubeOptions {
    pub shape: Shape,
    /// Single pod events to time.
    pub events: usize,
    /// Nodes whose agents watch the events (the events' pods go on them in turn).
    pub event_nodes: usize,
    /// Status-only pod updates in the burst.
    pub burst: usize,
    /// The controller's --kube-batch-delay.
    pub batch_delay: Duration,
    /// Directory holding `palisade-controller`.
    pub bin_dir: PathBuf,
    /// More arguments for the controller.
    pub controller_args: Vec<String>,
}

#[derive(Serialize)]
pub struct KubeReport {
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub nodes: usize,
    /// Filling the emulator (not part of any figure).
    pub emulator_load_seconds: f64,
    /// From the controller's first list request to the revision holding the lists committed
    /// and applied.
    pub initial_list_to_commit_seconds: f64,
    /// From starting the controller process to the same (opening the log, electing itself).
    pub start_to_commit_seconds: f64,
    /// Log entries the initial batch took (entries are bounded in size).
    pub initial_entries: u64,
    pub batch_delay_ms: f64,
    /// From a pod created in the API server to the revision holding it applied by the agent
    /// of its node (commit, compile, send and apply on the agent included).
    pub event_to_agent_ms: Percentiles,
    /// The controller's `palisade_kube_event_to_commit_seconds` over the events: from the
    /// event received to its revision committed and applied (bucket bounds).
    pub event_to_commit_ms: Staleness,
    pub status_updates: usize,
    /// Updates the controller received and ignored, and revisions committed meanwhile.
    pub status_updates_ignored: u64,
    pub status_update_revisions: u64,
    pub status_burst_seconds: f64,
    pub controller_peak_rss_bytes: u64,
}

pub(crate) fn resource(c: &Change) -> Resource {
    match c {
        Change::UpsertNamespace(_) | Change::DeleteNamespace(_) => Resource::Namespaces,
        Change::UpsertPod(_) | Change::DeletePod(_) => Resource::Pods,
        _ => Resource::NetworkPolicies,
    }
}

/// The one controller the Kubernetes load test runs (a group of one, plaintext on loopback),
/// started by the kit every runner of replicas shares.
struct Controller {
    group: Group,
}

impl Controller {
    fn spawn(o: &KubeOptions, dir: &Path, kubeconfig: &Path) -> anyhow::Result<Controller> {
        let bin = o.bin_dir.join("palisade-controller");
        let mut args: Vec<OsString> = vec![
            "--kubeconfig".into(),
            kubeconfig.into(),
            "--kube-batch-delay".into(),
            format!("{}ms", o.batch_delay.as_millis()).into(),
        ];
        args.extend(o.controller_args.iter().map(OsString::from));
        let mut group = Group::new(Spec {
            bin: bin.clone(),
            security: Security::Insecure { remote: false },
            args,
            log_filter: "info".into(),
        });
        let mut member = Member::loopback(dir, 1)?;
        (member.state, member.log) = (dir.join("state"), dir.join("controller.log"));
        group.add(1, member);
        group
            .start(1, Start::default())
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        Ok(Controller { group })
    }

    fn grpc(&self) -> String {
        self.group.addr(1)
    }

    fn pid(&self) -> Option<u32> {
        self.group.pid(1)
    }

    fn page(&self) -> String {
        self.group.metrics(1)
    }

    fn metric(&self, name: &str) -> f64 {
        sum(&self.page(), name)
    }

    fn tail(&self) -> String {
        self.group.tail(1, 20)
    }
}

pub async fn run(o: &KubeOptions, progress: &dyn Fn(&str)) -> anyhow::Result<KubeReport> {
    let shape = &o.shape;
    let dir = tempfile::tempdir()?;
    let emulator = Emulator::start(palisade_kube_emulator::Options {
        history: (o.burst + o.events) * 2 + 10_000,
        ..Default::default()
    })
    .await?;
    progress(&format!(
        "filling the API server emulator: {} pods, {} namespaces, {} policies on {} nodes",
        shape.pods, shape.namespaces, shape.policies, shape.nodes
    ));
    let loading = Instant::now();
    let mut pods = Vec::new();
    for (i, c) in synth::commands(shape).enumerate() {
        if let Some(object) = manifests::object(&c) {
            if matches!(c, Change::UpsertPod(_)) && pods.len() < o.burst {
                pods.push(object.clone());
            }
            emulator.apply(resource(&c), object);
        }
        if i > 0 && i % 50_000 == 0 {
            progress(&format!("  {i} objects"));
        }
    }
    let emulator_load_seconds = loading.elapsed().as_secs_f64();
    let kubeconfig = dir.path().join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig)?;

    progress("starting the controller (a group of one) with --kubeconfig");
    let started = Instant::now();
    let controller = Controller::spawn(o, dir.path(), &kubeconfig)?;
    until(
        Duration::from_secs(120),
        "the controller's first list request",
        || !emulator.requests().is_empty(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", controller.tail()))?;
    let listed_at = Instant::now();
    until(
        Duration::from_secs(600),
        "the initial batch committed",
        || controller.metric("palisade_kube_batches_total") >= 1.0,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", controller.tail()))?;
    let initial_list_to_commit_seconds = listed_at.elapsed().as_secs_f64();
    let start_to_commit_seconds = started.elapsed().as_secs_f64();
    // The leader's empty entry is revision 1; the batch's entries follow.
    let revision = controller.metric("palisade_revision ");
    let initial_entries = (revision as u64).saturating_sub(1);
    progress(&format!(
        "initial list to commit: {initial_list_to_commit_seconds:.1} s ({initial_entries} log entries)"
    ));

    // Agents on the nodes the events' pods go to.
    let shutdown = CancellationToken::new();
    let nodes: Vec<String> = (0..o.event_nodes.max(1)).map(synth::node_name).collect();
    let mut agents = fleet::start(
        &nodes,
        &controller.grpc(),
        None,
        &dir.path().join("agents"),
        &shutdown,
    )?;
    until(Duration::from_secs(120), "the agents' first slices", || {
        agents.iter().all(|a| a.status.borrow().version > 0)
    })
    .await?;

    progress(&format!("timing {} pod events", o.events));
    let before = vec![controller.page()];
    let mut samples = Vec::with_capacity(o.events);
    for i in 0..o.events {
        let k = i % nodes.len();
        let mut status = agents[k].status.clone();
        let was = status.borrow_and_update().version;
        let pod = synth::pod(
            &synth::ns_name(i % shape.namespaces.max(1)),
            format!("lt-event-{i}"),
            i,
            k,
            synth::pod_ip(shape.pods + 100_000 + i),
        );
        let object = manifests::object(&Change::UpsertPod(pod)).expect("an upsert");
        let t0 = Instant::now();
        emulator.apply(Resource::Pods, object);
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| s.version > was),
        )
        .await
        .map_err(|_| anyhow::anyhow!("pod event {i} did not reach node {} in 30 s", nodes[k]))??;
        samples.push(ms(t0.elapsed()));
    }
    let after = vec![controller.page()];
    let event_to_commit_ms =
        histogram_between(&before, &after, "palisade_kube_event_to_commit_seconds");

    progress(&format!(
        "a burst of {} status-only pod updates",
        pods.len()
    ));
    let revision_before = controller.metric("palisade_revision ");
    let ignored_before = controller.metric("palisade_kube_updates_ignored_total{kind=\"Pod\"}");
    let burst = Instant::now();
    for mut p in pods.iter().cloned() {
        p["status"]["conditions"] = serde_json::json!([{"type": "Ready", "status": "False"}]);
        p["metadata"]["annotations"] = serde_json::json!({"loadtest/touched": "yes"});
        emulator.apply(Resource::Pods, p);
    }
    let want = ignored_before + pods.len() as f64;
    until(
        Duration::from_secs(300),
        "every status update received",
        || controller.metric("palisade_kube_updates_ignored_total{kind=\"Pod\"}") >= want,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", controller.tail()))?;
    let status_burst_seconds = burst.elapsed().as_secs_f64();
    let status_updates_ignored = (controller
        .metric("palisade_kube_updates_ignored_total{kind=\"Pod\"}")
        - ignored_before) as u64;
    let status_update_revisions =
        (controller.metric("palisade_revision ") - revision_before) as u64;
    let controller_peak_rss_bytes = controller.pid().map_or(0, peak_rss_of);
    shutdown.cancel();
    fleet::stop_all(&mut agents).await;
    Ok(KubeReport {
        pods: shape.pods,
        namespaces: shape.namespaces,
        policies: shape.policies,
        nodes: shape.nodes,
        emulator_load_seconds,
        initial_list_to_commit_seconds,
        start_to_commit_seconds,
        initial_entries,
        batch_delay_ms: ms(o.batch_delay),
        event_to_agent_ms: percentiles(samples),
        event_to_commit_ms,
        status_updates: pods.len(),
        status_updates_ignored,
        status_update_revisions,
        status_burst_seconds,
        controller_peak_rss_bytes,
    })
}

pub fn table(r: &KubeReport) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    format!(
        "Kubernetes source: {} pods, {} namespaces, {} policies, {} nodes (emulator filled in {:.1} s)\n\
         initial list -> committed      {:>9.2} s   (process start -> committed {:.2} s; {} log entries)\n\
         pod event -> agent applied     p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} events; batch delay {:.0} ms)\n\
         event -> committed (controller) p50 <= {:.0} ms  p99 <= {:.0} ms\n\
         status-only updates            {} sent, {} ignored, {} revisions, {:.2} s\n\
         controller peak RSS            {:.0} MiB\n",
        r.pods,
        r.namespaces,
        r.policies,
        r.nodes,
        r.emulator_load_seconds,
        r.initial_list_to_commit_seconds,
        r.start_to_commit_seconds,
        r.initial_entries,
        r.event_to_agent_ms.p50,
        r.event_to_agent_ms.p99,
        r.event_to_agent_ms.max,
        r.event_to_agent_ms.samples,
        r.batch_delay_ms,
        r.event_to_commit_ms.p50_at_most,
        r.event_to_commit_ms.p99_at_most,
        r.status_updates,
        r.status_updates_ignored,
        r.status_update_revisions,
        r.status_burst_seconds,
        mib(r.controller_peak_rss_bytes),
    )
}
