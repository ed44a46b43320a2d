use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use palisade_policy::cluster::{ClusterView, Probe};
use palisadectl::fresh::ReadArgs;
use palisadectl::output::{in_namespace, Output};
use palisadectl::{certs, demo, evaluate, get, lint, load, remote, show, store};

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

#[derive(clap::Args)]
struct Manifests {
    /// Manifest file or directory (YAML or JSON; multi-document files and `kind: List` are
    /// read; directories are read recursively). Repeat for several; `-` reads stdin.
    /// Namespaces, Pods (spec.nodeName, status.podIP(s), container ports) and
    /// NetworkPolicies are used; other kinds are ignored.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    files: Vec<PathBuf>,

    /// Namespace of objects whose metadata names none (kubectl's -n filters output here).
    #[arg(
        long,
        value_name = "NAMESPACE",
        default_value = "default",
        env = "PALISADE_DEFAULT_NAMESPACE"
    )]
    default_namespace: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reachability between pods, computed from the per-node slices as the datapath
    /// evaluates them.
    ///
    /// With --probe: one matrix per probe over every pod with an address (rows: source,
    /// columns: destination). With --from/--to: one flow, explained (which direction
    /// isolated it, which policies and rules allowed it).
    #[command(
        after_help = "Examples:\n  palisadectl evaluate -f examples/microservices --probe 80/TCP --probe 8080/TCP\n  palisadectl evaluate -f examples/microservices --from microservices/frontend --to microservices/backend --port 8080\n  palisadectl evaluate -f examples/microservices --from 203.0.113.7 --to microservices/frontend --port 80 -o json"
    )]
    Evaluate {
        #[command(flatten)]
        manifests: Manifests,

        /// PORT/PROTOCOL to probe every pod pair with, e.g. 80/TCP, 53/UDP, 2905/SCTP
        /// (protocol defaults to TCP). Repeatable.
        #[arg(long, value_name = "PORT/PROTOCOL", value_parser = evaluate::parse_probe, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        probe: Vec<Probe>,

        /// Source of one flow to explain: NAMESPACE/POD or an IPv4 address (e.g. an
        /// external client).
        #[arg(long, value_name = "NS/POD|IP", requires_all = ["to", "port"])]
        from: Option<String>,

        /// Destination of the flow to explain: NAMESPACE/POD or an IPv4 address.
        #[arg(long, value_name = "NS/POD|IP", requires = "from")]
        to: Option<String>,

        /// Only pods of this namespace in the matrices (rows and columns). Repeatable.
        #[arg(
            short = 'n',
            long = "namespace",
            value_name = "NAMESPACE",
            conflicts_with = "from"
        )]
        namespaces: Vec<String>,

        /// One row and column a namespace: . when every pod pair is allowed, ~ some, X none
        /// (JSON: allowed pairs of all pairs).
        #[arg(long, value_name = "WHAT", value_parser = ["namespace"], conflicts_with = "from")]
        group_by: Option<String>,

        /// Destination port of the flow to explain.
        #[arg(long, requires = "from", value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,

        /// Protocol of the flow to explain: TCP, UDP or SCTP.
        #[arg(long, default_value = "TCP", value_parser = evaluate::parse_protocol, requires = "from")]
        protocol: palisade_policy::model::Protocol,

        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },

    /// Find NetworkPolicies that are valid but probably wrong: selectors that select nothing
    /// (with the nearest existing label), policies in namespaces that do not exist, named
    /// ports no receiving pod defines (or defines for another protocol), rules policyTypes
    /// leaves unused, ipBlocks over pod addresses, excepts another peer allows again, pods
    /// sharing an address. Each finding names the object, the field and what to do.
    ///
    /// Findings never change what is enforced. With --strict the exit status is 8 when there
    /// is any (4 is added when objects were rejected), so it can gate a CI job.
    #[command(
        after_help = "Checks: selector-matches-nothing, missing-namespace, named-port-undefined, named-port-protocol,\n  unused-rules, ipblock-covers-pods, except-reallowed, shared-pod-ip\n\nExamples:\n  palisadectl lint -f examples/\n  palisadectl lint -f deploy/policies --strict -o json\n  palisadectl lint -f cluster-dump.yaml --pod-cidr 10.244.0.0/16 -n shop"
    )]
    Lint {
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
    },

    /// Show the policy slice Palisade computes for one node: its isolated endpoints, their
    /// allow rules, and the address sets those rules reference.
    Slice {
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
    },

    /// Evaluate the seed scenarios embedded in this binary (the microservices chain behind
    /// default deny, and the others under examples/): no cluster and no files needed.
    Demo {
        /// Output format of the matrices.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },

    /// Mint a CA and certificates for a local Palisade: the controller (naming --host), one
    /// per --replica of a Raft group (naming --host too), one per --node, one per --operator.
    ///
    /// Run it again to add nodes: the CA and every certificate already in DIR are kept (so
    /// adding a node re-mints nothing else); --renew replaces the requested ones. Keys are
    /// written with mode 0600 from the start. Prints each file written, and on stderr what
    /// was kept.
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
    Certs {
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
    },

    /// Create or replace objects in the controller's replicated store (validated as the
    /// Kubernetes API server would; all or nothing). Prints the revision that holds them.
    #[command(after_help = "Examples:
  palisadectl apply -f examples/microservices
  cat policy.yaml | palisadectl apply -f -
  palisadectl wait $(palisadectl apply -f policy.yaml -o json | jq .revision)")]
    Apply(ChangeArgs),

    /// Delete the objects the files name from the controller's replicated store.
    Delete(ChangeArgs),

    /// The controller replicas: id, address, role, term, commit and applied index, last
    /// contact, as the replica asked sees them; `add`, `remove` and `replace` change the
    /// group's membership.
    #[command(after_help = "Examples:
  palisadectl replicas
  palisadectl replicas add 4=10.0.0.4:7443      # joins as a learner; promoted once caught up
  palisadectl replicas remove 3                 # id 3 is never used again
  palisadectl replicas replace 3 4=10.0.0.4:7443  # a replica whose disk was lost")]
    Replicas {
        #[command(subcommand)]
        action: Option<ReplicasAction>,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },

    /// Every node the running controller knows: versions, acks, lag, connection; a summary
    /// line first (of every node, whatever is filtered).
    Nodes {
        /// Only nodes that have not acked their desired version.
        #[arg(long)]
        lagging: bool,
        /// Only nodes whose name matches this glob (`*`, `?`), e.g. 'pool-a-*'.
        #[arg(long, value_name = "GLOB")]
        name: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },

    /// One node on the running controller, optionally with its slice.
    Node {
        /// Node name.
        name: String,
        /// Show the node's slice too.
        #[arg(long)]
        slice: bool,
        /// With --slice: only the endpoints of this namespace (and the address sets their
        /// rules use).
        #[arg(short = 'n', long, requires = "slice")]
        namespace: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },

    /// Wait until a revision is realized (every affected node acked it), or the timeout;
    /// says which nodes lag. Exit status 3 when not realized.
    #[command(after_help = "Examples:
  palisadectl wait 1234                                  # the revision apply printed
  palisadectl wait --for-file manifests/20-policies.yaml # after editing a watched file
  palisadectl wait                                       # whatever is latest now")]
    Wait {
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
    },

    /// Explain one flow on the running controller: against one node's slice (--node), or the
    /// source node's egress and the destination node's ingress. Exit status 3 when denied.
    Explain {
        /// Source: NAMESPACE/POD or an IPv4 address.
        #[arg(long)]
        from: String,
        /// Destination: NAMESPACE/POD or an IPv4 address.
        #[arg(long)]
        to: String,
        /// Destination port.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// TCP, UDP or SCTP.
        #[arg(long, default_value = "TCP", value_parser = evaluate::parse_protocol)]
        protocol: palisade_policy::model::Protocol,
        /// Evaluate against this node's slice only.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },

    /// Objects as the running controller's replicated state holds them: what Palisade
    /// understood of each (selectors, ports and defaults resolved) and the source that owns
    /// it (kubernetes, manifests or palisadectl), at the revision the replica has applied.
    /// Exit status 3 when one is not held.
    Get {
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
    },

    /// The client's version and the controller's (of the replica that answers). With
    /// --client, no controller is asked. Exit status 1 when the controller cannot be reached
    /// (the client's version is printed first).
    Version {
        /// Only the client's version.
        #[arg(long)]
        client: bool,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },

    /// A shell completion script on stdout.
    #[command(after_help = "Examples:
  source <(palisadectl completion bash)
  palisadectl completion zsh > \"${fpath[1]}/_palisadectl\"
  palisadectl completion fish > ~/.config/fish/completions/palisadectl.fish")]
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },

    /// Objects the running controller rejected as invalid (exit status 4 when there is any),
    /// then objects from the Kubernetes API in force with fields Palisade's schema lacks (a
    /// newer Kubernetes'), each field with what was done about it (a rule, peer or port
    /// holding one matches nothing), then the lint findings over its replicated state (valid
    /// objects that are probably wrong, as `palisadectl lint` finds them; exit status 8 with
    /// --strict).
    Rejected {
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
    },
}

/// What `apply` and `delete` take.
#[derive(clap::Args)]
struct ChangeArgs {
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

/// How to reach a running controller: flags, their environment variables, then the context
/// file (`~/.config/palisade/config`), field by field.
#[derive(clap::Args)]
struct ConnArgs {
    /// The context file (YAML: controller, ca, cert, key, serverName, insecure; relative
    /// paths are relative to it). Default: ~/.config/palisade/config when it exists.
    #[arg(long, env = "PALISADE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// The controller: HOST:PORT, or a URL with http:// (plaintext) or https://
    /// [default: the context's, else 127.0.0.1:7443].
    #[arg(long, env = "PALISADE_CONTROLLER")]
    controller: Option<String>,
    /// CA certificate (PEM) that signed the controller's certificate.
    #[arg(long, env = "PALISADE_CA")]
    ca: Option<PathBuf>,
    /// Operator certificate (PEM), e.g. from `palisadectl certs`.
    #[arg(long, env = "PALISADE_OPERATOR_CERT")]
    cert: Option<PathBuf>,
    /// Operator private key (PEM).
    #[arg(long, env = "PALISADE_OPERATOR_KEY")]
    key: Option<PathBuf>,
    /// Name to verify the controller's certificate against (default: the address's host).
    #[arg(long, env = "PALISADE_TLS_SERVER_NAME")]
    server_name: Option<String>,
    /// Plaintext (a controller run with --insecure); --insecure=false overrides the context.
    #[arg(long, env = "PALISADE_INSECURE", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    insecure: Option<bool>,
}

impl ConnArgs {
    fn conn(self) -> Result<remote::Conn> {
        let ctx = palisadectl::config::load(self.config.as_deref())?;
        Ok(palisadectl::config::merge(
            ctx,
            self.controller,
            self.ca,
            self.cert,
            self.key,
            self.server_name,
            self.insecure,
        ))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Evaluate {
            manifests,
            probe,
            from,
            to,
            port,
            protocol,
            namespaces,
            group_by,
            output,
        } => {
            let loaded = load::load(&manifests.files, &manifests.default_namespace)?;
            let engine = loaded.engine();
            let matrix = evaluate::MatrixOptions {
                namespaces,
                group_by_namespace: group_by.is_some(),
            };
            let view = ClusterView::new(&engine);
            let json = output.structured();
            let text;
            let mut denied = false;
            if let (Some(from), Some(to), Some(port)) = (from, to, port) {
                let src = evaluate::resolve(&view, &from, "--from")?;
                let dst = evaluate::resolve(&view, &to, "--to")?;
                let e = evaluate::explain(&engine, &view, src, dst, Probe { port, protocol }, json);
                denied = !e.allowed;
                text = e.text;
            } else if json {
                text = evaluate::matrix_json(&view, &probe, &matrix) + "\n";
            } else {
                text = evaluate::matrix_table(&view, &probe, &matrix);
            }
            print!("{}", output.render(text));
            for w in lint::warnings(&lint::findings(&loaded, &Default::default())) {
                eprintln!("warning: {w}");
            }
            Ok(exit(loaded.report(), denied))
        }
        Cmd::Lint {
            manifests,
            strict,
            pod_cidrs,
            namespace,
            output,
        } => {
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
        Cmd::Slice {
            manifests,
            node,
            namespace,
            output,
        } => {
            let loaded = load::load(&manifests.files, &manifests.default_namespace)?;
            let engine = loaded.engine();
            if engine.node(&node).is_none() {
                let known: Vec<String> =
                    engine.nodes().iter().map(|n| n.node.to_string()).collect();
                bail!(
                    "no pod in the manifests is scheduled on node '{node}' (spec.nodeName); nodes: {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
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
        Cmd::Demo { output } => {
            print!("{}", output.render(demo::run(output.structured())?));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Certs {
            dir,
            hosts,
            nodes,
            operators,
            replicas,
            valid_for,
            renew,
        } => {
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
        Cmd::Apply(args) => change(args, false),
        Cmd::Delete(args) => change(args, true),
        Cmd::Replicas {
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
        Cmd::Replicas {
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
        Cmd::Nodes {
            lagging,
            name,
            read,
            conn,
            output,
        } => {
            let filter = remote::NodeFilter { lagging, name };
            let text = runtime()?.block_on(remote::nodes(&conn.conn()?, &filter, read, output))?;
            print!("{}", output.render(text));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Node {
            name,
            slice,
            namespace,
            read,
            conn,
            output,
        } => {
            let slice = slice.then_some(remote::SliceView {
                namespace: namespace.as_deref(),
            });
            print!(
                "{}",
                output.render(runtime()?.block_on(remote::node(
                    &conn.conn()?,
                    &name,
                    slice,
                    read,
                    output.structured()
                ))?)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Wait {
            revision,
            for_file,
            default_namespace,
            timeout,
            conn,
            output,
        } => {
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
        Cmd::Explain {
            from,
            to,
            port,
            protocol,
            node,
            read,
            conn,
            output,
        } => {
            let req = palisade_proto::v1::ExplainFlowRequest {
                node: node.unwrap_or_default(),
                source: from,
                destination: to,
                protocol: i32::from(protocol.number()),
                port: u32::from(port),
                consistent: read.consistent,
            };
            let (text, allowed) =
                runtime()?.block_on(remote::explain(&conn.conn()?, req, output.structured()))?;
            print!("{}", output.render(text));
            Ok(exit(false, !allowed))
        }
        Cmd::Get {
            kind,
            names,
            namespace,
            read,
            conn,
            output,
        } => {
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
        Cmd::Version {
            client,
            conn,
            output,
        } => {
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
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "palisadectl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rejected {
            strict,
            namespace,
            conn,
            output,
        } => {
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
}

/// `apply` or `delete`.
fn change(args: ChangeArgs, delete: bool) -> Result<ExitCode> {
    let ChangeArgs {
        manifests,
        dry_run,
        conn,
        output,
    } = args;
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

/// What a command found, as its exit status: the OR of 3 (a negative answer), 4 (objects
/// rejected) and 8 (lint findings under --strict); 0 when none holds.
#[derive(Default)]
struct Outcome {
    negative: bool,
    rejected: bool,
    findings: bool,
}

impl Outcome {
    fn code(&self) -> ExitCode {
        let mut code = 0u8;
        if self.negative {
            code |= 3;
        }
        if self.rejected {
            code |= 4;
        }
        if self.findings {
            code |= 8;
        }
        ExitCode::from(code)
    }
}

fn exit(rejected: bool, negative: bool) -> ExitCode {
    Outcome {
        negative,
        rejected,
        findings: false,
    }
    .code()
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

fn parse_cidr(s: &str) -> Result<palisade_policy::net::Prefix, String> {
    match s.parse::<palisade_policy::net::Cidr>() {
        Ok(palisade_policy::net::Cidr::V4(p)) => Ok(p),
        Ok(_) => Err(format!("'{s}': only IPv4 pod networks are checked")),
        Err(e) => Err(format!("'{s}' {e}")),
    }
}

fn main() -> ExitCode {
    // Output piped into `head` and closed early ends the process quietly, as for other Unix
    // tools, instead of a panic on the broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
