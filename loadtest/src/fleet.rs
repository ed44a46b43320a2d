//! Many real agents (the agent library's sync client, in-memory dataplane) in this process,
//! one per node, each with its node's certificate, all given the same controller addresses.

use std::path::Path;
use std::time::Duration;

use palisade_agent::{Agent, AgentConfig, ClientTls, MemoryDataplane, StateStore, Status};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the agents could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    #[error("agent: {0}")]
    Agent(#[from] palisade_agent::client::AgentError),
    #[error("agent state: {0}")]
    Store(#[from] palisade_agent::store::StoreError),
}

/// One running agent.
pub struct Running {
    pub node: String,
    pub status: watch::Receiver<Status>,
    pub join: JoinHandle<MemoryDataplane>,
}

fn read(p: std::path::PathBuf) -> Result<Vec<u8>, FleetError> {
    std::fs::read(&p).map_err(|e| FleetError::Read(p.display().to_string(), e))
}

/// Start an agent per node of `nodes` against `controllers` (comma-separated), with the
/// certificates under `certs` (`None`: plaintext), saving their state under `state`.
pub fn start(
    nodes: &[String],
    controllers: &str,
    certs: Option<&Path>,
    state: &Path,
    shutdown: &CancellationToken,
) -> Result<Vec<Running>, FleetError> {
    let ca = certs.map(|c| read(c.join("ca.pem"))).transpose()?;
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        let tls = match (certs, &ca) {
            (Some(c), Some(ca)) => Some(ClientTls {
                ca: ca.clone(),
                cert: read(c.join(format!("node-{n}.pem")))?,
                key: read(c.join(format!("node-{n}-key.pem")))?,
                domain: None,
            }),
            _ => None,
        };
        let config = AgentConfig {
            tls,
            connect_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..AgentConfig::new(n, controllers)
        };
        let store = StateStore::open(&state.join(n))?;
        let agent = Agent::new(config, MemoryDataplane::default(), store)?;
        let status = agent.status();
        out.push(Running {
            node: n.clone(),
            status,
            join: tokio::spawn(agent.run(shutdown.clone())),
        });
    }
    Ok(out)
}
