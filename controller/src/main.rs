use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser};
use palisade_controller::history::Limits;
use palisade_controller::server::{self, Config, TlsFiles};
use palisade_controller::source::Timing;
use tokio_util::sync::CancellationToken;

/// The Palisade controller: compiles NetworkPolicy into per-node slices and streams them to
/// node agents over gRPC (mTLS), tracking what each node has acknowledged.
///
/// One replica of a Raft group: run three (or five) with --id and --peers, or one alone (the
/// default). Objects live in the replicated log under --state-dir; a revision is the log index
/// of the change. The leader alone takes input: objects sent with `palisadectl apply -f`
/// (the standalone store, always on); with --kubernetes, Namespaces, Pods and
/// NetworkPolicies from the Kubernetes API server; with --manifests, a directory of manifests
/// (YAML or JSON) it watches: adding, editing, deleting or renaming a file becomes a change. It fails closed: invalid objects are rejected as the
/// Kubernetes API server would (strict field validation included) and their last valid
/// version stays in force; a file is read only once completely written; a file with problems
/// keeps what it held; an object defined in two files keeps the version in force before.
#[derive(Parser)]
#[command(name = "palisade-controller", version)]
struct Cli {
    /// Directory of manifests the leader watches. Without it, objects come only from
    /// `palisadectl apply`.
    #[arg(long, env = "PALISADE_MANIFESTS", value_name = "DIR")]
    manifests: Option<PathBuf>,

    /// This replica's id in the group (a number from 1).
    #[arg(long, env = "PALISADE_ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,

    /// This replica's index in a StatefulSet (from 0, as the downward API gives the
    /// `apps.kubernetes.io/pod-index` label): its id is the ordinal + 1. Instead of --id.
    #[arg(long, env = "PALISADE_ORDINAL", conflicts_with = "id")]
    ordinal: Option<u64>,

    /// A file holding this replica's id: when it exists, it wins over --ordinal (a
    /// StatefulSet pod whose volume was lost runs a replica under a new id in its place; see
    /// deploy/replace-replica.sh). That replica's address is the pod's own entry (ordinal + 1)
    /// in --peers. A file that does not exist is not an error.
    #[arg(
        long,
        env = "PALISADE_ID_FILE",
        value_name = "PATH",
        requires = "ordinal"
    )]
    id_file: Option<PathBuf>,

    /// Read Namespaces, Pods and NetworkPolicies from the Kubernetes API server (on the
    /// leader only): from --kubeconfig, else $KUBECONFIG or ~/.kube/config, else the
    /// in-cluster service account. Needs get/list/watch on those three kinds.
    #[arg(long, env = "PALISADE_KUBERNETES", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    kubernetes: bool,

    /// The kubeconfig to reach the API server with (implies --kubernetes; its current context).
    #[arg(long, env = "PALISADE_KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<PathBuf>,

    /// Also report objects the API server accepted but Palisade rejects as Kubernetes Events
    /// (type Warning, reason Rejected) on the object. Needs create and patch on
    /// events.k8s.io events.
    #[arg(long, env = "PALISADE_EMIT_EVENTS", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    emit_events: bool,

    /// Changes from the API server within this long of the first are committed together as
    /// one revision (a complete list is committed at once).
    #[arg(long, env = "PALISADE_KUBE_BATCH_DELAY", default_value = "20ms", value_parser = humantime::parse_duration)]
    kube_batch_delay: Duration,

    /// How long one watch request lasts before the API server ends it and it is resumed
    /// from where it was.
    #[arg(long, env = "PALISADE_KUBE_WATCH_TIMEOUT", default_value = "290s", value_parser = humantime::parse_duration)]
    kube_watch_timeout: Duration,

    /// Every replica of the group, this one included, as ID=HOST:PORT,… (the gRPC address
    /// each is reached at; Raft traffic uses the same listener, as the palisade.v1.Raft
    /// service, mTLS with replica certificates from `palisadectl certs --replica N`).
    /// Without it, a group of one.
    #[arg(long, env = "PALISADE_PEERS", value_name = "ID=HOST:PORT,...")]
    peers: Option<String>,

    /// Create a new group: with a blank --state-dir and --peers, this replica takes part
    /// only if every replica of the group starts with a blank directory too (the one with
    /// the lowest id creates the group once all have said so; the others take its identity
    /// from it). Without it, a blank directory with peers is refused: it may be a replica
    /// that lost its state, which must never vote or acknowledge again under its old id. A
    /// replica whose directory holds its group ignores it, so it may stay set in a
    /// StatefulSet: a replica that took part once and lost its directory is still refused.
    #[arg(long, env = "PALISADE_BOOTSTRAP", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    bootstrap: bool,

    /// One tick of Raft's clock: a leader heartbeats every 3 ticks; followers start an
    /// election after 10 to 20 ticks without one.
    #[arg(long, env = "PALISADE_RAFT_TICK", default_value = "100ms", value_parser = humantime::parse_duration)]
    raft_tick: Duration,

    /// Log entries applied between snapshots of the state (the log is compacted behind each).
    #[arg(long, env = "PALISADE_SNAPSHOT_EVERY", default_value_t = 10_000)]
    snapshot_every: u64,

    /// How long this replica may know no leader (cut off from a quorum of its group, or an
    /// election that does not end) before it refuses agent streams and ends those it has, so
    /// agents move to a replica that has one (they keep enforcing what they hold meanwhile).
    #[arg(long, env = "PALISADE_SHED_AGENTS_AFTER", default_value = "3s", value_parser = humantime::parse_duration)]
    shed_agents_after: Duration,

    /// How long an agent holding a version this replica has not applied yet waits for it to
    /// get there before being sent to another replica (it is never served older state).
    #[arg(long, env = "PALISADE_RESUME_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    resume_wait: Duration,

    /// How long this replica must hold more than its share of the agents (a tenth over the
    /// agents of it and its reachable peers divided evenly) before it sends some to the other
    /// replicas, which they resume on by version; 0s never does. Agents stay where they are
    /// otherwise, so after failures one replica may hold most of them.
    #[arg(long, env = "PALISADE_REBALANCE_AFTER", default_value = "10s", value_parser = humantime::parse_duration)]
    rebalance_after: Duration,

    /// Agents sent to other replicas at a time at most while rebalancing (half the excess at
    /// most; then it waits 3 s for the peers' counts to show them).
    #[arg(long, env = "PALISADE_REBALANCE_RATE", default_value_t = 50)]
    rebalance_rate: usize,

    /// How often this replica lints the replicated state when it changed (valid policies
    /// that are probably wrong: `palisadectl rejected` lists the findings, the metric
    /// palisade_lint_findings counts them, each new one is logged once); 0s only when asked.
    /// A lint holds the apply thread (0.4 s at 150,000 pods and 75,000 policies: applies
    /// wait, sends from the view do not), so it runs only when the state changed.
    #[arg(long, env = "PALISADE_LINT_EVERY", default_value = "5m", value_parser = humantime::parse_duration)]
    lint_every: Duration,

    /// gRPC address for agents (Sync), operators (Introspection), health and reflection.
    #[arg(long, env = "PALISADE_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,

    /// Plaintext gRPC address serving only grpc.health.v1 (for kubelet gRPC probes; the
    /// --listen port needs client certificates). Services: "" and palisade.v1.Sync
    /// (NOT_SERVING while this replica refuses agents).
    #[arg(long, env = "PALISADE_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,

    /// HTTP address for Prometheus metrics (/metrics), /livez and /readyz.
    #[arg(
        long,
        env = "PALISADE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: SocketAddr,

    /// Directory for the replica's state: the Raft log and snapshots (`raft/`, sled), and
    /// what each manifest file holds in force (`source/`, so a file broken while the
    /// controller is down keeps it). Created if missing.
    #[arg(
        long,
        env = "PALISADE_STATE_DIR",
        default_value = "palisade-controller-state"
    )]
    state_dir: PathBuf,

    /// CA certificate (PEM) that signs agent, operator and replica certificates.
    #[arg(long, env = "PALISADE_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// The controller's certificate (PEM); in a group of several, its replica certificate
    /// (`palisadectl certs --replica N`), also presented to peers.
    #[arg(long, env = "PALISADE_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// The controller's private key (PEM).
    #[arg(long, env = "PALISADE_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// Plaintext, no client certificates, no authorization: anyone who reaches the port
    /// may apply policies. For development only, and only on loopback addresses (see
    /// --insecure-allow-remote). Without it, --tls-ca, --tls-cert and --tls-key are required.
    /// The variable takes `true` or `false`; anything else is an error.
    #[arg(long, env = "PALISADE_INSECURE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    insecure: bool,

    /// With --insecure, also serve plaintext on addresses other than loopback (every
    /// listener, and Raft toward peers): anyone on the network may then apply policies.
    /// For test networks in namespaces only.
    #[arg(long, env = "PALISADE_INSECURE_ALLOW_REMOTE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    insecure_allow_remote: bool,

    /// Namespace of objects whose manifests name none.
    #[arg(long, default_value = "default")]
    namespace: String,

    /// HTTP/2 and TCP keepalive interval on every connection (a peer that does not answer
    /// is dropped after twice this).
    #[arg(long, env = "PALISADE_KEEPALIVE", default_value = "10s", value_parser = humantime::parse_duration)]
    keepalive: Duration,

    /// How often each agent is told where this replica stands (its applied revision, the
    /// commit index it knows, whether it can confirm it is current). Agents leave a replica
    /// silent for three of these (frozen), and one not current or stalled for their
    /// --stale-after.
    #[arg(long, env = "PALISADE_AGENT_KEEPALIVE", default_value = "2s", value_parser = humantime::parse_duration)]
    agent_keepalive: Duration,

    /// Rescan the manifests this often even without file events.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    rescan: Duration,

    /// A manifest changed in place is read only once complete: when its writer closes it or
    /// renames it into place (as inotify reports), or, without such a sign, once it has not
    /// changed for this long. So a file being written is never enforced half-way.
    #[arg(long, env = "PALISADE_SETTLE", default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,

    /// A manifest rewritten in place that no longer holds some of its objects (emptied,
    /// truncated, shrunk), or whose change could allow more than the version in force (a
    /// new rule, a rule losing its peers or ports, lost isolation, changed pods: possibly a
    /// writer's half, however it opens and closes the file), keeps the version in force until
    /// it has stayed so this long. Deleting a file, or renaming a new version over it,
    /// applies at once; a file a process holds open for writing is not read at all.
    #[arg(long, env = "PALISADE_HOLD_REMOVALS", default_value = "10s", value_parser = humantime::parse_duration)]
    hold_removals: Duration,

    /// Largest manifest file read, in bytes; a larger one is reported and keeps the objects
    /// it held.
    #[arg(long, env = "PALISADE_MAX_FILE_BYTES", default_value_t = 16 << 20)]
    max_file_bytes: usize,

    /// A directory outside the manifests directory that symbolic links in it may lead to
    /// (repeat, or separate with commas). Other links leading out of it (to `/`, to `/etc`)
    /// are reported and not followed: a link cannot make the controller enforce manifests
    /// found anywhere on the machine. Links within the directory (a ConfigMap volume's) are
    /// always followed.
    #[arg(
        long = "manifests-follow-links-to",
        env = "PALISADE_MANIFESTS_FOLLOW_LINKS_TO",
        value_name = "DIR",
        value_delimiter = ','
    )]
    manifest_link_roots: Vec<PathBuf>,

    /// A manifest file taking longer than this to read and parse is reported as slow. Files
    /// are parsed off the scan thread: a slow one never holds up changes to the others.
    #[arg(long, env = "PALISADE_PARSE_BUDGET", default_value = "2s", value_parser = humantime::parse_duration)]
    parse_budget: Duration,

    /// Deepest nesting of mappings and lists read in a manifest; deeper documents are
    /// reported (Kubernetes objects need about 12).
    #[arg(long, env = "PALISADE_MAX_DEPTH", default_value_t = 64)]
    max_depth: usize,

    /// Updates kept per node for agents that reconnect or lag (older: a snapshot).
    #[arg(long, default_value_t = 64)]
    history_updates: usize,

    /// Encoded bytes of updates kept per node.
    #[arg(long, default_value_t = 1 << 20)]
    history_bytes: usize,

    /// Most connections open at once on the gRPC listener (lowered to what the open-file
    /// limit allows). At the limit, the oldest connection still in its TLS handshake is
    /// dropped to make room, else the one idle the longest (no request or stream in flight
    /// for 2 s at least; never an operator's); only when neither exists is a new one refused,
    /// and even then 64 more slots are kept for operator certificates.
    #[arg(long, env = "PALISADE_MAX_CONNECTIONS", default_value_t = 16_384)]
    max_connections: usize,

    /// Most connections open at once from one address (same eviction as --max-connections;
    /// 8 more slots per address are kept for operator certificates).
    #[arg(long, env = "PALISADE_MAX_CONNECTIONS_PER_IP", default_value_t = 1024)]
    max_connections_per_ip: usize,

    /// Most connections one certificate identity (a node, an operator, a replica) holds at
    /// once, from all addresses. At the limit its connection idle the longest is closed to
    /// make room, else its new one is refused: one certificate cannot take every slot.
    #[arg(
        long,
        env = "PALISADE_MAX_CONNECTIONS_PER_IDENTITY",
        default_value_t = 64
    )]
    max_connections_per_identity: usize,

    /// A connection without a request or stream in flight this long is closed (agents hold
    /// a stream; `palisadectl` opens one connection per command).
    #[arg(long, env = "PALISADE_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,

    /// A connection must complete its TLS handshake within this long, or it is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    tls_handshake_timeout: Duration,

    /// HTTP/2 streams one connection may have open at once (an agent needs one).
    #[arg(long, default_value_t = 64)]
    max_streams_per_connection: u32,

    /// Largest gRPC message sent to an agent (a snapshot of a big node), in bytes. Messages
    /// received are held to the smaller of this and 16 MiB.
    #[arg(long, default_value_t = 256 << 20)]
    max_message_bytes: usize,

    #[command(flatten)]
    log: palisade_telemetry::LogArgs,

    /// Testing only (palisade-loadtest's checker): do not apply the first committed entry
    /// holding commands at or after this index, so this replica diverges from its group.
    #[arg(long, hide = true, value_name = "INDEX")]
    fault_drop_entry: Option<u64>,
}

/// Cancel `token` on SIGTERM or SIGINT.
async fn signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    token.cancel();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.log.init();
    // Authentication is decided here, from values the user gave, never from a default.
    let tls = palisade_telemetry::security::tls_choice(
        palisade_telemetry::security::TlsFlags {
            insecure: cli.insecure,
            allow_remote: cli.insecure_allow_remote,
            ca: cli.tls_ca,
            cert: cli.tls_cert,
            key: cli.tls_key,
        },
        // Plaintext would carry the gRPC services and Raft toward the peers. (The health
        // listener serves health only, the metrics listener metrics only: plaintext always.)
        std::iter::once(cli.listen.to_string()).chain(
            cli.peers
                .iter()
                .flat_map(|p| p.split(','))
                .filter_map(|p| p.split_once('=').map(|(_, a)| a.trim().to_string())),
        ),
    )
    .unwrap_or_else(|e| Cli::command().error(ErrorKind::ArgumentConflict, e).exit())
    .map(|(ca, cert, key)| TlsFiles { ca, cert, key });
    let kubernetes = cli.kubernetes || cli.kubeconfig.is_some();
    if cli.emit_events && !kubernetes {
        anyhow::bail!("--emit-events reports objects from the Kubernetes API: it needs --kubernetes or --kubeconfig");
    }
    let slot = cli
        .ordinal
        .map(|o| o.checked_add(1).context("--ordinal is too large"))
        .transpose()?;
    let id = match cli
        .id_file
        .as_deref()
        .map(read_id_file)
        .transpose()?
        .flatten()
    {
        Some(id) => id,
        None => slot.unwrap_or(cli.id),
    };
    let peers = match &cli.peers {
        Some(p) => palisade_controller::replication::peers::parse_peers_in_slot(p, id, slot)?,
        None => Default::default(),
    };
    let replication = palisade_controller::replication::Config {
        id,
        peers,
        tick: cli.raft_tick.max(Duration::from_millis(1)),
        options: palisade_replica::Options {
            snapshot_every: cli.snapshot_every.max(1),
            ..palisade_replica::Options::default()
        },
        fault_drop_entry: cli.fault_drop_entry,
        bootstrap: cli.bootstrap,
        ..Default::default()
    };
    let config = Config {
        manifests: cli.manifests,
        replication,
        default_namespace: cli.namespace.clone(),
        state_dir: Some(cli.state_dir),
        tls,
        keepalive: cli.keepalive,
        agent_keepalive: cli.agent_keepalive.max(Duration::from_millis(100)),
        rescan: cli.rescan,
        timing: Timing {
            settle: cli.settle,
            hold: cli.hold_removals,
        },
        limits: palisade_policy::manifest::Limits {
            max_bytes: cli.max_file_bytes,
            max_depth: cli.max_depth.max(1),
        },
        manifest_link_roots: cli.manifest_link_roots,
        parse_budget: cli.parse_budget,
        history: Limits {
            entries: cli.history_updates.max(1),
            bytes: cli.history_bytes,
        },
        connections: server::listen::Limits {
            max_connections: cli.max_connections.max(1),
            max_per_ip: cli.max_connections_per_ip.max(1),
            max_per_identity: cli.max_connections_per_identity.max(1),
            idle_timeout: cli.idle_timeout.max(Duration::from_secs(1)),
            handshake_timeout: cli.tls_handshake_timeout,
            tcp_keepalive: Some(cli.keepalive),
            ..server::listen::Limits::default()
        },
        max_streams_per_connection: cli.max_streams_per_connection.max(1),
        max_message_bytes: cli.max_message_bytes,
        shed_agents_after: cli.shed_agents_after,
        resume_wait: cli.resume_wait,
        rebalance: palisade_controller::rebalance::Config {
            after: cli.rebalance_after,
            rate: cli.rebalance_rate,
        },
        lint_every: cli.lint_every,
        kubernetes: kubernetes.then(|| palisade_controller::kubernetes::Options {
            kubeconfig: cli.kubeconfig,
            batch_delay: cli.kube_batch_delay,
            watch_timeout: cli.kube_watch_timeout,
            emit_events: cli.emit_events,
            default_ns: cli.namespace.clone(),
            ..Default::default()
        }),
        health_listen: cli.health_listen,
        ..Config::standalone()
    };
    let grpc = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let metrics = tokio::net::TcpListener::bind(cli.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", cli.metrics_listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let running = server::start(config, grpc, Some(metrics), shutdown).await?;
    running.wait().await?;
    Ok(())
}

/// The id in `--id-file` (`None`: no such file), or what is wrong with it.
fn read_id_file(path: &std::path::Path) -> Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("--id-file {}: {e}", path.display())),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(id) if id > 0 => Ok(Some(id)),
            _ => anyhow::bail!(
                "--id-file {}: {:?} is not a replica id (a number from 1)",
                path.display(),
                text.trim()
            ),
        },
    }
}
