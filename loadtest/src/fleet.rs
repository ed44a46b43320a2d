//! Many real agents (the agent library's sync client, in-memory dataplane) in this process,
//! one per node, each with its node's certificate, all given the same controller addresses.
//! Every install a dataplane completes is recorded with its time, version and digest (what
//! the agent then acks), so a scenario can be checked and timed afterwards; an agent can be
//! stopped and started again from its saved state, keeping its record.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_agent::dataplane::{Dataplane, DataplaneError, Installed, Kind};
use palisade_agent::{
    Agent, AgentConfig, Capacities, ClientTls, MemoryDataplane, StateStore, Status,
};
use palisade_policy::delta::SliceDelta;
use palisade_policy::slice::NodeSlice;
use palisade_policy::Digest;
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

/// One completed install: what the agent acks next.
#[derive(Clone, Copy, Debug)]
pub struct Install {
    pub at: Instant,
    pub version: u64,
    pub digest: Digest,
    /// How long the dataplane took.
    pub took: Duration,
}

pub type Installs = Arc<Mutex<Vec<Install>>>;

/// The in-memory dataplane, recording every install it completes.
pub struct Recorded {
    inner: MemoryDataplane,
    installs: Installs,
}

impl Dataplane for Recorded {
    fn kind(&self) -> Kind {
        self.inner.kind()
    }

    fn capacities(&self) -> Capacities {
        self.inner.capacities()
    }

    fn install(
        &mut self,
        target: &NodeSlice,
        delta: Option<&SliceDelta>,
    ) -> Result<Installed, DataplaneError> {
        let started = Instant::now();
        let out = self.inner.install(target, delta)?;
        let at = Instant::now();
        self.installs.lock().expect("installs").push(Install {
            at,
            version: target.version,
            digest: target.digest(),
            took: at - started,
        });
        Ok(out)
    }
}

/// One running agent.
pub struct Running {
    pub node: String,
    pub status: watch::Receiver<Status>,
    pub installs: Installs,
    stop: CancellationToken,
    join: Option<JoinHandle<Recorded>>,
}

impl Running {
    /// Stop the agent and wait for it to end.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
    }
}

/// What every agent shares.
pub struct Fleet {
    controllers: String,
    tls: Option<(PathBuf, Vec<u8>)>,
    state: PathBuf,
    shutdown: CancellationToken,
}

fn read(p: PathBuf) -> Result<Vec<u8>, FleetError> {
    std::fs::read(&p).map_err(|e| FleetError::Read(p.display().to_string(), e))
}

impl Fleet {
    /// Agents against `controllers` (comma-separated), with the certificates under `certs`
    /// (`None`: plaintext), saving their state under `state`, all stopped by `shutdown`.
    pub fn new(
        controllers: &str,
        certs: Option<&Path>,
        state: &Path,
        shutdown: &CancellationToken,
    ) -> Result<Fleet, FleetError> {
        let tls = certs
            .map(|c| Ok::<_, FleetError>((c.to_path_buf(), read(c.join("ca.pem"))?)))
            .transpose()?;
        Ok(Fleet {
            controllers: controllers.to_string(),
            tls,
            state: state.to_path_buf(),
            shutdown: shutdown.clone(),
        })
    }

    /// Start the agent of `node`, recording into `installs` (a fresh record when `None`).
    pub fn start(&self, node: &str, installs: Option<Installs>) -> Result<Running, FleetError> {
        let tls = match &self.tls {
            Some((dir, ca)) => Some(ClientTls {
                ca: ca.clone(),
                cert: read(dir.join(format!("node-{node}.pem")))?,
                key: read(dir.join(format!("node-{node}-key.pem")))?,
                domain: None,
            }),
            None => None,
        };
        let config = AgentConfig {
            tls,
            connect_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..AgentConfig::new(node, &self.controllers)
        };
        let store = StateStore::open(&self.state.join(node))?;
        let installs = installs.unwrap_or_default();
        let dataplane = Recorded {
            inner: MemoryDataplane::default(),
            installs: installs.clone(),
        };
        let agent = Agent::new(config, dataplane, store)?;
        let status = agent.status();
        let stop = self.shutdown.child_token();
        Ok(Running {
            node: node.to_string(),
            status,
            installs,
            join: Some(tokio::spawn(agent.run(stop.clone()))),
            stop,
        })
    }

    /// Stop `agent` and start it again from its saved state, keeping its record.
    pub async fn restart(&self, agent: &mut Running) -> Result<(), FleetError> {
        agent.stop().await;
        *agent = self.start(&agent.node, Some(agent.installs.clone()))?;
        Ok(())
    }
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
    let fleet = Fleet::new(controllers, certs, state, shutdown)?;
    nodes.iter().map(|n| fleet.start(n, None)).collect()
}

/// Stop every agent and wait for them.
pub async fn stop_all(agents: &mut [Running]) {
    for a in agents.iter() {
        a.stop.cancel();
    }
    for a in agents {
        a.stop().await;
    }
}
