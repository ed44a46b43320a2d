//! `palisadectl nodes`: every node the running controller knows, with a summary line.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::fresh::ReadArgs;
use palisadectl::output::Output;
use palisadectl::remote;

use super::{runtime, ConnArgs};

/// Every node the running controller knows: versions, acks, lag, connection; a summary
/// line first (of every node, whatever is filtered).
#[derive(clap::Args)]
pub struct Nodes {
    /// Only nodes that have not acked their desired version.
    #[arg(long)]
    lagging: bool,
    /// Only nodes whose name matches this glob (`*`, `?`), e.g. 'pool-a-*'.
    #[arg(long, value_name = "GLOB")]
    name: Option<String>,
    #[command(flatten)]
    read: ReadArgs,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Nodes {
    pub fn run(self) -> Result<ExitCode> {
        let Nodes {
            lagging,
            name,
            read,
            conn,
            output,
        } = self;
        let filter = remote::NodeFilter { lagging, name };
        let text = runtime()?.block_on(remote::nodes(&conn.conn()?, &filter, read, output))?;
        print!("{}", output.render(text));
        Ok(ExitCode::SUCCESS)
    }
}
