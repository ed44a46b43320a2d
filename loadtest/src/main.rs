use anyhow::{ensure, Result};
use clap::{Parser, Subcommand, ValueEnum};
use palisade_loadtest::{
    cluster, compile, datapath, failover, kube, raft, replicas, sync, synth::Shape,
};

/// Palisade load tests: synthetic multi-tenant clusters at scale, measured.
#[derive(Parser)]
#[command(name = "palisade-loadtest", version)]
struct Cli {
    /// The log level and format of the controller processes the load test starts (its
    /// simulated agents run in its own process, which logs only its progress and results).
    #[command(flatten)]
    log: palisade_telemetry::LogArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// A real controller and real agents (in-memory dataplane) in one process over loopback
    /// gRPC with mTLS: the synthetic cluster is written as one manifest file per namespace,
    /// every agent syncs, then single-pod edits are timed from the file write to every
    /// affected agent's ack, with the bytes each change puts on the wire.
    Sync {
        /// Agents, one per node.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[command(flatten)]
        cluster: Cluster,
        /// Single-pod edits to time.
        #[arg(long, default_value_t = 100)]
        edits: usize,
        /// Plaintext instead of mTLS.
        #[arg(long)]
        insecure: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// A Raft group of real controller replicas in one process (own state directories and
    /// threads; peers over loopback gRPC with mTLS): proposal -> applied on every replica for
    /// single objects and batches, the log's disk use after many commands with compaction,
    /// and (with --catch-up) a replica that was down during a large load catching up by
    /// snapshot.
    Raft {
        #[arg(long, default_value_t = 3)]
        replicas: u64,
        /// Single-object proposals to time.
        #[arg(long, default_value_t = 500)]
        singles: usize,
        /// Batch proposals to time.
        #[arg(long, default_value_t = 20)]
        batches: usize,
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        /// Commands for the disk measurement (0 skips it).
        #[arg(long, default_value_t = 100_000)]
        disk_commands: usize,
        /// Commands per entry in the disk measurement.
        #[arg(long, default_value_t = 10)]
        disk_entry: usize,
        /// Entries between state-machine snapshots.
        #[arg(long, default_value_t = 2000)]
        snapshot_every: u64,
        /// Load a synthetic cluster (--pods, --namespaces, --policies, --nodes), then restart
        /// restart one replica that was down meanwhile and time its catch-up by snapshot.
        #[arg(long)]
        catch_up: bool,
        #[arg(long, default_value_t = 150_000)]
        pods: usize,
        #[arg(long, default_value_t = 10_000)]
        namespaces: usize,
        #[arg(long, default_value_t = 75_000)]
        policies: usize,
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        /// Plaintext instead of mTLS.
        #[arg(long)]
        insecure: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Three controller replicas as processes of the real binary (loopback, mTLS, the leader
    /// ingesting one manifests directory) and many real agents in this process given every
    /// replica's address: once every agent holds its slice, SIGKILL the leader (--kills
    /// times, restarting it in between) and time the new leader and every agent streaming
    /// from a live replica, with the bytes those resumes cost against a full resync.
    Failover {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[command(flatten)]
        cluster: Cluster,
        /// Leader kills to measure (the killed replica restarts before the next).
        #[arg(long, default_value_t = 3)]
        kills: usize,
        /// Single-pod edits after the initial sync, each timed to realized as a follower
        /// sees it (the staleness of cluster-wide rollout state in steady operation).
        #[arg(long, default_value_t = 50)]
        edits: usize,
        /// Where palisade-controller is (default: beside this binary).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Scale and chaos: three (or five) controller replicas as processes of the real binary
    /// (loopback, mTLS) and many real agents in this process, the cluster loaded through the
    /// standalone store (`palisadectl apply`'s API) or served by the Kubernetes API-server
    /// emulator (--source kubernetes), then changes at a steady rate by a weighted mix while
    /// faults are injected on their periods. A checker runs at the end
    /// (exit status 3 when it fails): every acknowledged change is in the final state, every
    /// agent's versions only went up, every ack named its version's digest, every agent and
    /// replica ends at a fresh compile's digests. Progress on stderr; the report (-o table or
    /// json) on stdout; with --plots DIR, SVG plots.
    Cluster {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[command(flatten)]
        cluster: Cluster,
        /// Controller replicas (3 or 5 for a group that survives failures).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
        replicas: u64,
        /// Where the objects come from: the standalone store (each change sent to a random
        /// live replica), or the Kubernetes API (an API-server emulator in this process whose
        /// kubeconfig every replica gets; the leader lists and watches it; each change is
        /// written there and timed until a replica holds it).
        #[arg(long, value_enum, default_value = "store")]
        source: cluster::feed::Source,
        /// How long the churn runs.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Changes per second (each one object, sent to a random live replica).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Weights of the changes: pod-add, pod-delete, pod-label, policy-add,
        /// policy-delete, ns-label.
        #[arg(
            long,
            default_value = "pod-add=3,pod-delete=3,pod-label=2,policy-add=1,policy-delete=1,ns-label=1"
        )]
        mix: cluster::churn::Mix,
        #[command(flatten)]
        faults: cluster::faults::FaultPlan,
        /// Plant a fault the checker must catch: the last replica skips one committed entry
        /// a few changes into the churn (so it diverges from its group).
        #[arg(long)]
        plant_fault: bool,
        /// How long every agent may take to hold its final slice after the churn.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        settle: std::time::Duration,
        /// Write SVG plots into this directory (created if missing).
        #[arg(long)]
        plots: Option<std::path::PathBuf>,
        /// Where palisade-controller is (default: beside this binary).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
        /// More arguments for every replica (repeatable), e.g. --controller-arg=--history-updates=8.
        #[arg(long = "controller-arg", allow_hyphen_values = true)]
        controller_args: Vec<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The Kubernetes source at scale: the synthetic cluster served by the API-server
    /// emulator (real HTTP, in this process) to one controller process given a kubeconfig:
    /// the initial list to its revision committed, single pod events to the revision applied
    /// on the pod's node (agents in this process), a burst of status-only pod updates (which
    /// must commit nothing), the controller's peak RSS.
    Kube {
        #[arg(long, default_value_t = 150_000)]
        pods: usize,
        #[arg(long, default_value_t = 10_000)]
        namespaces: usize,
        #[arg(long, default_value_t = 75_000)]
        policies: usize,
        /// Nodes the pods are spread over.
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        /// Single pod events to time.
        #[arg(long, default_value_t = 200)]
        events: usize,
        /// Agents (nodes) the events' pods are spread over.
        #[arg(long, default_value_t = 10)]
        event_nodes: usize,
        /// Status-only pod updates in the burst.
        #[arg(long, default_value_t = 10_000)]
        burst: usize,
        /// The controller's --kube-batch-delay.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        batch_delay: std::time::Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where palisade-controller is (default: beside this binary).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
        /// More arguments for the controller (repeatable), e.g. --controller-arg=--history-updates=8.
        #[arg(long = "controller-arg", allow_hyphen_values = true)]
        controller_args: Vec<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Per-packet verdict cost of the TC programs, measured in the kernel with
    /// BPF_PROG_TEST_RUN, at growing rule counts (needs root and BPF).
    Datapath {
        /// Rule-entry counts to measure, smallest first.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,100000")]
        rules: Vec<usize>,
        /// Packets per kernel run.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Runs per measurement; the median is reported.
        #[arg(long, default_value_t = 7)]
        trials: usize,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Compile a synthetic cluster: full-compile time and peak RSS, then the latency of
    /// single incremental commands (pod add, pod label change, policy add, namespace label
    /// change), then slice sizes per node. Progress goes to stderr, the report to stdout.
    Compile {
        /// Nodes the pods are spread over.
        #[arg(long, default_value_t = 5000, env = "PALISADE_LT_NODES")]
        nodes: usize,
        /// Pods (plus 60 system pods in kube-system, ingress-nginx and monitoring).
        #[arg(long, default_value_t = 150_000, env = "PALISADE_LT_PODS")]
        pods: usize,
        /// Tenant namespaces (four per tenant).
        #[arg(long, default_value_t = 10_000, env = "PALISADE_LT_NAMESPACES")]
        namespaces: usize,
        /// NetworkPolicies, spread evenly over the namespaces.
        #[arg(long, default_value_t = 75_000, env = "PALISADE_LT_POLICIES")]
        policies: usize,
        /// Incremental commands timed per kind.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Full compiles to run; the median is reported, with every run's time.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Skip the slice-size pass (materialising and encoding every node's slice).
        #[arg(long)]
        skip_sizes: bool,
        /// Seed of the generator: the same seed gives the same cluster.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Report format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// The synthetic cluster of the tests with agents (one per node).
#[derive(clap::Args)]
struct Cluster {
    #[arg(long, default_value_t = 30_000)]
    pods: usize,
    #[arg(long, default_value_t = 2000)]
    namespaces: usize,
    #[arg(long, default_value_t = 15_000)]
    policies: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl Cluster {
    fn shape(&self, agents: usize) -> Result<Shape> {
        ensure!(
            agents > 0 && self.namespaces > 0,
            "--agents and --namespaces must be at least 1"
        );
        Ok(Shape {
            nodes: agents,
            pods: self.pods,
            namespaces: self.namespaces,
            policies: self.policies,
            seed: self.seed,
        })
    }
}

/// Run `f` on a multi-threaded runtime.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// Print `report` as JSON or as `table` renders it.
fn print<R: serde::Serialize>(output: Output, report: &R, table: fn(&R) -> String) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(report)?),
        Output::Table => print!("{}", table(report)),
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.log.pass_to_children();
    match cli.command {
        Cmd::Raft {
            replicas,
            singles,
            batches,
            batch_size,
            disk_commands,
            disk_entry,
            snapshot_every,
            catch_up,
            pods,
            namespaces,
            policies,
            nodes,
            insecure,
            output,
        } => {
            ensure!(replicas > 0, "--replicas must be at least 1");
            let opts = raft::RaftOptions {
                replicas,
                singles,
                batches,
                batch_size: batch_size.max(1),
                disk_commands,
                disk_entry: disk_entry.max(1),
                snapshot_every: snapshot_every.max(1),
                catch_up: catch_up.then_some(Shape {
                    nodes: nodes.max(1),
                    pods,
                    namespaces: namespaces.max(1),
                    policies,
                    seed: 1,
                }),
                insecure,
            };
            let report = block_on(raft::run(&opts, &|m| eprintln!("{m}")))??;
            print(output, &report, raft::table)?;
        }
        Cmd::Datapath {
            rules,
            repeat,
            trials,
            output,
        } => {
            ensure!(
                !rules.is_empty() && rules.iter().all(|r| *r > 0),
                "--rules: counts of at least 1"
            );
            ensure!(
                repeat > 0 && trials > 0,
                "--repeat and --trials must be at least 1"
            );
            let rows = datapath::run(&rules, repeat, trials, &|m| eprintln!("{m}"))?;
            print(output, &rows, |r| datapath::table(r))?;
        }
        Cmd::Sync {
            agents,
            cluster,
            edits,
            insecure,
            output,
        } => {
            let opts = sync::SyncOptions {
                shape: cluster.shape(agents)?,
                edits,
                insecure,
            };
            let report = block_on(sync::run(&opts, &|m| eprintln!("{m}")))??;
            print(output, &report, sync::table)?;
        }
        Cmd::Failover {
            agents,
            cluster,
            kills,
            edits,
            bin_dir,
            output,
        } => {
            let opts = failover::FailoverOptions {
                shape: cluster.shape(agents)?,
                kills,
                edits,
                bin_dir: bin_dir.unwrap_or_else(replicas::beside_executable),
            };
            let report = block_on(failover::run(&opts, &|m| eprintln!("{m}")))??;
            print(output, &report, failover::table)?;
        }
        Cmd::Cluster {
            agents,
            cluster,
            replicas: group,
            source,
            duration,
            rate,
            mix,
            faults,
            plant_fault,
            settle,
            plots,
            bin_dir,
            controller_args,
            output,
        } => {
            ensure!(rate > 0.0, "--rate must be above 0");
            ensure!(
                (0.0..=1.0).contains(&faults.agent_fraction),
                "--agent-fraction is a share: from 0 to 1"
            );
            let opts = cluster::ClusterOptions {
                shape: cluster.shape(agents)?,
                source,
                replicas: group,
                duration,
                rate,
                mix,
                faults,
                plant_fault,
                settle,
                plots,
                bin_dir: bin_dir.unwrap_or_else(replicas::beside_executable),
                controller_args,
            };
            let report = block_on(cluster::run(&opts, &|m| eprintln!("{m}")))??;
            print(output, &report, cluster::report::table)?;
            if !report.check.passed {
                eprintln!("the checker FAILED (see the report)");
                std::process::exit(3);
            }
        }
        Cmd::Kube {
            pods,
            namespaces,
            policies,
            nodes,
            events,
            event_nodes,
            burst,
            batch_delay,
            seed,
            bin_dir,
            controller_args,
            output,
        } => {
            ensure!(
                nodes > 0 && namespaces > 0 && event_nodes > 0 && event_nodes <= nodes,
                "--nodes and --namespaces at least 1; --event-nodes from 1 to --nodes"
            );
            let opts = kube::KubeOptions {
                shape: Shape {
                    nodes,
                    pods,
                    namespaces,
                    policies,
                    seed,
                },
                events,
                event_nodes,
                burst,
                batch_delay,
                bin_dir: bin_dir.unwrap_or_else(replicas::beside_executable),
                controller_args,
            };
            let report = block_on(kube::run(&opts, &|m| eprintln!("{m}")))??;
            print(output, &report, kube::table)?;
        }
        Cmd::Compile {
            nodes,
            pods,
            namespaces,
            policies,
            samples,
            runs,
            skip_sizes,
            seed,
            output,
        } => {
            ensure!(
                nodes > 0 && namespaces > 0,
                "--nodes and --namespaces must be at least 1"
            );
            let shape = Shape {
                nodes,
                pods,
                namespaces,
                policies,
                seed,
            };
            let opts = compile::Options {
                runs,
                samples,
                skip_sizes,
            };
            let report = compile::run(&shape, &opts, &|m| eprintln!("{m}"));
            print(output, &report, compile::table)?;
        }
    }
    Ok(())
}
