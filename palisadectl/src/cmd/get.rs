//! `palisadectl get`: objects as the running controller's replicated state holds them.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::fresh::ReadArgs;
use palisadectl::get;
use palisadectl::output::Output;

use super::{exit, runtime, ConnArgs};

/// Objects as the running controller's replicated state holds them: what Palisade
/// understood of each (selectors, ports and defaults resolved) and the source that owns
/// it (kubernetes, manifests or palisadectl), at the revision the replica has applied.
/// Exit status 3 when one is not held.
#[derive(clap::Args)]
pub struct Get {
    /// Namespace, Pod or NetworkPolicy (kubectl's names work too: ns, po, pods, netpol).
    kind: String,
    /// Names: NAMESPACE/NAME, or NAME in --namespace (a namespace's own name for
    /// namespaces).
    #[arg(required = true)]
    names: Vec<String>,
    /// The namespace of names given without one.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    read: ReadArgs,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Get {
    pub fn run(self) -> Result<ExitCode> {
        let Get {
            kind,
            names,
            namespace,
            read,
            conn,
            output,
        } = self;
        let got = runtime()?.block_on(get::get(
            &conn.conn()?,
            &kind,
            &names,
            &namespace,
            read,
            output,
        ))?;
        print!("{}", output.render(got.text));
        Ok(exit(false, !got.all_found))
    }
}
