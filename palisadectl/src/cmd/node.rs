//! `palisadectl node`: one node on the running controller, optionally with its slice.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::fresh::ReadArgs;
use palisadectl::output::Output;
use palisadectl::remote;

use super::{runtime, ConnArgs};

/// One node on the running controller, optionally with its slice.
#[derive(clap::Args)]
pub struct Node {
    /// Node name.
    name: String,
    /// Show the node's slice too.
    #[arg(long)]
    slice: bool,
    /// With --slice: only the endpoints of this namespace (and the address sets their
    /// rules use).
    #[arg(short = 'n', long, requires = "slice")]
    namespace: Option<String>,
    #[command(flatten)]
    read: ReadArgs,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Node {
    pub fn run(self) -> Result<ExitCode> {
        let Node {
            name,
            slice,
            namespace,
            read,
            conn,
            output,
        } = self;
        let slice = slice.then_some(remote::SliceView {
            namespace: namespace.as_deref(),
        });
        print!(
            "{}",
            output.render(runtime()?.block_on(remote::node(
                &conn.conn()?,
                &name,
                slice,
                read,
                output.structured()
            ))?)
        );
        Ok(ExitCode::SUCCESS)
    }
}
