//! `palisadectl explain`: one flow explained by the running controller.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::fresh::ReadArgs;
use palisadectl::output::Output;
use palisadectl::{evaluate, remote};

use super::{exit, runtime, ConnArgs};

/// Explain one flow on the running controller: against one node's slice (--node), or the
/// source node's egress and the destination node's ingress. Exit status 3 when denied.
#[derive(clap::Args)]
pub struct Explain {
    /// Source: NAMESPACE/POD or an IPv4 address.
    #[arg(long)]
    from: String,
    /// Destination: NAMESPACE/POD or an IPv4 address.
    #[arg(long)]
    to: String,
    /// Destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = evaluate::parse_protocol)]
    protocol: palisade_policy::model::Protocol,
    /// Evaluate against this node's slice only.
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    read: ReadArgs,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Explain {
    pub fn run(self) -> Result<ExitCode> {
        let Explain {
            from,
            to,
            port,
            protocol,
            node,
            read,
            conn,
            output,
        } = self;
        let req = palisade_proto::v1::ExplainFlowRequest {
            node: node.unwrap_or_default(),
            source: from,
            destination: to,
            protocol: i32::from(protocol.number()),
            port: u32::from(port),
            consistent: read.consistent,
        };
        let (text, allowed) =
            runtime()?.block_on(remote::explain(&conn.conn()?, req, output.structured()))?;
        print!("{}", output.render(text));
        Ok(exit(false, !allowed))
    }
}
