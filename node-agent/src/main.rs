use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser, ValueEnum};
use palisade_agent::{
    Agent, AgentConfig, Capacities, ClientTls, Dataplane, EbpfConfig, EbpfDataplane,
    MemoryDataplane, StateStore,
};
use tokio_util::sync::CancellationToken;

/// The Palisade node agent: holds its node's policy slice in the dataplane, kept in sync with
/// the controller over one gRPC stream (mTLS), and acknowledges each version it holds.
///
/// It saves the last slice it applied under --state-dir, so after a restart it resumes from
/// that version instead of taking a snapshot. It exits within a few seconds of SIGTERM,
/// leaving the dataplane as it was.
#[derive(Parser)]
#[command(name = "palisade-agent", version)]
struct Cli {
    /// This node's name, as in the pods' spec.nodeName (and in this agent's certificate).
    #[arg(long, env = "PALISADE_NODE")]
    node: String,

    /// The controller replicas, separated by commas: each HOST:PORT, or a URL with http://
    /// (plaintext) or https://. Every replica serves agents; the agent stays on one (nodes
    /// spread over them by name) and moves to the next when it fails, is cut off from its
    /// group, or has not yet applied what the agent holds, resuming with a delta.
    #[arg(long, env = "PALISADE_CONTROLLER", default_value = "127.0.0.1:7443")]
    controller: String,

    /// Directory for the agent's saved slice. Created if missing.
    #[arg(long, env = "PALISADE_STATE_DIR")]
    state_dir: PathBuf,

    /// Where policy is enforced: `ebpf` writes it to pinned eBPF maps consulted by TC programs
    /// on every local pod's host-side interface (found from the node's /32 routes to pod
    /// addresses; needs root); `memory` keeps the same maps in memory and ENFORCES NOTHING
    /// (tests, machines without BPF). The controller shows which one each node runs.
    #[arg(long, value_enum, default_value = "ebpf", env = "PALISADE_DATAPLANE")]
    dataplane: DataplaneKind,

    /// Directory on a bpffs where the eBPF dataplane pins its maps and TC links, so that policy
    /// stays enforced while the agent is stopped and a restarted agent re-adopts it. Mounted
    /// as a bpffs if it is not one. Under `ip netns exec` (its own mount namespace) a bpffs
    /// mounted by the agent vanishes when it exits: mount one beforehand there.
    #[arg(long, env = "PALISADE_BPFFS", default_value = "/sys/fs/bpf/palisade")]
    bpffs: PathBuf,

    /// HTTP address for Prometheus metrics (/metrics: the applied version, sync phase and
    /// counts with every dataplane; with eBPF also the per-endpoint packet counters, allowed
    /// and denied per direction, and program statistics) and the probes /livez and /readyz
    /// (ready while the dataplane holds a slice or the agent is in sync). Off unless given.
    #[arg(long, env = "PALISADE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,

    /// Connections the eBPF dataplane tracks (LRU; replies of allowed connections pass).
    #[arg(long, default_value_t = palisade_ebpf_common::defaults::CONNTRACK)]
    max_connections: u32,

    /// CA certificate (PEM) that signed the controller's certificate.
    #[arg(long, env = "PALISADE_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// This agent's certificate (PEM); it must name the node (URI SAN palisade://node/NAME).
    #[arg(long, env = "PALISADE_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// This agent's private key (PEM).
    #[arg(long, env = "PALISADE_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// Name to verify the controller's certificate against (default: the address's host).
    #[arg(long, env = "PALISADE_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,

    /// Plaintext, no certificates: for development only (the controller must run with
    /// --insecure too), and only toward controllers on loopback addresses (see
    /// --insecure-allow-remote). Without it, --tls-ca, --tls-cert and --tls-key are required.
    /// The variable takes `true` or `false`; anything else is an error.
    #[arg(long, env = "PALISADE_INSECURE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    insecure: bool,

    /// With --insecure, also speak plaintext to controllers at addresses other than
    /// loopback: anyone on the network could then feed this node a policy. For test networks
    /// in namespaces only.
    #[arg(long, env = "PALISADE_INSECURE_ALLOW_REMOTE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    insecure_allow_remote: bool,

    /// Most endpoint entries the dataplane holds (default: unlimited for memory, 4096 for
    /// eBPF). A slice with more endpoints is refused (nacked).
    #[arg(long)]
    max_endpoints: Option<u64>,

    /// Most address-identity entries the dataplane holds (default: unlimited for memory,
    /// 65536 for eBPF). A slice needing more fails endpoints closed and says so.
    #[arg(long)]
    max_identities: Option<u64>,

    /// Most rule entries the dataplane holds (default: unlimited for memory, 262144 for eBPF).
    /// A slice needing more fails endpoints closed and says so.
    #[arg(long)]
    max_rules: Option<u64>,

    /// Move to another controller replica when the one in use has sent nothing for this long
    /// (a frozen replica: its connection stays open). Default: three of the keepalive
    /// intervals the controller announces (its --agent-keepalive, 2 s: 6 s), or 35 s for a
    /// controller that announces none.
    #[arg(long, env = "PALISADE_SILENCE_TIMEOUT", value_parser = humantime::parse_duration)]
    silence_timeout: Option<Duration>,

    /// Move to another controller replica when the one in use says, for this long, that it
    /// cannot confirm it is current (a leader past its lease, a follower cut off from its
    /// leader; not while it is only applying what was committed, or electing) or that it has
    /// stopped applying what its group committed. What the dataplane
    /// holds stays enforced meanwhile; the agent resumes from it on the next replica.
    #[arg(long, env = "PALISADE_STALE_AFTER", default_value = "5s", value_parser = humantime::parse_duration)]
    stale_after: Duration,

    #[command(flatten)]
    log: palisade_telemetry::LogArgs,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum DataplaneKind {
    Memory,
    Ebpf,
}

fn read(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.log.init();
    // Authentication is decided here, from values the user gave, never from a default.
    let tls = match palisade_telemetry::security::tls_choice(
        palisade_telemetry::security::TlsFlags {
            insecure: cli.insecure,
            allow_remote: cli.insecure_allow_remote,
            ca: cli.tls_ca.clone(),
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
        },
        cli.controller.split(',').map(str::trim),
    )
    .unwrap_or_else(|e| Cli::command().error(ErrorKind::ArgumentConflict, e).exit())
    {
        Some((ca, cert, key)) => Some(ClientTls {
            ca: read(&ca)?,
            cert: read(&cert)?,
            key: read(&key)?,
            domain: cli.tls_server_name.clone(),
        }),
        None => {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--insecure): plaintext toward the controller, which is not verified; for development only"
            );
            None
        }
    };
    let config = AgentConfig {
        tls,
        silence_timeout: cli.silence_timeout,
        stale_after: cli.stale_after,
        ..AgentConfig::new(&cli.node, &cli.controller)
    };
    // A bad address or TLS material is a usage error, said before anything is started.
    config.endpoints()?;
    let store = StateStore::open(&cli.state_dir)?;
    match cli.dataplane {
        DataplaneKind::Memory => {
            tracing::warn!(
                "the in-memory dataplane enforces nothing: this node's pods are not filtered (--dataplane ebpf enforces)"
            );
            let dataplane = MemoryDataplane::new(Capacities {
                endpoints: cli.max_endpoints,
                identities: cli.max_identities,
                rules: cli.max_rules,
            });
            let agent = Agent::new(config, dataplane, store)?;
            serve_http(cli.metrics_listen, agent.status(), None).await?;
            run(agent).await
        }
        DataplaneKind::Ebpf => {
            let size = |v: Option<u64>, default: u32, what: &str| -> Result<u32> {
                match v {
                    None => Ok(default),
                    Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Ok(n as u32),
                    Some(n) => bail!("--max-{what} {n}: an eBPF map holds 1 to 4294967295 entries"),
                }
            };
            let defaults = EbpfConfig::new(&cli.bpffs);
            let ebpf = EbpfConfig {
                endpoints: size(cli.max_endpoints, defaults.endpoints, "endpoints")?,
                identities: size(cli.max_identities, defaults.identities, "identities")?,
                rules: size(cli.max_rules, defaults.rules, "rules")?,
                conntrack: cli.max_connections,
                ..defaults
            };
            let dataplane = EbpfDataplane::open(&ebpf).with_context(|| {
                format!(
                    "cannot start the eBPF dataplane under {}",
                    cli.bpffs.display()
                )
            })?;
            let counters = match cli.metrics_listen {
                Some(_) => Some(palisade_agent::ebpf::counters::CounterReader::open(
                    &cli.bpffs,
                )?),
                None => None,
            };
            let agent = Agent::new(config, dataplane, store)?;
            serve_http(cli.metrics_listen, agent.status(), counters).await?;
            run(agent).await
        }
    }
}

/// Metrics and probes on `addr` (when given), with every dataplane; the eBPF one adds the
/// datapath's counters. Ready while the dataplane holds a slice or the agent is in sync.
async fn serve_http(
    addr: Option<std::net::SocketAddr>,
    status: tokio::sync::watch::Receiver<palisade_agent::Status>,
    counters: Option<palisade_agent::ebpf::counters::CounterReader>,
) -> Result<()> {
    use palisade_agent::metrics_http::{serve, Endpoints, Limits};
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    tracing::info!(%addr, "serving metrics on /metrics, probes on /livez and /readyz");
    let registry = palisade_agent::metrics::registry(status.clone(), counters);
    let endpoints = Endpoints {
        metrics: Box::new(move || palisade_agent::metrics::render(&registry)),
        content_type: palisade_agent::metrics::CONTENT_TYPE,
        ready: Box::new(move || {
            let s = status.borrow();
            let synced = s.phase == palisade_agent::Phase::Synced;
            let mut why = if s.version > 0 {
                format!("[+]dataplane holds version {}\n", s.version)
            } else {
                "[-]dataplane holds no slice yet\n".to_string()
            };
            why += &if synced {
                format!("[+]in sync with {}\n", s.controller)
            } else {
                format!(
                    "[{}]not in sync ({}){}\n",
                    if s.version > 0 { "+" } else { "-" },
                    s.phase,
                    s.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )
            };
            (s.version > 0 || synced, why)
        }),
    };
    tokio::spawn(serve(
        listener,
        std::sync::Arc::new(endpoints),
        Limits::default(),
    ));
    Ok(())
}

async fn run<D: Dataplane>(agent: Agent<D>) -> Result<()> {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
    agent.run(shutdown).await;
    Ok(())
}
