//! `palisade-lab`: Palisade's main job end to end on one machine (see `--help`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use palisade_lab::demo::{self, MICROSERVICES, MICROSERVICES_PROBES};
use palisade_lab::{Lab, LabOptions};
use palisadectl::output::Output;

/// Palisade on real packets on one machine: nodes and pods in network namespaces wired like a
/// routed CNI, controller replicas (three by default), and a Palisade agent with the eBPF
/// dataplane on every node.
/// Needs root and BPF; without them, `demo` says so and runs the in-memory dataplane.
#[derive(Parser)]
#[command(name = "palisade-lab", version)]
struct Cli {
    /// The log level and format of the controllers and agents the lab runs.
    #[command(flatten)]
    log: palisade_telemetry::LogArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply manifests (the seed microservices chain by default) to a lab of nodes and pods,
    /// measure reachability with real connections and print it beside palisadectl's
    /// prediction, then show how to inspect the running controller.
    Demo {
        /// Directory of manifests (pods need spec.nodeName and status.podIP) instead of the
        /// embedded microservices chain.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Ports to probe, PORT/PROTOCOL (TCP or UDP); default: the chain's 80, 8080, 3306,
        /// 6379 over TCP.
        #[arg(long = "probe")]
        probes: Vec<String>,
        /// Keep the lab running until Ctrl-C, to inspect it.
        #[arg(long)]
        keep: bool,
        /// Lab number (1-254): network namespaces pl<N>-*, bridge 172.31.<N>.0/24.
        #[arg(long, default_value_t = 200)]
        id: u8,
        /// Where palisade-controller and palisade-agent are (default: beside this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Controller replicas (a Raft group). With more than one, the demo SIGKILLs the
        /// leader while probing traffic and shows the failover; 1 skips it.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3))]
        replicas: u64,
    },
    /// Measure on real packets: TCP throughput between pods with and without policy
    /// (iperf3), and the time from a policy change to its enforcement.
    Bench {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// iperf3 runs with and without policy (interleaved); medians are compared.
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Policy changes (deny, then allow again) to time.
        #[arg(long, default_value_t = 10)]
        changes: usize,
        #[arg(long, default_value_t = 201)]
        id: u8,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove what a lab left behind (namespaces, bridge, bpffs), e.g. after a crash.
    Clean {
        #[arg(long, default_value_t = 200)]
        id: u8,
    },
}

fn read_manifests(dir: &PathBuf) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    entries.sort();
    for p in entries {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.push((name, text));
    }
    if out.is_empty() {
        bail!("{}: no .yaml, .yml or .json files", dir.display());
    }
    Ok(out)
}

fn parse_probe(s: &str) -> Result<(u16, palisade_policy::model::Protocol)> {
    let p =
        palisadectl::evaluate::parse_probe(s).map_err(|e| anyhow::anyhow!("--probe {s}: {e}"))?;
    if p.protocol == palisade_policy::model::Protocol::Sctp {
        bail!("--probe {s}: this kernel has no SCTP sockets; probe TCP or UDP");
    }
    Ok((p.port, p.protocol))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.log.pass_to_children();
    match cli.command.unwrap_or(Cmd::Demo {
        manifests: None,
        probes: Vec::new(),
        keep: false,
        id: 200,
        bin_dir: None,
        replicas: 3,
    }) {
        Cmd::Bench {
            seconds,
            trials,
            changes,
            id,
            json,
        } => {
            if let Err(why) = palisade_lab::check_privileges() {
                bail!("the benchmark needs root, BPF and network namespaces: {why}");
            }
            if trials == 0 || seconds == 0 {
                bail!("--trials and --seconds must be at least 1");
            }
            let r = palisade_lab::bench::run(
                id,
                LabOptions::beside_executable(),
                seconds,
                trials,
                changes,
                &|m| eprintln!("{m}"),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", palisade_lab::bench::table(&r));
            }
            Ok(())
        }
        Cmd::Clean { id } => {
            palisade_lab::topology::Topology::cleanup(id);
            println!("removed lab {id}");
            Ok(())
        }
        Cmd::Demo {
            manifests,
            probes,
            keep,
            id,
            bin_dir,
            replicas,
        } => {
            let files = match &manifests {
                Some(d) => read_manifests(d)?,
                None => MICROSERVICES
                    .iter()
                    .map(|(n, t)| (n.to_string(), t.to_string()))
                    .collect(),
            };
            let probes = if probes.is_empty() {
                MICROSERVICES_PROBES.to_vec()
            } else {
                probes
                    .iter()
                    .map(|s| parse_probe(s))
                    .collect::<Result<_>>()?
            };
            let mut opts = LabOptions::beside_executable();
            opts.replicas = replicas;
            if replicas > 1 {
                opts.extra_nodes = palisade_lab::failover::standbys(&files, replicas)?;
            }
            if let Some(d) = bin_dir {
                opts.bin_dir = d;
            }
            if let Err(why) = palisade_lab::check_privileges() {
                println!(
                    "Cannot build network namespaces and load eBPF here ({why}): falling back to the \
                     in-memory dataplane.\nPolicy is compiled, distributed and acknowledged, but \
                     nothing is enforced on packets, so reachability is predicted, not measured.\n"
                );
                return palisade_lab::fallback::run(&files, &probes, &opts);
            }
            if !(1..=254).contains(&id) {
                bail!("--id {id}: a lab number is 1 to 254");
            }
            run(id, &files, &probes, opts, keep)
        }
    }
}

fn run(
    id: u8,
    files: &[(String, String)],
    probes: &[(u16, palisade_policy::model::Protocol)],
    opts: LabOptions,
    keep: bool,
) -> Result<()> {
    let started = Instant::now();
    let replicas = opts.replicas;
    println!("Building lab {id}: nodes and pods in network namespaces, {replicas} controller replica(s), an eBPF agent per node...");
    let mut lab = Lab::start(id, files, opts).context("cannot start the lab")?;
    println!(
        "{} nodes, {} pods; every node holds its slice after {:.1} s.\n",
        lab.topology.nodes.len(),
        lab.topology.pods.len(),
        started.elapsed().as_secs_f64()
    );
    for n in &lab.topology.nodes {
        let pods: Vec<String> = lab
            .topology
            .pods
            .iter()
            .filter(|p| p.spec.node == n.name)
            .map(|p| format!("{} {} ({})", p.spec.name, p.spec.ip, p.host_if))
            .collect();
        println!(
            "  node {} (netns {}, {}): {}",
            n.name,
            n.netns,
            n.uplink,
            pods.join(", ")
        );
    }
    println!();
    let (report, wrong) = demo::measure_and_compare(&lab, probes)?;
    println!("{report}");
    let mut failed_over = None;
    if replicas > 1 {
        let flows = lab.all_flows(probes);
        let predicted = lab.predicted(&flows)?;
        if let Some((allowed, denied)) = palisade_lab::failover::pick(&flows, &predicted) {
            println!("Failover: killing the leader replica while probing traffic...");
            let f = palisade_lab::failover::run(&mut lab, &allowed, &denied)?;
            println!("{}", f.report);
            failed_over = Some(f);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let nodes = rt.block_on(palisadectl::remote::nodes(
        &lab.conn,
        &Default::default(),
        Default::default(),
        Output::Table,
    ))?;
    println!(
        "$ palisadectl nodes --controller {} --insecure\n{nodes}",
        lab.conn.controller
    );
    let addr = lab.conn.controller.trim_start_matches("http://");
    let first = &lab.topology.nodes[0].name;
    println!(
        "Inspect it (with --keep, while it runs):\n\
         \x20 palisadectl nodes --controller {addr} --insecure\n\
         \x20 palisadectl node {first} --slice --controller {addr} --insecure\n\
         \x20 palisadectl explain --from {} --to {} --port 80 --controller {addr} --insecure\n\
         \x20 grpcurl -plaintext {addr} list\n\
         \x20 grpcurl -plaintext -d '{{\"node\": \"{first}\", \"include_slice\": true}}' {addr} palisade.v1.Introspection/GetNode\n\
         \x20 python3 controller/tests/reflection_client.py --addr {addr} --insecure --node {first}   # what grpcurl does, where it is not installed\n\
         \x20 ip netns exec {} curl -m1 http://<pod ip>:80/       # from a pod's namespace\n\
         \x20 cat {}/agent-{first}.log                                   # deny events are logged there\n",
        lab.topology.outside.spec.ip,
        lab.topology.pods[0].spec.name,
        lab.topology.pods[0].netns,
        lab.dir.display()
    );
    if keep {
        println!("Running until Ctrl-C...");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        rt.block_on(async move {
            let _ = tokio::signal::ctrl_c().await;
            s.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(lab);
    println!("Lab {id} removed.");
    if wrong > 0 {
        bail!("{wrong} measured verdicts differ from the prediction");
    }
    if let Some(f) = failed_over {
        if f.lapses > 0 {
            bail!(
                "{} probes saw enforcement lapse during the failover",
                f.lapses
            );
        }
        if f.snapshots > 0 {
            bail!(
                "{} agents needed a snapshot to resume after the failover",
                f.snapshots
            );
        }
    }
    Ok(())
}
