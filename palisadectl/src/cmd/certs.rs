//! `palisadectl certs`: mint a CA and certificates for a local Palisade.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use palisadectl::certs;

/// Mint a CA and certificates for a local Palisade: the controller (naming --host), one
/// per --replica of a Raft group (naming --host too), one per --node, one per --operator.
///
/// Run it again to add nodes: the CA and every certificate already in DIR are kept (so
/// adding a node re-mints nothing else); --renew replaces the requested ones. Keys are
/// written with mode 0600 from the start. Prints each file written, and on stderr what
/// was kept.
#[derive(clap::Args)]
#[command(
    after_help = "Rotation: certificates expire after --valid-for (default 1 year; the CA after 10 years).
Before then, renew them in place and restart (or roll) what uses them:
  palisadectl certs --dir palisade-certs --node node-1 --operator admin --renew
A renewed certificate is signed by the same CA, so the others keep trusting it. To replace
the CA itself, mint a new DIR and roll every component onto it.

Examples:
  palisadectl certs --dir palisade-certs --node node-1 --node node-2
  palisadectl certs --dir palisade-certs --node node-3            # adds node-3 only
  palisadectl certs --dir palisade-certs --replica 1 --replica 2 --replica 3 --valid-for 90d"
)]
pub struct Certs {
    /// Directory to write the PEM files to (created if missing).
    #[arg(long, default_value = "palisade-certs")]
    dir: PathBuf,
    /// DNS name or IP address agents and operators reach the controller at. Repeatable.
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    hosts: Vec<String>,
    /// Node to mint an agent certificate for. Repeatable.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Operator to mint an introspection certificate for. Repeatable.
    #[arg(long = "operator", default_values_t = ["admin".to_string()])]
    operators: Vec<String>,
    /// Replica id to mint a replica certificate for (replica-N.pem: its --tls-cert, also
    /// presented to its peers). Repeatable.
    #[arg(long = "replica", value_parser = clap::value_parser!(u64).range(1..))]
    replicas: Vec<u64>,
    /// How long new certificates are valid (e.g. 90d, 1y, 8760h).
    #[arg(long, default_value = "1y", value_parser = parse_validity)]
    valid_for: std::time::Duration,
    /// Replace the requested certificates that exist: the controller's, and those of the
    /// --node, --operator and --replica given (the CA is kept).
    #[arg(long)]
    renew: bool,
}

impl Certs {
    pub fn run(self) -> Result<ExitCode> {
        let Certs {
            dir,
            hosts,
            nodes,
            operators,
            replicas,
            valid_for,
            renew,
        } = self;
        let minted = certs::mint(&certs::Request {
            dir: &dir,
            hosts: &hosts,
            nodes: &nodes,
            operators: &operators,
            replicas: &replicas,
            valid_for,
            renew,
        })?;
        for f in &minted.written {
            println!("{}", f.display());
        }
        for f in &minted.kept {
            eprintln!("kept {} (it exists; --renew replaces it)", f.display());
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// A validity: humantime's durations (`90d`, `8760h`), and years (`1y`, `2y`).
fn parse_validity(s: &str) -> Result<std::time::Duration, String> {
    const YEAR: u64 = 365 * 24 * 3600;
    let d = match s.strip_suffix('y').map(str::parse::<u64>) {
        Some(Ok(years)) => std::time::Duration::from_secs(years.saturating_mul(YEAR)),
        _ => humantime::parse_duration(s).map_err(|e| format!("'{s}': {e} (e.g. 90d, 1y)"))?,
    };
    if d < std::time::Duration::from_secs(3600) {
        return Err(format!(
            "'{s}': a certificate must be valid for an hour at least"
        ));
    }
    if d > std::time::Duration::from_secs(100 * YEAR) {
        return Err(format!("'{s}': at most 100 years"));
    }
    Ok(d)
}
