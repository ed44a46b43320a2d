use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use palisade_controller::history::Limits;
use palisade_controller::server::{self, Config, TlsFiles};
use tokio_util::sync::CancellationToken;

/// The Palisade controller: compiles NetworkPolicy into per-node slices and streams them to
/// node agents over gRPC (mTLS), tracking what each node has acknowledged.
///
/// Its input is a directory of manifests (Namespaces, Pods, NetworkPolicies; YAML or JSON),
/// watched: adding, editing, deleting or renaming a file into it becomes changes, each at the
/// next revision. Invalid objects are rejected as the Kubernetes API server would, and their
/// last valid version stays in force.
#[derive(Parser)]
#[command(name = "palisade-controller", version)]
struct Cli {
    /// Directory of manifests to watch.
    #[arg(long, env = "PALISADE_MANIFESTS", value_name = "DIR")]
    manifests: PathBuf,

    /// gRPC address for agents (Sync), operators (Introspection), health and reflection.
    #[arg(long, env = "PALISADE_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,

    /// HTTP address for Prometheus metrics (/metrics) and /healthz.
    #[arg(
        long,
        env = "PALISADE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: SocketAddr,

    /// Directory for the controller's own state (reserved revisions, so they never go
    /// backwards across restarts). Created if missing.
    #[arg(
        long,
        env = "PALISADE_STATE_DIR",
        default_value = "palisade-controller-state"
    )]
    state_dir: PathBuf,

    /// CA certificate (PEM) that signs agent and operator certificates.
    #[arg(long, env = "PALISADE_TLS_CA", required_unless_present = "insecure")]
    tls_ca: Option<PathBuf>,

    /// The controller's certificate (PEM).
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

    /// Updates kept per node for agents that reconnect or lag (older: a snapshot).
    #[arg(long, default_value_t = 64)]
    history_updates: usize,

    /// Encoded bytes of updates kept per node.
    #[arg(long, default_value_t = 1 << 20)]
    history_bytes: usize,

    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "PALISADE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
    init_logging(cli.log_format);
    let tls = match (cli.tls_ca, cli.tls_cert, cli.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
        _ => None,
    };
    let config = Config {
        default_namespace: cli.namespace,
        state_dir: Some(cli.state_dir),
        tls,
        keepalive: cli.keepalive,
        rescan: cli.rescan,
        history: Limits {
            entries: cli.history_updates.max(1),
            bytes: cli.history_bytes,
        },
        ..Config::new(cli.manifests)
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
