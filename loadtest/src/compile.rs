//! `palisade-loadtest compile`: full-compile time and memory of a synthetic cluster, then the
//! latency of single incremental commands, then slice sizes.

use std::time::Instant;

use palisade_policy::lower;
use palisade_policy::model::{
    Command, NetworkPolicy, ObjKey, Peer, PolicyRule, PortRef, PortSpec, Protocol, Selector,
};
use palisade_policy::Engine;
use serde::Serialize;

use crate::synth::{self, Rng, Shape};

#[derive(Serialize, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

pub fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        max: v.last().copied().unwrap_or(0.0),
        samples: v.len(),
    }
}

#[derive(Serialize)]
pub struct Incremental {
    pub pod_add: Percentiles,
    pub pod_label_change: Percentiles,
    pub policy_add: Percentiles,
    pub namespace_label_change: Percentiles,
}

#[derive(Serialize)]
pub struct MeanMax {
    pub mean: f64,
    pub max: usize,
}

#[derive(Serialize)]
pub struct Report {
    pub nodes: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub seed: u64,
    /// Median wall-clock time of the full compiles.
    pub full_compile_seconds: f64,
    /// Every full compile's wall-clock time, in run order.
    pub full_compile_runs: Vec<f64>,
    /// Peak resident set of the process after the full compile (VmHWM).
    pub peak_rss_bytes: u64,
    /// One lint of the whole cluster (`palisade_policy::lint`), after the full compile.
    pub lint_seconds: f64,
    pub lint_findings: usize,
    /// Microseconds per command, engine.apply including delta construction.
    pub incremental_us: Incremental,
    /// Nodes whose slice changed, per command kind (mean).
    pub nodes_changed_mean: IncrementalNodes,
    /// Slice elements per node (endpoints + rules + sets + set members); null with
    /// --skip-sizes, like the other size fields.
    pub entries_per_node: Option<MeanMax>,
    /// eBPF map entries per node after lowering (a sample of nodes).
    pub map_entries_per_node: Option<MeanMax>,
    pub map_entries_sampled_nodes: usize,
    /// Canonical encoding of each node's slice.
    pub encoded_bytes_per_node: Option<MeanMax>,
    pub encoded_bytes_total: Option<u64>,
    /// Peak resident set at the end (after materialising every slice once).
    pub peak_rss_bytes_end: u64,
}

#[derive(Serialize, Default)]
pub struct IncrementalNodes {
    pub pod_add: f64,
    pub pod_label_change: f64,
    pub policy_add: f64,
    pub namespace_label_change: f64,
}

/// Peak resident set size of this process, from /proc (0 where unavailable).
pub fn peak_rss_bytes() -> u64 {
    peak_rss_at("/proc/self/status")
}

/// Peak resident set size of process `pid` (0 where unavailable).
pub fn peak_rss_of(pid: u32) -> u64 {
    peak_rss_at(&format!("/proc/{pid}/status"))
}

fn peak_rss_at(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn timed(
    engine: &mut Engine,
    rev: &mut u64,
    c: Command,
    times: &mut Vec<f64>,
    changed: &mut usize,
) {
    *rev += 1;
    let t = Instant::now();
    let updates = engine.apply(*rev, c);
    times.push(t.elapsed().as_secs_f64() * 1e6);
    *changed += updates.len();
    drop(updates);
}

fn extra_policy(ns: &str, n: usize) -> NetworkPolicy {
    NetworkPolicy {
        key: ObjKey::new(ns, &format!("extra-{n}")),
        pod_selector: Selector::from_labels([("tier", "db")]),
        ingress: Some(vec![PolicyRule {
            peers: Some(vec![Peer::Pods {
                namespaces: None,
                pods: Selector::from_labels([("tier", "api")]),
            }]),
            ports: Some(vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Range(5432, 5432),
            }]),
        }]),
        egress: None,
        ignored: Default::default(),
    }
}

/// What to measure besides the full compile.
pub struct Options {
    /// Full compiles to run (the median is reported).
    pub runs: usize,
    /// Incremental commands timed per kind.
    pub samples: usize,
    /// Skip materialising every slice for size statistics.
    pub skip_sizes: bool,
}

pub fn run(shape: &Shape, opts: &Options, progress: &dyn Fn(&str)) -> Report {
    let samples = opts.samples;
    let mut runs = Vec::new();
    let mut engine = Engine::new();
    let total = opts.runs.max(1);
    for r in 0..total {
        drop(std::mem::take(&mut engine));
        progress(&format!(
            "full compile {}/{total}: {} nodes, {} pods, {} namespaces, {} policies",
            r + 1,
            shape.nodes,
            shape.pods,
            shape.namespaces,
            shape.policies
        ));
        // The input is generated before the clock starts: a controller receives its objects
        // already decoded; the generator's own cost is not the compiler's.
        let input: Vec<Command> = synth::commands(shape).collect();
        let t = Instant::now();
        engine = Engine::load(1, input);
        runs.push(t.elapsed().as_secs_f64());
        progress(&format!(
            "  {:.3} s, peak RSS {} MiB",
            runs[r],
            peak_rss_bytes() >> 20
        ));
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let full_compile_seconds = sorted[sorted.len() / 2];
    let peak_rss = peak_rss_bytes();
    progress("lint of the whole cluster");
    let t = Instant::now();
    let lint_findings = palisade_policy::lint::lint(&engine, &Default::default()).len();
    let lint_seconds = t.elapsed().as_secs_f64();
    progress(&format!("  {lint_seconds:.3} s, {lint_findings} findings"));

    let mut rng = Rng::new(shape.seed ^ 0x5eed);
    let mut rev = 1u64;
    let (mut t_add, mut t_label, mut t_pol, mut t_ns) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut changed = [0usize; 4];
    progress(&format!("incremental: {samples} commands of each kind"));
    for i in 0..samples {
        let ns = rng.below(shape.namespaces);
        let k = shape.pods + i;
        let p = synth::pod(
            &synth::ns_name(ns),
            format!("new-{i}"),
            rng.below(synth::APPS_PER_NAMESPACE),
            rng.below(shape.nodes),
            synth::pod_ip(k),
        );
        timed(
            &mut engine,
            &mut rev,
            Command::UpsertPod(p),
            &mut t_add,
            &mut changed[0],
        );

        let victim = rng.below(shape.pods);
        let key = ObjKey::new(
            &synth::ns_name(victim % shape.namespaces),
            &format!("pod-{victim}"),
        );
        if let Some(old) = engine.pod(&key) {
            let mut p = old.clone();
            let app = (rng.below(synth::APPS_PER_NAMESPACE) + 1) % synth::APPS_PER_NAMESPACE;
            p.labels.insert("app".into(), format!("app{app}"));
            p.labels
                .insert("tier".into(), ["web", "api", "db"][app % 3].into());
            timed(
                &mut engine,
                &mut rev,
                Command::UpsertPod(p),
                &mut t_label,
                &mut changed[1],
            );
        }

        let pol = extra_policy(&synth::ns_name(rng.below(shape.namespaces)), i);
        timed(
            &mut engine,
            &mut rev,
            Command::UpsertPolicy(pol),
            &mut t_pol,
            &mut changed[2],
        );

        let n = rng.below(shape.namespaces);
        let tenants = shape.namespaces.div_ceil(synth::NAMESPACES_PER_TENANT);
        let ns = synth::namespace(n, rng.below(tenants));
        timed(
            &mut engine,
            &mut rev,
            Command::UpsertNamespace(ns),
            &mut t_ns,
            &mut changed[3],
        );
    }
    let mean = |c: usize, n: usize| c as f64 / n.max(1) as f64;
    let nodes_changed_mean = IncrementalNodes {
        pod_add: mean(changed[0], t_add.len()),
        pod_label_change: mean(changed[1], t_label.len()),
        policy_add: mean(changed[2], t_pol.len()),
        namespace_label_change: mean(changed[3], t_ns.len()),
    };
    let incremental_us = Incremental {
        pod_add: percentiles(t_add),
        pod_label_change: percentiles(t_label),
        policy_add: percentiles(t_pol),
        namespace_label_change: percentiles(t_ns),
    };

    let nodes = if opts.skip_sizes {
        Vec::new()
    } else {
        engine.nodes()
    };
    if !opts.skip_sizes {
        progress("slice sizes: materialising and encoding every node's slice");
    }
    let (mut entries, mut bytes, mut map_entries) = (Vec::new(), Vec::new(), Vec::new());
    let sample_every = (nodes.len() / 200).max(1);
    for (i, n) in nodes.iter().enumerate() {
        let s = engine.slice(&n.node);
        entries.push(s.entry_count());
        bytes.push(s.encode().len());
        if i % sample_every == 0 {
            map_entries.push(lower::lower(&s).entry_count());
        }
    }
    let sized = !opts.skip_sizes;
    let mm = |v: &[usize]| {
        sized.then(|| MeanMax {
            mean: v.iter().sum::<usize>() as f64 / v.len().max(1) as f64,
            max: v.iter().copied().max().unwrap_or(0),
        })
    };
    Report {
        nodes: shape.nodes,
        pods: shape.pods,
        namespaces: shape.namespaces,
        policies: shape.policies,
        seed: shape.seed,
        full_compile_seconds,
        full_compile_runs: runs,
        peak_rss_bytes: peak_rss,
        lint_seconds,
        lint_findings,
        incremental_us,
        nodes_changed_mean,
        entries_per_node: mm(&entries),
        map_entries_per_node: mm(&map_entries),
        map_entries_sampled_nodes: map_entries.len(),
        encoded_bytes_per_node: mm(&bytes),
        encoded_bytes_total: sized.then(|| bytes.iter().map(|b| *b as u64).sum()),
        peak_rss_bytes_end: peak_rss_bytes(),
    }
}

pub fn table(r: &Report) -> String {
    let p = |x: &Percentiles| {
        format!(
            "p50 {:>9.1} µs   p99 {:>9.1} µs   max {:>9.1} µs   ({} samples)",
            x.p50, x.p99, x.max, x.samples
        )
    };
    let runs: Vec<String> = r
        .full_compile_runs
        .iter()
        .map(|t| format!("{t:.2}"))
        .collect();
    let mut out = format!(
        "cluster            {} nodes, {} pods, {} namespaces, {} policies (seed {})\n\
         full compile       {:.3} s median of {} run(s) [{}], peak RSS {:.0} MiB\n\
         lint               {:.3} s, {} findings\n",
        r.nodes,
        r.pods,
        r.namespaces,
        r.policies,
        r.seed,
        r.full_compile_seconds,
        runs.len(),
        runs.join(" "),
        r.peak_rss_bytes as f64 / 1048576.0,
        r.lint_seconds,
        r.lint_findings,
    );
    let inc = &r.incremental_us;
    let changed = &r.nodes_changed_mean;
    for (name, x, n) in [
        ("pod add", &inc.pod_add, changed.pod_add),
        (
            "pod label change",
            &inc.pod_label_change,
            changed.pod_label_change,
        ),
        ("policy add", &inc.policy_add, changed.policy_add),
        (
            "namespace labels",
            &inc.namespace_label_change,
            changed.namespace_label_change,
        ),
    ] {
        out += &format!("{name:<18} {}   {n:.1} nodes changed\n", p(x));
    }
    match (
        &r.entries_per_node,
        &r.map_entries_per_node,
        &r.encoded_bytes_per_node,
        r.encoded_bytes_total,
    ) {
        (Some(e), Some(m), Some(b), Some(total)) => {
            out += &format!(
                "slice entries      mean {:.0}, max {} per node\n\
                 map entries        mean {:.0}, max {} per node ({} nodes sampled)\n\
                 encoded slices     mean {:.0} B, max {} B per node, {:.1} MiB total\n",
                e.mean,
                e.max,
                m.mean,
                m.max,
                r.map_entries_sampled_nodes,
                b.mean,
                b.max,
                total as f64 / 1048576.0
            );
        }
        _ => out += "slice sizes        skipped (--skip-sizes)\n",
    }
    out
}
