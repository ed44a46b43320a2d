use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
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

    /// Read Namespaces, Pods and NetworkPolicies from the Kubernetes API server (on the
    /// leader only): from --kubeconfig, else $KUBECONFIG or ~/.kube/config, else the
    /// in-cluster service account. Needs get/list/watch on those three kinds.
    #[arg(long, env = "PALISADE_KUBERNETES")]
    kubernetes: bool,

    /// The kubeconfig to reach the API server with (implies --kubernetes; its current context).
    #[arg(long, env = "PALISADE_KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<PathBuf>,

    /// Also report objects the API server accepted but Palisade rejects as Kubernetes Events
    /// (type Warning, reason Rejected) on the object. Needs create and patch on
    /// events.k8s.io events.
    #[arg(long, env = "PALISADE_EMIT_EVENTS")]
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
    /// A lint holds the state lock (0.4 s at 150,000 pods and 75,000 policies), so it runs
    /// only when the state changed.
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
    #[arg(long, env = "PALISADE_TLS_CA", required_unless_present = "insecure")]
    tls_ca: Option<PathBuf>,

    /// The controller's certificate (PEM); in a group of several, its replica certificate
    /// (`palisadectl certs --replica N`), also presented to peers.
    #[arg(long, env = "PALISADE_TLS_CERT", required_unless_present = "insecure")]
    tls_cert: Option<PathBuf>,

    /// The controller's private key (PEM).
    #[arg(long, env = "PALISADE_TLS_KEY", required_unless_present = "insecure")]
    tls_key: Option<PathBuf>,

    /// Plaintext, no client certificates, no authorization: for development only.
    #[arg(long, env = "PALISADE_INSECURE", conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    insecure: bool,

    /// Namespace of objects whose manifests name none.
    #[arg(long, default_value = "default")]
    namespace: String,

    /// Keepalive interval on agent streams (a silent agent is dropped after twice this).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    keepalive: Duration,

    /// Rescan the manifests this often even without file events.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    rescan: Duration,

    /// A manifest changed in place is read only once complete: when its writer closes it or
    /// renames it into place (as inotify reports), or, without such a sign, once it has not
    /// changed for this long. So a file being written is never enforced half-way.
    #[arg(long, env = "PALISADE_SETTLE", default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,

    /// A manifest rewritten in place that no longer holds some of its objects (emptied,
    /// truncated, shrunk) keeps them in force until it has stayed so this long; a file its
    /// writer still holds open waits at most this long for the close. Deleting a file, or
    /// renaming a new version over it, applies at once.
    #[arg(long, env = "PALISADE_HOLD_REMOVALS", default_value = "10s", value_parser = humantime::parse_duration)]
    hold_removals: Duration,

    /// Largest manifest file read, in bytes; a larger one is reported and keeps the objects
    /// it held.
    #[arg(long, env = "PALISADE_MAX_FILE_BYTES", default_value_t = 16 << 20)]
    max_file_bytes: usize,

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
    /// dropped to make room; only when none is, a new one is refused.
    #[arg(long, env = "PALISADE_MAX_CONNECTIONS", default_value_t = 16_384)]
    max_connections: usize,

    /// Most connections open at once from one address (same eviction as --max-connections).
    #[arg(long, env = "PALISADE_MAX_CONNECTIONS_PER_IP", default_value_t = 1024)]
    max_connections_per_ip: usize,

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
    let tls = match (cli.tls_ca, cli.tls_cert, cli.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
        _ => None,
    };
    let kubernetes = cli.kubernetes || cli.kubeconfig.is_some();
    if cli.emit_events && !kubernetes {
        anyhow::bail!("--emit-events reports objects from the Kubernetes API: it needs --kubernetes or --kubeconfig");
    }
    let id = match cli.ordinal {
        Some(o) => o.checked_add(1).context("--ordinal is too large")?,
        None => cli.id,
    };
    let peers = match &cli.peers {
        Some(p) => palisade_controller::replication::parse_peers(p, id)?,
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
        ..Default::default()
    };
    let config = Config {
        manifests: cli.manifests,
        replication,
        default_namespace: cli.namespace.clone(),
        state_dir: Some(cli.state_dir),
        tls,
        keepalive: cli.keepalive,
        rescan: cli.rescan,
        timing: Timing {
            settle: cli.settle,
            hold: cli.hold_removals,
        },
        limits: palisade_policy::manifest::Limits {
            max_bytes: cli.max_file_bytes,
            max_depth: cli.max_depth.max(1),
        },
        history: Limits {
            entries: cli.history_updates.max(1),
            bytes: cli.history_bytes,
        },
        connections: server::listen::Limits {
            max_connections: cli.max_connections.max(1),
            max_per_ip: cli.max_connections_per_ip.max(1),
            handshake_timeout: cli.tls_handshake_timeout,
            tcp_keepalive: Some(cli.keepalive),
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
