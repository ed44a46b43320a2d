//! `palisadectl lint`: NetworkPolicies in manifests that are valid but probably wrong.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::output::{in_namespace, Output};
use palisadectl::{lint, load};

use super::{Manifests, Outcome};

/// Find NetworkPolicies that are valid but probably wrong: selectors that select nothing
/// (with the nearest existing label), policies in namespaces that do not exist, named
/// ports no receiving pod defines (or defines for another protocol), rules policyTypes
/// leaves unused, ipBlocks over pod addresses, excepts another peer allows again, pods
/// sharing an address. Each finding names the object, the field and what to do.
///
/// Findings never change what is enforced. With --strict the exit status is 8 when there
/// is any (4 is added when objects were rejected), so it can gate a CI job.
#[derive(clap::Args)]
#[command(
    after_help = "Checks: selector-matches-nothing, missing-namespace, named-port-undefined, named-port-protocol,\n  unused-rules, ipblock-covers-pods, except-reallowed, shared-pod-ip\n\nExamples:\n  palisadectl lint -f examples/\n  palisadectl lint -f deploy/policies --strict -o json\n  palisadectl lint -f cluster-dump.yaml --pod-cidr 10.244.0.0/16 -n shop"
)]
pub struct Lint {
    #[command(flatten)]
    manifests: Manifests,

    /// Exit with status 8 when there is any finding.
    #[arg(long)]
    strict: bool,

    /// The cluster's pod network (IPv4 CIDR; repeatable). Without it, the smallest prefix
    /// holding every pod address in the manifests is taken.
    #[arg(long = "pod-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pod_cidrs: Vec<palisade_policy::net::Prefix>,

    /// Only findings about objects in this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,

    /// Output format (table and wide are the same list).
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Lint {
    pub fn run(self) -> Result<ExitCode> {
        let Lint {
            manifests,
            strict,
            pod_cidrs,
            namespace,
            output,
        } = self;
        let loaded = load::load(&manifests.files, &manifests.default_namespace)?;
        let options = palisade_policy::lint::Options { pod_cidrs };
        let mut found = lint::findings(&loaded, &options);
        if let Some(ns) = &namespace {
            found.retain(|f| in_namespace(&f.finding.object, ns));
        }
        let text = if output.structured() {
            lint::json(&found, &loaded)
        } else {
            lint::text(&found, &loaded)
        };
        print!("{}", output.render(text));
        Ok(Outcome {
            rejected: loaded.report(),
            findings: strict && !found.is_empty(),
            ..Outcome::default()
        }
        .code())
    }
}

fn parse_cidr(s: &str) -> Result<palisade_policy::net::Prefix, String> {
    match s.parse::<palisade_policy::net::Cidr>() {
        Ok(palisade_policy::net::Cidr::V4(p)) => Ok(p),
        Ok(_) => Err(format!("'{s}': only IPv4 pod networks are checked")),
        Err(e) => Err(format!("'{s}' {e}")),
    }
}
