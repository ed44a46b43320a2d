//! `palisadectl replicas`: the controller's replicas, and changes to the group's membership.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use palisadectl::output::Output;
use palisadectl::store;

use super::{runtime, ConnArgs};

/// The controller replicas: id, address, role, term, commit and applied index, last
/// contact, as the replica asked sees them; `add`, `remove` and `replace` change the
/// group's membership.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  palisadectl replicas
  palisadectl replicas add 4=10.0.0.4:7443      # joins as a learner; promoted once caught up
  palisadectl replicas remove 3                 # id 3 is never used again
  palisadectl replicas replace 3 4=10.0.0.4:7443  # a replica whose disk was lost")]
pub struct Replicas {
    #[command(subcommand)]
    action: Option<ReplicasAction>,
    #[command(flatten)]
    conn: ConnArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Replicas {
    pub fn run(self) -> Result<ExitCode> {
        match self {
            Replicas {
                action: Some(action),
                ..
            } => {
                use palisadectl::members;
                let out = match action {
                    ReplicasAction::Add { new, conn } => {
                        runtime()?.block_on(members::add(&conn.conn()?, &new))?
                    }
                    ReplicasAction::Remove { id, conn } => {
                        runtime()?.block_on(members::remove(&conn.conn()?, id))?
                    }
                    ReplicasAction::Replace { old, new, conn } => {
                        runtime()?.block_on(members::replace(&conn.conn()?, old, &new))?
                    }
                };
                print!("{out}");
                Ok(ExitCode::SUCCESS)
            }
            Replicas {
                action: None,
                conn,
                output,
            } => {
                print!(
                    "{}",
                    output.render(runtime()?.block_on(store::replicas(&conn.conn()?, output))?)
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// `palisadectl replicas …`: membership changes.
#[derive(Subcommand)]
enum ReplicasAction {
    /// Add a new replica (ID=HOST:PORT, an id never used in this group) as a learner. Start
    /// it afterwards with a blank state directory; the leader promotes it to voter once it
    /// has caught up.
    Add {
        #[arg(value_name = "ID=HOST:PORT")]
        new: palisadectl::members::NewReplica,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Remove a replica for good (its id is never used again). The leader hands leadership
    /// over first when it is the one removed.
    Remove {
        #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Replace a replica (its disk lost, say): remove OLD, then add the new one under a new
    /// id. Safe to run again after a failure.
    Replace {
        #[arg(value_name = "OLD", value_parser = clap::value_parser!(u64).range(1..))]
        old: u64,
        #[arg(value_name = "ID=HOST:PORT")]
        new: palisadectl::members::NewReplica,
        #[command(flatten)]
        conn: ConnArgs,
    },
}
