//! `palisadectl apply` and `palisadectl delete`: change the controller's replicated store.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::output::Output;
use palisadectl::{load, store};

use super::{runtime, ConnArgs, Manifests};

/// What `apply` and `delete` take.
#[derive(clap::Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    manifests: Manifests,
    /// Validate and say what would change (or be deleted), without committing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl ChangeArgs {
    /// `apply`, or `delete` when `delete`.
    pub fn run(self, delete: bool) -> Result<ExitCode> {
        let ChangeArgs {
            manifests,
            dry_run,
            conn,
            output,
        } = self;
        let (sources, skipped) = load::read_sources(&manifests.files)?;
        for s in skipped {
            eprintln!("Warning: skipped {s}");
        }
        let change = store::Change {
            sources,
            namespace: manifests.default_namespace,
            delete,
            dry_run,
        };
        print!(
            "{}",
            output.render(runtime()?.block_on(store::apply(
                &conn.conn()?,
                change,
                output.structured()
            ))?)
        );
        Ok(ExitCode::SUCCESS)
    }
}
