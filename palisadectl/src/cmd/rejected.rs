//! `palisadectl rejected`: what the running controller rejected, could not represent, or
//! finds with lint.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::output::Output;
use palisadectl::remote;

use super::{runtime, ConnArgs, Outcome};

/// Objects the running controller rejected as invalid (exit status 4 when there is any),
/// then objects from the Kubernetes API in force with fields Palisade's schema lacks (a
/// newer Kubernetes'), each field with what was done about it (a rule, peer or port
/// holding one matches nothing), then the lint findings over its replicated state (valid
/// objects that are probably wrong, as `palisadectl lint` finds them; exit status 8 with
/// --strict).
#[derive(clap::Args)]
pub struct Rejected {
    /// Exit with status 8 (added to 4) when there is any lint finding.
    #[arg(long)]
    strict: bool,
    /// Only objects and findings of this namespace (its namespaced objects and the
    /// Namespace itself), and problems that name no object (a file that does not parse
    /// may hold any namespace's); the exit status counts only what is shown.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Rejected {
    pub fn run(self) -> Result<ExitCode> {
        let Rejected {
            strict,
            namespace,
            conn,
            output,
        } = self;
        let report = runtime()?.block_on(remote::rejected(
            &conn.conn()?,
            namespace.as_deref(),
            output.structured(),
        ))?;
        print!("{}", output.render(report.text));
        Ok(Outcome {
            rejected: report.rejected > 0,
            findings: strict && report.findings > 0,
            ..Outcome::default()
        }
        .code())
    }
}
