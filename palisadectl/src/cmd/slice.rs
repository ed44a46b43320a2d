//! `palisadectl slice`: the policy slice Palisade computes for one node, from manifests.

use std::process::ExitCode;

use anyhow::{bail, Result};
use palisadectl::output::Output;
use palisadectl::{load, show};

use super::{exit, Manifests};

/// Show the policy slice Palisade computes for one node: its isolated endpoints, their
/// allow rules, and the address sets those rules reference.
#[derive(clap::Args)]
pub struct Slice {
    #[command(flatten)]
    manifests: Manifests,

    /// Node name, as in the pods' spec.nodeName.
    #[arg(long)]
    node: String,

    /// Only the endpoints of this namespace (and the address sets their rules use); the
    /// digest and figures stay those of the whole slice.
    #[arg(short = 'n', long)]
    namespace: Option<String>,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "json")]
    output: Output,
}

impl Slice {
    pub fn run(self) -> Result<ExitCode> {
        let Slice {
            manifests,
            node,
            namespace,
            output,
        } = self;
        let loaded = load::load(&manifests.files, &manifests.default_namespace)?;
        let engine = loaded.engine();
        if engine.node(&node).is_none() {
            let known: Vec<String> = engine.nodes().iter().map(|n| n.node.to_string()).collect();
            bail!(
                "no pod in the manifests is scheduled on node '{node}' (spec.nodeName); nodes: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
        let slice = engine.slice(&node);
        print!(
            "{}",
            output.render(if output.structured() {
                show::json(&slice, namespace.as_deref())
            } else {
                show::table(&slice, namespace.as_deref())
            })
        );
        Ok(exit(loaded.report(), false))
    }
}
