//! `palisadectl version`: the client's version and the controller's.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::output::Output;
use palisadectl::remote;

use super::{runtime, ConnArgs};

/// The client's version and the controller's (of the replica that answers). With
/// --client, no controller is asked. Exit status 1 when the controller cannot be reached
/// (the client's version is printed first).
#[derive(clap::Args)]
pub struct Version {
    /// Only the client's version.
    #[arg(long)]
    client: bool,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Version {
    pub fn run(self) -> Result<ExitCode> {
        let Version {
            client,
            conn,
            output,
        } = self;
        let mine = env!("CARGO_PKG_VERSION");
        let server = if client {
            None
        } else {
            Some(runtime()?.block_on(remote::server_version(&conn.conn()?)))
        };
        if output.structured() {
            let mut v = serde_json::json!({"clientVersion": {"palisadectl": mine}});
            if let Some(Ok((version, replica))) = &server {
                v["serverVersion"] =
                    serde_json::json!({"palisadeController": version, "replica": replica});
            }
            let text = serde_json::to_string_pretty(&v).expect("serialisable") + "\n";
            print!("{}", output.render(text));
        } else {
            println!("Client Version: palisadectl {mine}");
            if let Some(Ok((version, replica))) = &server {
                println!("Server Version: palisade-controller {version} (replica {replica})");
            }
        }
        match server {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(ExitCode::SUCCESS),
        }
    }
}
