mod cmd;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Palisade's command line: evaluate Kubernetes NetworkPolicy manifests exactly as Palisade
/// enforces them, and inspect the per-node policy slices it computes.
///
/// Offline (`evaluate`, `slice`, `demo`) it reads manifests; online (`apply`, `delete`,
/// `nodes`, `node`, `wait`, `explain`, `rejected`, `replicas`) it talks to a running
/// controller, with an operator certificate.
///
/// Exit status: 0 success; 1 error (nothing else is said); 2 bad command line. Otherwise the
/// sum (bitwise OR) of what holds, so one never masks another: 3 a negative answer (a flow is
/// denied, a waited-for revision is not realized, an object asked for is not held);
/// 4 some objects were invalid (rejected as the Kubernetes API server would reject them, and
/// skipped; or `rejected` lists some); 8 lint findings under --strict. E.g. 7: denied, and
/// some objects rejected.
#[derive(Parser)]
#[command(name = "palisadectl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// The subcommands, in the order `--help` lists them. Each one's help is its struct's doc
// comment, in its module under `cmd/`; `apply` and `delete` share one struct, so theirs are
// here.
#[derive(Subcommand)]
enum Cmd {
    Evaluate(cmd::evaluate::Evaluate),
    Lint(cmd::lint::Lint),
    Slice(cmd::slice::Slice),
    Demo(cmd::demo::Demo),
    Certs(cmd::certs::Certs),

    /// Create or replace objects in the controller's replicated store (validated as the
    /// Kubernetes API server would; all or nothing). Prints the revision that holds them.
    #[command(after_help = "Examples:
  palisadectl apply -f examples/microservices
  cat policy.yaml | palisadectl apply -f -
  palisadectl wait $(palisadectl apply -f policy.yaml -o json | jq .revision)")]
    Apply(cmd::change::ChangeArgs),

    /// Delete the objects the files name from the controller's replicated store.
    Delete(cmd::change::ChangeArgs),

    Replicas(cmd::replicas::Replicas),
    Nodes(cmd::nodes::Nodes),
    Node(cmd::node::Node),
    Wait(cmd::wait::Wait),
    Explain(cmd::explain::Explain),
    Get(cmd::get::Get),
    Version(cmd::version::Version),
    Completion(cmd::completion::Completion),
    Rejected(cmd::rejected::Rejected),
}

impl Cmd {
    fn run(self) -> Result<ExitCode> {
        match self {
            Cmd::Evaluate(c) => c.run(),
            Cmd::Lint(c) => c.run(),
            Cmd::Slice(c) => c.run(),
            Cmd::Demo(c) => c.run(),
            Cmd::Certs(c) => c.run(),
            Cmd::Apply(c) => c.run(false),
            Cmd::Delete(c) => c.run(true),
            Cmd::Replicas(c) => c.run(),
            Cmd::Nodes(c) => c.run(),
            Cmd::Node(c) => c.run(),
            Cmd::Wait(c) => c.run(),
            Cmd::Explain(c) => c.run(),
            Cmd::Get(c) => c.run(),
            Cmd::Version(c) => c.run(),
            Cmd::Completion(c) => c.run(),
            Cmd::Rejected(c) => c.run(),
        }
    }
}

fn main() -> ExitCode {
    // Output piped into `head` and closed early ends the process quietly, as for other Unix
    // tools, instead of a panic on the broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match cli.command.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
