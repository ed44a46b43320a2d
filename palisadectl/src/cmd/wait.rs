//! `palisadectl wait`: wait until a revision (or the one holding some files) is realized.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use palisadectl::output::Output;
use palisadectl::{load, remote};

use super::{exit, runtime, ConnArgs};

/// Wait until a revision is realized (every affected node acked it), or the timeout;
/// says which nodes lag. Exit status 3 when not realized.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  palisadectl wait 1234                                  # the revision apply printed
  palisadectl wait --for-file manifests/20-policies.yaml # after editing a watched file
  palisadectl wait                                       # whatever is latest now")]
pub struct Wait {
    /// Revision number, or `latest`.
    #[arg(default_value = "latest", conflicts_with = "for_file")]
    revision: String,
    /// Wait for the revision that holds every object these files define, exactly as they
    /// define it (a file edited in the controller's manifests directory, or applied), then
    /// until it is realized. Repeatable; directories are read as `-f` reads them.
    /// Objects deleted from a file cannot be seen in it: wait on the revision `delete`
    /// printed.
    #[arg(long, value_name = "PATH")]
    for_file: Vec<PathBuf>,
    /// Namespace of objects in --for-file whose metadata names none (as the controller's
    /// --namespace).
    #[arg(long, value_name = "NAMESPACE", default_value = "default")]
    default_namespace: String,
    /// How long to wait.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Wait {
    pub fn run(self) -> Result<ExitCode> {
        let Wait {
            revision,
            for_file,
            default_namespace,
            timeout,
            conn,
            output,
        } = self;
        let mut revision = match revision.as_str() {
            "latest" => None,
            r => Some(r.parse::<u64>().map_err(|_| {
                anyhow::anyhow!("REVISION must be a number or `latest`, not '{r}'")
            })?),
        };
        let conn = conn.conn()?;
        let rt = runtime()?;
        let started = std::time::Instant::now();
        if !for_file.is_empty() {
            let loaded = load::load(&for_file, &default_namespace)?;
            if loaded.report() {
                anyhow::bail!("the files hold objects the controller rejects too: it will never hold them as written");
            }
            let objects: Vec<_> = loaded.objects.values().map(|(_, o)| o).collect();
            match rt.block_on(palisadectl::held::revision_holding(
                &conn, &objects, timeout,
            )) {
                Ok(r) => {
                    eprintln!(
                        "the controller holds the files' {} objects at revision {r}",
                        objects.len()
                    );
                    revision = Some(r);
                }
                Err(remote::RemoteError::NotYet(why)) => {
                    eprintln!("{why}");
                    return Ok(exit(false, true));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (text, realized) = rt.block_on(remote::wait(
            &conn,
            revision,
            timeout.saturating_sub(started.elapsed()),
            output.structured(),
        ))?;
        print!("{}", output.render(text));
        Ok(exit(false, !realized))
    }
}
