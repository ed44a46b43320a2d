//! A running lab: the topology, controller replicas in the root namespace (plaintext on the
//! bridge address, development mode; one, or a Raft group of several, each watching the same
//! manifests directory: the leader ingests it), and one `palisade-agent --dataplane ebpf` per
//! node inside the node's namespace, given every replica's address. Manifests are written into
//! the directory as a user would; the controllers' introspection says when they are realized.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_policy::cluster::{ClusterView, Probe};
use palisade_policy::model::Protocol;
use palisadectl::remote::{self, Conn};

use crate::probe::{self, Flow};
use crate::topology::{PodSpec, Topology};
use crate::LabError;
use palisade_procs::{Group, Member, Security, Spec, Start};
use palisadectl::output::Output;

/// Where each agent serves its metrics, inside its node's network namespace.
pub const AGENT_METRICS: &str = "127.0.0.1:9464";

/// Where the binaries are and how the agents run.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Directory holding `palisade-controller` and `palisade-agent`.
    pub bin_dir: PathBuf,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// Nodes without pods to start as well.
    pub extra_nodes: Vec<String>,
    /// Controller replicas (1: a group of one).
    pub replicas: u64,
}

impl LabOptions {
    /// Binaries beside the running executable (or one level up, from `target/*/deps`).
    pub fn beside_executable() -> LabOptions {
        LabOptions {
            bin_dir: palisade_procs::beside_executable(),
            agent_args: Vec::new(),
            extra_nodes: Vec::new(),
            replicas: 1,
        }
    }
}

pub struct Lab {
    pub topology: Topology,
    pub dir: PathBuf,
    pub manifests: PathBuf,
    /// Introspection of one live replica (see [`Lab::use_replica`]).
    pub conn: Conn,
    opts: LabOptions,
    /// The controller replicas (started, killed and stopped by the one kit every runner of
    /// replicas shares).
    controllers: Group,
    agents: BTreeMap<String, Child>,
    runtime: tokio::runtime::Runtime,
    port: u16,
}

/// Pods (with a node and an address) in manifests, as `palisadectl evaluate` sees them.
pub fn pods_of(manifests: &[(String, String)]) -> Result<Vec<PodSpec>, LabError> {
    let loaded = palisadectl::load::parse_sources(manifests, "default");
    if !loaded.errors.is_empty() {
        return Err(LabError::Manifests(loaded.errors.join("; ")));
    }
    let view = ClusterView::new(&loaded.engine());
    Ok(view
        .pods()
        .iter()
        .filter_map(|p| {
            Some(PodSpec {
                name: p.key.to_string(),
                node: p.node.as_ref()?.to_string(),
                ip: p.ip,
            })
        })
        .collect())
}

impl Lab {
    /// Build the topology for the pods in `manifests`, write them, start the controller and an
    /// agent per node, and wait until the controller says every node holds its slice.
    pub fn start(
        id: u8,
        manifests: &[(String, String)],
        opts: LabOptions,
    ) -> Result<Lab, LabError> {
        for bin in ["palisade-controller", "palisade-agent"] {
            if !opts.bin_dir.join(bin).exists() {
                return Err(LabError::Topology(format!(
                    "{bin} is not in {} (cargo build --bins first)",
                    opts.bin_dir.display()
                )));
            }
        }
        let pods = pods_of(manifests)?;
        let extra: Vec<&str> = opts.extra_nodes.iter().map(String::as_str).collect();
        let topology = Topology::build(id, &pods, &extra)?;
        let dir = PathBuf::from(format!("/run/palisade-lab/{id}"));
        let manifests_dir = dir.join("manifests");
        std::fs::create_dir_all(&manifests_dir).map_err(io("create the manifests directory"))?;
        for (name, text) in manifests {
            std::fs::write(manifests_dir.join(name), text).map_err(io("write a manifest"))?;
        }
        let port = 7400 + u16::from(id);
        if !(1..=3).contains(&opts.replicas) {
            return Err(LabError::Topology(format!(
                "{} controller replicas: the lab runs 1 to 3",
                opts.replicas
            )));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("start a runtime"))?;
        let controllers = Group::new(Spec {
            bin: opts.bin_dir.join("palisade-controller"),
            // Plaintext on the lab's own network (namespaces on this machine), said
            // explicitly.
            security: Security::Insecure { remote: true },
            args: vec![
                "--rescan".into(),
                "1s".into(),
                "--manifests".into(),
                manifests_dir.clone().into(),
            ],
            log_filter: "info".into(),
        });
        let mut lab = Lab {
            conn: Conn::insecure(&format!("{}:{port}", topology.gateway)),
            topology,
            dir,
            manifests: manifests_dir,
            opts,
            controllers,
            agents: BTreeMap::new(),
            runtime,
            port,
        };
        for replica in 1..=lab.opts.replicas {
            lab.start_controller(replica)?;
        }
        let nodes: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &nodes {
            lab.start_agent(n)?;
        }
        lab.settled()?;
        Ok(lab)
    }

    /// Wait until the controllers serve the manifests now in the directory (every node's
    /// desired digest is what a fresh compile of them gives) and every node holds it; the
    /// revision. (A revision number alone does not say: a new leader's first entry is one.)
    pub fn settled(&self) -> Result<u64, LabError> {
        let loaded = palisadectl::load::load(std::slice::from_ref(&self.manifests), "default")
            .map_err(|e| LabError::Manifests(e.to_string()))?;
        let engine = loaded.engine();
        let want: BTreeMap<String, String> = self
            .topology
            .nodes
            .iter()
            .map(|n| (n.name.clone(), engine.slice(&n.name).digest().to_hex()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let revision = loop {
            let served = self
                .runtime
                .block_on(remote::nodes(
                    &self.conn,
                    &Default::default(),
                    Default::default(),
                    Output::Json,
                ))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if let Some(v) = served {
                let digests: BTreeMap<String, String> = v["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| {
                        Some((
                            n["node"].as_str()?.to_string(),
                            n["desiredDigest"].as_str()?.to_string(),
                        ))
                    })
                    .collect();
                if want.iter().all(|(n, d)| digests.get(n) == Some(d)) {
                    break v["revision"].as_u64().unwrap_or(0);
                }
            }
            if Instant::now() > deadline {
                return Err(LabError::Controller(format!(
                    "the controllers did not serve the manifests within 60 s; log:\n{}",
                    self.logs(&self.controller_log(1))
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.wait_realized(revision)
    }

    fn log(&self, name: &str) -> Result<Stdio, LabError> {
        let f = std::fs::File::create(self.dir.join(format!("{name}.log")))
            .map_err(io("create a log file"))?;
        Ok(Stdio::from(f))
    }

    /// Replica `replica`'s gRPC port (its metrics are 1000 above).
    fn port_of(&self, replica: u64) -> u16 {
        self.port + 300 * (replica as u16 - 1)
    }

    /// Replica `replica`'s gRPC address, `http://ADDR:PORT`.
    pub fn controller_url(&self, replica: u64) -> String {
        format!("http://{}:{}", self.topology.gateway, self.port_of(replica))
    }

    /// The log of replica `replica` (`controller` when there is one).
    pub fn controller_log(&self, replica: u64) -> String {
        if self.opts.replicas == 1 {
            "controller".to_string()
        } else {
            format!("controller-{replica}")
        }
    }

    fn start_controller(&mut self, replica: u64) -> Result<(), LabError> {
        // Every replica of the lab's group, as its peers name it (the same each time).
        for r in 1..=self.opts.replicas {
            let addr = format!("{}:{}", self.topology.gateway, self.port_of(r));
            let name = self.controller_log(r);
            self.controllers.add(
                r,
                Member {
                    listen: addr.clone(),
                    reached: addr,
                    metrics: Some(format!(
                        "{}:{}",
                        self.topology.gateway,
                        self.port_of(r) + 1000
                    )),
                    state: self.dir.join(&name),
                    log: self.dir.join(format!("{name}.log")),
                    wrap: Vec::new(),
                },
            );
        }
        self.controllers
            .start(replica, Start::default())
            .map_err(|e| LabError::Command(format!("start palisade-controller: {e}")))?;
        Ok(())
    }

    /// SIGKILL replica `replica` (no goodbye to anyone).
    pub fn kill_controller(&mut self, replica: u64) {
        self.controllers.kill(replica);
    }

    /// Replicas running.
    pub fn controllers_alive(&self) -> Vec<u64> {
        self.controllers.alive()
    }

    /// Ask replica `replica` from now on.
    pub fn use_replica(&mut self, replica: u64) {
        self.conn.controller = self.controller_url(replica);
    }

    /// Replica `replica`'s Prometheus metrics.
    pub fn controller_metrics(&self, replica: u64) -> Result<String, LabError> {
        let addr = format!("{}:{}", self.topology.gateway, self.port_of(replica) + 1000);
        palisade_procs::http_get(&addr, "/metrics")
            .map_err(|e| LabError::Probe(format!("metrics of replica {replica}: {e}")))
    }

    /// Start (or restart) the agent of `node` with the eBPF dataplane.
    pub fn start_agent(&mut self, node: &str) -> Result<(), LabError> {
        let n = self
            .topology
            .node(node)
            .ok_or_else(|| LabError::Topology(format!("no node {node}")))?
            .clone();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.netns])
            .arg(self.opts.bin_dir.join("palisade-agent"))
            .args(["--insecure", "--insecure-allow-remote"])
            .args(["--dataplane", "ebpf", "--node", node])
            .args(["--metrics-listen", AGENT_METRICS])
            .arg("--controller")
            .arg(
                (1..=self.opts.replicas)
                    .map(|r| self.controller_url(r))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--bpffs")
            .arg(self.topology.bpffs.join(&n.name))
            .arg("--state-dir")
            .arg(self.dir.join("agents").join(&n.name))
            .args(&self.opts.agent_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log(&format!("agent-{node}"))?);
        let child = cmd
            .spawn()
            .map_err(|e| LabError::Command(format!("start palisade-agent for {node}: {e}")))?;
        self.agents.insert(node.to_string(), child);
        Ok(())
    }

    /// Wait until the (re)started agent of `node` has synced (its log says so) and the
    /// controller has its ack of the node's current version.
    pub fn agent_synced(&self, node: &str) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log_synced = self.logs(&format!("agent-{node}")).contains("synced");
            let acked = self.node_status(node).ok().is_some_and(|s| {
                s["connected"] == true && s["ackedVersion"] == s["desiredVersion"]
            });
            if log_synced && acked {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Controller(format!(
                    "the agent of {node} did not sync within 60 s; its log:\n{}",
                    self.logs(&format!("agent-{node}"))
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the agent of `node` (SIGTERM, then wait): its pinned programs and maps stay.
    pub fn stop_agent(&mut self, node: &str) {
        if let Some(c) = self.agents.remove(node) {
            terminate(c);
        }
    }

    /// Stop every controller replica: agents keep enforcing what they hold.
    pub fn stop_controller(&mut self) {
        for id in self.controllers.alive() {
            self.controllers.stop(id, STOP_GRACE);
        }
    }

    /// The agent of `node`'s Prometheus metrics (fetched inside the node's namespace).
    pub fn agent_metrics(&self, node: &str) -> Result<String, LabError> {
        use std::io::{Read, Write};
        let n = self
            .topology
            .node(node)
            .ok_or_else(|| LabError::Topology(format!("no node {node}")))?;
        crate::netns::in_netns(&n.netns, || {
            let mut s = std::net::TcpStream::connect(AGENT_METRICS)?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<String, std::io::Error>(out)
        })?
        .map_err(|e| LabError::Probe(format!("agent metrics of {node}: {e}")))
    }

    /// The text an agent or the controller logged.
    pub fn logs(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Write (or replace) a manifest file.
    pub fn write(&self, name: &str, text: &str) -> Result<(), LabError> {
        // Written beside and renamed into place: complete at once for the controller.
        palisade_files::atomic::write(&self.manifests.join(name), text.as_bytes())
            .map_err(io("write a manifest"))
    }

    pub fn remove(&self, name: &str) -> Result<(), LabError> {
        std::fs::remove_file(self.manifests.join(name)).map_err(io("remove a manifest"))
    }

    /// The controller's latest revision.
    pub fn revision(&self) -> Result<u64, LabError> {
        let text = self
            .runtime
            .block_on(remote::nodes(
                &self.conn,
                &Default::default(),
                Default::default(),
                Output::Json,
            ))
            .map_err(|e| LabError::Controller(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LabError::Controller(e.to_string()))?;
        Ok(v["revision"].as_u64().unwrap_or(0))
    }

    /// What the controller says of `node` (`palisadectl node NODE -o json`).
    pub fn node_status(&self, node: &str) -> Result<serde_json::Value, LabError> {
        let text = self
            .runtime
            .block_on(remote::node(
                &self.conn,
                node,
                None,
                Default::default(),
                true,
            ))
            .map_err(|e| LabError::Controller(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| LabError::Controller(e.to_string()))
    }

    /// Wait for a revision after `after` and for every node to hold it; returns it.
    pub fn realized(&self, after: u64) -> Result<u64, LabError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let revision = loop {
            match self.revision() {
                Ok(r) if r > after => break r,
                _ if Instant::now() > deadline => {
                    return Err(LabError::Controller(format!(
                        "no revision after {after} within 60 s; controller log:\n{}",
                        self.logs(&self.controller_log(1))
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.wait_realized(revision)
    }

    /// Wait until every node holds `revision`.
    fn wait_realized(&self, revision: u64) -> Result<u64, LabError> {
        let (text, ok) = self
            .runtime
            .block_on(remote::wait(
                &self.conn,
                Some(revision),
                Duration::from_secs(60),
                false,
            ))
            .map_err(|e| LabError::Controller(e.to_string()))?;
        if !ok {
            return Err(LabError::Controller(text));
        }
        Ok(revision)
    }

    /// Write a manifest and wait until it is enforced on every node.
    pub fn apply(&self, name: &str, text: &str) -> Result<u64, LabError> {
        let before = self.revision()?;
        self.write(name, text)?;
        self.realized(before)
    }

    /// Verdicts `palisadectl evaluate` predicts for `flows` from the manifests now in the
    /// directory (`outside` is an address in no pod).
    pub fn predicted(&self, flows: &[Flow]) -> Result<BTreeMap<Flow, bool>, LabError> {
        // Read as palisadectl reads a directory, which is as the controller reads it.
        let loaded = palisadectl::load::load(std::slice::from_ref(&self.manifests), "default")
            .map_err(|e| LabError::Manifests(e.to_string()))?;
        let view = ClusterView::new(&loaded.engine());
        let addrs = self.topology.endpoints();
        Ok(flows
            .iter()
            .map(|f| {
                let probe = Probe {
                    port: f.2,
                    protocol: f.3,
                };
                (f.clone(), view.allowed(addrs[&f.0], addrs[&f.1], probe))
            })
            .collect())
    }

    /// Verdicts measured with real connections; an error when a probe could not run.
    pub fn measured(&self, flows: &[Flow]) -> Result<BTreeMap<Flow, bool>, LabError> {
        let mut ns: BTreeMap<String, String> = self
            .topology
            .pods
            .iter()
            .map(|p| (p.spec.name.clone(), p.netns.clone()))
            .collect();
        ns.insert("outside".into(), self.topology.outside.netns.clone());
        probe::measure(flows, &ns, &self.topology.endpoints(), 48)
    }

    /// Every (from, to) pair of distinct pods and `outside` as a source, for each probe.
    pub fn all_flows(&self, probes: &[(u16, Protocol)]) -> Vec<Flow> {
        let names: Vec<String> = self
            .topology
            .pods
            .iter()
            .map(|p| p.spec.name.clone())
            .collect();
        let mut out = Vec::new();
        for (port, proto) in probes {
            for from in names.iter().chain(std::iter::once(&"outside".to_string())) {
                for to in &names {
                    if from != to {
                        out.push((from.clone(), to.clone(), *port, *proto));
                    }
                }
            }
        }
        out
    }

    /// Address of a pod (or `outside`).
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.topology.endpoints()[name]
    }
}

/// How long a process is given to end after SIGTERM, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn terminate(c: Child) {
    palisade_procs::stop(c, STOP_GRACE);
}

impl Drop for Lab {
    fn drop(&mut self) {
        let nodes: Vec<String> = self.agents.keys().cloned().collect();
        for n in nodes {
            self.stop_agent(&n);
        }
        self.stop_controller();
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> LabError {
    move |e| LabError::Command(format!("{what}: {e}"))
}
