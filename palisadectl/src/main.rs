use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use palisade_policy::cluster::{ClusterView, Probe};
use palisadectl::{demo, evaluate, load, show};

/// Palisade's command line: evaluate Kubernetes NetworkPolicy manifests exactly as Palisade
/// enforces them, and inspect the per-node policy slices it computes.
///
/// Exit status: 0 success; 1 error (nothing evaluated); 2 bad command line; 3 for
/// `evaluate --from/--to` when the flow is denied; 4 results printed but some objects were
/// invalid (rejected as the Kubernetes API server would reject them, and skipped).
#[derive(Parser)]
#[command(name = "palisadectl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct Manifests {
    /// Manifest file or directory (YAML or JSON; multi-document files and `kind: List` are
    /// read; directories are read recursively). Repeat for several; `-` reads stdin.
    /// Namespaces, Pods (spec.nodeName, status.podIP(s), container ports) and
    /// NetworkPolicies are used; other kinds are ignored.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    files: Vec<PathBuf>,

    /// Namespace of objects whose metadata names none.
    #[arg(
        short = 'n',
        long,
        default_value = "default",
        env = "PALISADE_NAMESPACE"
    )]
    namespace: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reachability between pods, computed from the per-node slices as the datapath
    /// evaluates them.
    ///
    /// With --probe: one matrix per probe over every pod with an address (rows: source,
    /// columns: destination). With --from/--to: one flow, explained (which direction
    /// isolated it, which policies and rules allowed it).
    #[command(
        after_help = "Examples:\n  palisadectl evaluate -f examples/microservices --probe 80/TCP --probe 8080/TCP\n  palisadectl evaluate -f examples/microservices --from microservices/frontend --to microservices/backend --port 8080\n  palisadectl evaluate -f examples/microservices --from 203.0.113.7 --to microservices/frontend --port 80 -o json"
    )]
    Evaluate {
        #[command(flatten)]
        manifests: Manifests,

        /// PORT/PROTOCOL to probe every pod pair with, e.g. 80/TCP, 53/UDP, 2905/SCTP
        /// (protocol defaults to TCP). Repeatable.
        #[arg(long, value_name = "PORT/PROTOCOL", value_parser = evaluate::parse_probe, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        probe: Vec<Probe>,

        /// Source of one flow to explain: NAMESPACE/POD or an IPv4 address (e.g. an
        /// external client).
        #[arg(long, value_name = "NS/POD|IP", requires_all = ["to", "port"])]
        from: Option<String>,

        /// Destination of the flow to explain: NAMESPACE/POD or an IPv4 address.
        #[arg(long, value_name = "NS/POD|IP", requires = "from")]
        to: Option<String>,

        /// Destination port of the flow to explain.
        #[arg(long, requires = "from", value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,

        /// Protocol of the flow to explain: TCP, UDP or SCTP.
        #[arg(long, default_value = "TCP", value_parser = evaluate::parse_protocol, requires = "from")]
        protocol: palisade_policy::model::Protocol,

        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },

    /// Show the policy slice Palisade computes for one node: its isolated endpoints, their
    /// allow rules, and the address sets those rules reference.
    Slice {
        #[command(flatten)]
        manifests: Manifests,

        /// Node name, as in the pods' spec.nodeName.
        #[arg(long)]
        node: String,

        /// Output format.
        #[arg(short, long, value_enum, default_value = "json")]
        output: Output,
    },

    /// Evaluate the seed scenarios embedded in this binary (the microservices chain behind
    /// default deny, and the others under examples/): no cluster and no files needed.
    Demo {
        /// Output format of the matrices.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Evaluate {
            manifests,
            probe,
            from,
            to,
            port,
            protocol,
            output,
        } => {
            let loaded = load::load(&manifests.files, &manifests.namespace)?;
            let view = ClusterView::new(&loaded.engine());
            let json = output == Output::Json;
            let text;
            let mut denied = false;
            if let (Some(from), Some(to), Some(port)) = (from, to, port) {
                let src = evaluate::resolve(&view, &from, "--from")?;
                let dst = evaluate::resolve(&view, &to, "--to")?;
                let e = evaluate::explain(&view, src, dst, Probe { port, protocol }, json);
                denied = !e.allowed;
                text = e.text;
            } else if json {
                text = evaluate::matrix_json(&view, &probe) + "\n";
            } else {
                text = evaluate::matrix_table(&view, &probe);
            }
            print!("{text}");
            Ok(exit(loaded.report(), denied))
        }
        Cmd::Slice {
            manifests,
            node,
            output,
        } => {
            let loaded = load::load(&manifests.files, &manifests.namespace)?;
            let engine = loaded.engine();
            if engine.node(&node).is_none() {
                let known: Vec<String> =
                    engine.nodes().iter().map(|n| n.node.to_string()).collect();
                bail!(
                    "no pod in the manifests is scheduled on node '{node}' (spec.nodeName); nodes: {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                );
            }
            let slice = engine.slice(&node);
            print!(
                "{}",
                if output == Output::Json {
                    show::json(&slice)
                } else {
                    show::table(&slice)
                }
            );
            Ok(exit(loaded.report(), false))
        }
        Cmd::Demo { output } => {
            print!("{}", demo::run(output == Output::Json)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit(rejected: bool, denied: bool) -> ExitCode {
    match (rejected, denied) {
        (true, _) => ExitCode::from(4),
        (false, true) => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
