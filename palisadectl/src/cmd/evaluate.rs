//! `palisadectl evaluate`: reachability between pods (matrices, or one flow explained),
//! from manifests.

use std::process::ExitCode;

use anyhow::Result;
use palisade_policy::cluster::{ClusterView, Probe};
use palisadectl::output::Output;
use palisadectl::{evaluate, lint, load};

use super::{exit, Manifests};

/// Reachability between pods, computed from the per-node slices as the datapath
/// evaluates them.
///
/// With --probe: one matrix per probe over every pod with an address (rows: source,
/// columns: destination). With --from/--to: one flow, explained (which direction
/// isolated it, which policies and rules allowed it).
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  palisadectl evaluate -f examples/microservices --probe 80/TCP --probe 8080/TCP\n  palisadectl evaluate -f examples/microservices --from microservices/frontend --to microservices/backend --port 8080\n  palisadectl evaluate -f examples/microservices --from 203.0.113.7 --to microservices/frontend --port 80 -o json"
)]
pub struct Evaluate {
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

    /// Only pods of this namespace in the matrices (rows and columns). Repeatable.
    #[arg(
        short = 'n',
        long = "namespace",
        value_name = "NAMESPACE",
        conflicts_with = "from"
    )]
    namespaces: Vec<String>,

    /// One row and column a namespace: . when every pod pair is allowed, ~ some, X none
    /// (JSON: allowed pairs of all pairs).
    #[arg(long, value_name = "WHAT", value_parser = ["namespace"], conflicts_with = "from")]
    group_by: Option<String>,

    /// Destination port of the flow to explain.
    #[arg(long, requires = "from", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,

    /// Protocol of the flow to explain: TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = evaluate::parse_protocol, requires = "from")]
    protocol: palisade_policy::model::Protocol,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Evaluate {
    pub fn run(self) -> Result<ExitCode> {
        let Evaluate {
            manifests,
            probe,
            from,
            to,
            port,
            protocol,
            namespaces,
            group_by,
            output,
        } = self;
        let loaded = load::load(&manifests.files, &manifests.default_namespace)?;
        let engine = loaded.engine();
        let matrix = evaluate::MatrixOptions {
            namespaces,
            group_by_namespace: group_by.is_some(),
        };
        let view = ClusterView::new(&engine);
        let json = output.structured();
        let text;
        let mut denied = false;
        if let (Some(from), Some(to), Some(port)) = (from, to, port) {
            let src = evaluate::resolve(&view, &from, "--from")?;
            let dst = evaluate::resolve(&view, &to, "--to")?;
            let e = evaluate::explain(&engine, &view, src, dst, Probe { port, protocol }, json);
            denied = !e.allowed;
            text = e.text;
        } else if json {
            text = evaluate::matrix_json(&view, &probe, &matrix) + "\n";
        } else {
            text = evaluate::matrix_table(&view, &probe, &matrix);
        }
        print!("{}", output.render(text));
        for w in lint::warnings(&lint::findings(&loaded, &Default::default())) {
            eprintln!("warning: {w}");
        }
        Ok(exit(loaded.report(), denied))
    }
}
