//! The agent's sync client: an explicit state machine that connects, says what it holds,
//! applies what the controller sends (to a copy, then the dataplane, then disk) and acks it,
//! and on any trouble moves to the next controller replica (backing off with jitter once every
//! one has failed) and reconnects, resuming from what it holds (`controllers`).
//!
//! ```text
//! Connecting ──ok──> Syncing ──first message applied──> Synced ──┐ messages applied
//!     ^                 │                                 │  <────┘
//!     │               error                        error/silence
//!     └──── Backoff <───┴─────────────────────────────────┘
//! ```

use std::sync::Arc;
use std::time::Duration;

use palisade_policy::slice::NodeSlice;
use palisade_policy::Digest;
use palisade_proto::v1::controller_message::Msg;
use palisade_proto::v1::sync_client::SyncClient;
use palisade_proto::v1::{self as pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use tracing::{debug, info, warn};

mod controllers;
pub use controllers::home;
mod holder;
pub mod watchdog;

use crate::dataplane::{Dataplane, Installed};
use crate::store::StateStore;
use controllers::Controllers;
use holder::{Holder, Reply};
use watchdog::Watchdog;

pub use palisade_proto::endpoint::ClientTls;

#[derive(Clone)]
pub struct AgentConfig {
    pub node: String,
    /// The controller replicas: each `host:port`, or a URL with `http://` or `https://`.
    /// The agent stays on one and moves to the next when it fails.
    pub controllers: Vec<String>,
    /// `None`: plaintext (the controller must run with `--insecure`).
    pub tls: Option<ClientTls>,
    pub connect_timeout: Duration,
    /// Reconnect when the controller has sent nothing for this long; `None`: three of the
    /// keepalive intervals it announces ([`watchdog`]).
    pub silence_timeout: Option<Duration>,
    /// Move to another replica when the one in use says it is not current, or stops
    /// applying what its group committed, for this long.
    pub stale_after: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl AgentConfig {
    /// `controllers`: one address, or several separated by commas.
    pub fn new(node: &str, controllers: &str) -> AgentConfig {
        AgentConfig {
            node: node.to_string(),
            controllers: controllers
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            silence_timeout: None,
            stale_after: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Where the client is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Connecting,
    Syncing,
    Synced,
    Backoff,
    Stopped,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Connecting,
        Phase::Syncing,
        Phase::Synced,
        Phase::Backoff,
        Phase::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Syncing => "syncing",
            Phase::Synced => "synced",
            Phase::Backoff => "backoff",
            Phase::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the agent has done, observable while it runs.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub phase: Phase,
    /// What the dataplane holds.
    pub version: u64,
    pub digest: Digest,
    /// The controller replica in use (or tried last).
    pub controller: String,
    /// Sessions started (streams the controller accepted).
    pub connects: u64,
    /// Times the agent moved to another replica after a failure.
    pub moves: u64,
    pub snapshots: u64,
    pub updates: u64,
    pub keepalives: u64,
    pub acks: u64,
    pub nacks: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Endpoint(#[from] palisade_proto::endpoint::EndpointError),
    #[error("no controller address given")]
    NoController,
}

enum State {
    Connecting,
    Syncing(Session),
    Synced(Session),
    Backoff { attempt: u32, reason: String },
}

struct Session {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: Streaming<pb::ControllerMessage>,
}

pub struct Agent<D> {
    config: AgentConfig,
    holder: Option<Holder<D>>,
    /// Slices in a row that could not be saved: the back-off before trying again grows.
    save_failures: u32,
    status: watch::Sender<Status>,
    controllers: Controllers,
    watchdog: Watchdog,
}

impl AgentConfig {
    /// Each controller replica's address and endpoint, or why an address or the TLS material
    /// cannot be used.
    pub fn endpoints(&self) -> Result<Vec<(String, Endpoint)>, AgentError> {
        if self.controllers.is_empty() {
            return Err(AgentError::NoController);
        }
        self.controllers
            .iter()
            .map(|a| {
                let ep = palisade_proto::endpoint::endpoint(
                    a,
                    self.tls.as_ref(),
                    palisade_proto::endpoint::Options {
                        connect_timeout: self.connect_timeout,
                        keepalive: Some(Duration::from_secs(10)),
                    },
                )?;
                Ok((a.clone(), ep))
            })
            .collect()
    }
}

impl<D: Dataplane> Agent<D> {
    /// An agent holding what `store` saved (installed into `dataplane` again), or nothing.
    pub fn new(
        config: AgentConfig,
        mut dataplane: D,
        store: StateStore,
    ) -> Result<Agent<D>, AgentError> {
        let controllers = Controllers::new(&config.node, config.endpoints()?);
        let empty = NodeSlice::empty(&config.node);
        let mut installed = Installed::default();
        let held = match store.load() {
            Ok(Some(s)) if *s.node == *config.node => match dataplane.install(&s, None) {
                Ok(i) => {
                    info!(version = s.version, "resuming from the saved slice");
                    installed = i;
                    s
                }
                Err(e) => {
                    warn!("the saved slice does not fit the dataplane ({e}); starting empty");
                    empty
                }
            },
            Ok(Some(s)) => {
                warn!(saved = %s.node, "the saved slice is another node's; starting empty");
                empty
            }
            Ok(None) => empty,
            Err(e) => {
                warn!("{e}; starting empty");
                empty
            }
        };
        let status = watch::channel(Status {
            version: held.version,
            digest: held.digest(),
            controller: controllers.current().0.to_string(),
            ..Status::default()
        })
        .0;
        Ok(Agent {
            watchdog: Watchdog::new(config.stale_after, config.silence_timeout),
            config,
            save_failures: 0,
            holder: Some(Holder {
                held,
                installed,
                dataplane,
                store: Arc::new(store),
            }),
            status,
            controllers,
        })
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    fn held(&self) -> &NodeSlice {
        &self
            .holder
            .as_ref()
            .expect("holder is back after each message")
            .held
    }

    fn set_phase(&self, phase: Phase) {
        self.status.send_modify(|s| s.phase = phase);
    }

    /// Run until `shutdown`; returns the dataplane. Shutdown is noticed whenever the agent
    /// waits (connecting, receiving, backing off), never in the middle of applying a message.
    pub async fn run(mut self, shutdown: CancellationToken) -> D {
        let mut state = State::Connecting;
        while !shutdown.is_cancelled() {
            state = self.step(state, &shutdown).await;
        }
        self.set_phase(Phase::Stopped);
        info!("agent stopped");
        self.holder
            .take()
            .expect("holder is back after each message")
            .dataplane
    }

    async fn step(&mut self, state: State, shutdown: &CancellationToken) -> State {
        let stop = || State::Backoff {
            attempt: 0,
            reason: "shutting down".into(),
        };
        match state {
            State::Connecting => {
                self.set_phase(Phase::Connecting);
                // Bound the whole attempt (TCP, TLS, HTTP/2, the controller's first response):
                // a peer that accepts and then says nothing must not hold the agent here.
                let limit = self.config.connect_timeout * 2;
                let connected = tokio::select! {
                    _ = shutdown.cancelled() => return stop(),
                    c = tokio::time::timeout(limit, self.connect()) => c
                        .unwrap_or_else(|_| Err(format!("no answer from {} within {}", self.controllers.current().0, humantime::format_duration(limit)))),
                };
                match connected {
                    Ok(session) => {
                        self.watchdog.reset();
                        self.status.send_modify(|s| s.connects += 1);
                        self.set_phase(Phase::Syncing);
                        State::Syncing(session)
                    }
                    Err(reason) => self.failed(reason),
                }
            }
            State::Syncing(mut session) => match self.next_message(&mut session, shutdown).await {
                // A keepalive says where the replica stands; syncing takes a slice.
                Ok(Received::Keepalive) => State::Syncing(session),
                Ok(Received::Slice) => {
                    self.set_phase(Phase::Synced);
                    self.controllers.worked();
                    info!(
                        version = self.held().version,
                        controller = self.controllers.current().0,
                        "synced"
                    );
                    State::Synced(session)
                }
                Err(reason) => self.failed(reason),
            },
            // A session that worked: reconnect promptly, to the next replica (unless saving
            // keeps failing).
            State::Synced(mut session) => match self.next_message(&mut session, shutdown).await {
                Ok(_) => State::Synced(session),
                Err(reason) => self.failed(reason),
            },
            State::Backoff { attempt, reason } => {
                self.set_phase(Phase::Backoff);
                let delay = palisade_backoff::Backoff::new(
                    self.config.backoff_initial,
                    self.config.backoff_max,
                )
                .with_jitter(palisade_backoff::Jitter::Full)
                .delay(attempt);
                warn!(%reason, delay = %humantime::format_duration(delay), "sync interrupted; reconnecting");
                self.status.send_modify(|s| s.last_error = Some(reason));
                tokio::select! {
                    _ = shutdown.cancelled() => stop(),
                    _ = tokio::time::sleep(delay) => State::Connecting,
                }
            }
        }
    }

    /// The session with the current replica failed (or never started): move to the next
    /// one, right away while some replica is untried since the last session that worked,
    /// with a growing back-off once every one has failed (or while saving fails locally).
    fn failed(&mut self, reason: String) -> State {
        let rounds = self.controllers.failed();
        if self.controllers.len() > 1 {
            let next = self.controllers.current().0.to_string();
            info!(controller = next, "moving to another controller replica");
            self.status.send_modify(|s| {
                s.moves += 1;
                s.controller = next;
            });
        }
        State::Backoff {
            attempt: rounds.max(self.save_failures),
            reason,
        }
    }

    async fn connect(&self) -> Result<Session, String> {
        let (address, endpoint) = self.controllers.current();
        let channel: Channel = endpoint.connect().await.map_err(|e| {
            format!(
                "connecting to {}: {}",
                address,
                palisade_proto::error_chain(&e)
            )
        })?;
        let (tx, rx) = mpsc::channel(16);
        let held = self.held();
        let hello = pb::Hello {
            node: self.config.node.clone(),
            last_version: held.version,
            last_digest: held.digest().to_hex(),
            capacities: Some(capacities_pb(
                self.holder.as_ref().expect("holder").dataplane.capacities(),
            )),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            dataplane: match self.holder.as_ref().expect("holder").dataplane.kind() {
                crate::dataplane::Kind::Ebpf => pb::Dataplane::Ebpf,
                crate::dataplane::Kind::Memory => pb::Dataplane::Memory,
            } as i32,
        };
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(hello)),
        })
        .await
        .map_err(|_| "stream closed before Hello".to_string())?;
        let inbound = SyncClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .stream(ReceiverStream::new(rx))
            .await
            .map_err(|s| {
                format!(
                    "controller refused the stream: {} ({:?})",
                    s.message(),
                    s.code()
                )
            })?
            .into_inner();
        debug!("stream open");
        Ok(Session { tx, inbound })
    }

    /// Receive one message, apply it and answer; an error ends the session.
    async fn next_message(
        &mut self,
        session: &mut Session,
        shutdown: &CancellationToken,
    ) -> Result<Received, String> {
        let silence = self.watchdog.silence_timeout();
        let received = tokio::select! {
            _ = shutdown.cancelled() => return Err("shutting down".into()),
            r = tokio::time::timeout(silence, session.inbound.message()) => r,
        };
        let msg = received
            .map_err(|_| {
                format!(
                    "nothing from the controller for {} (it may be frozen)",
                    humantime::format_duration(silence)
                )
            })?
            .map_err(|s| format!("stream error: {} ({:?})", s.message(), s.code()))?
            .ok_or_else(|| "the controller closed the stream".to_string())?;
        let Some(msg) = msg.msg else {
            return Err("empty message from the controller".into());
        };
        self.status.send_modify(|s| match &msg {
            Msg::Snapshot(_) => s.snapshots += 1,
            Msg::Update(_) => s.updates += 1,
            Msg::Keepalive(_) => s.keepalives += 1,
        });
        let kind = match &msg {
            Msg::Snapshot(_) => "snapshot",
            Msg::Update(_) => "update",
            Msg::Keepalive(k) => return self.keepalive(k),
        };
        let before = self.status.borrow().version;
        let mut holder = self.holder.take().expect("holder");
        let (holder, reply) = tokio::task::spawn_blocking(move || {
            let reply = holder.handle(msg);
            (holder, reply)
        })
        .await
        .map_err(|e| format!("applying a message panicked: {e}"))?;
        self.holder = Some(holder);
        let local_failure = matches!(reply, Reply::NackAndRetry(..));
        if local_failure {
            self.save_failures += 1;
        } else if matches!(reply, Reply::Ack(..)) {
            self.save_failures = 0;
        }
        let mut retry = None;
        let answer = match reply {
            Reply::Nothing => return Ok(Received::Slice),
            Reply::Ack(version, digest, installed) => {
                // One line per version applied; an ack of what is already held is not news.
                if version != before {
                    info!(version, from = before, kind, %digest, "applied");
                } else {
                    debug!(version, kind, "ack");
                }
                self.status.send_modify(|s| {
                    s.acks += 1;
                    s.version = version;
                    s.digest = digest;
                });
                pb::agent_message::Msg::Ack(pb::Ack {
                    version,
                    digest: digest.to_hex(),
                    failed_closed: installed
                        .failed_closed
                        .iter()
                        .map(|a| a.to_string())
                        .collect(),
                    warning: installed.warning.unwrap_or_default(),
                })
            }
            Reply::Nack(version, error) | Reply::NackAndRetry(version, error) => {
                warn!(version, %error, "nack");
                self.status.send_modify(|s| {
                    s.nacks += 1;
                    s.last_error = Some(error.clone());
                });
                retry = Some(error.clone());
                pb::agent_message::Msg::Nack(pb::Nack { version, error })
            }
        };
        session
            .tx
            .send(pb::AgentMessage { msg: Some(answer) })
            .await
            .map_err(|_| "stream closed".to_string())?;
        match (retry, local_failure) {
            (Some(error), true) => Err(error),
            _ => Ok(Received::Slice),
        }
    }

    /// Where the replica stands: leave it when the watchdog says so and another replica is
    /// there to go to (alone, say so and stay: what the dataplane holds stays enforced).
    fn keepalive(&mut self, k: &pb::Keepalive) -> Result<Received, String> {
        let Some(why) = self.watchdog.keepalive(k, std::time::Instant::now()) else {
            return Ok(Received::Keepalive);
        };
        if self.controllers.len() > 1 {
            return Err(why);
        }
        warn!("{why}; no other controller replica is configured: staying, enforcing what the dataplane holds");
        Ok(Received::Keepalive)
    }
}

/// What a message received was.
enum Received {
    Keepalive,
    /// A snapshot or update (applied, or refused with a nack).
    Slice,
}

fn capacities_pb(c: crate::dataplane::Capacities) -> pb::Capacities {
    pb::Capacities {
        endpoints: c.endpoints.unwrap_or(0),
        identities: c.identities.unwrap_or(0),
        rules: c.rules.unwrap_or(0),
    }
}
