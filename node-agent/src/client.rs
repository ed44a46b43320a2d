//! The agent's sync client: an explicit state machine that connects, says what it holds,
//! applies what the controller sends (to a copy, then the dataplane, then disk) and acks it,
//! and on any trouble backs off with jitter and reconnects, resuming from what it holds.
//!
//! ```text
//! Connecting ──ok──> Syncing ──first message applied──> Synced ──┐ messages applied
//!     ^                 │                                 │  <────┘
//!     │               error                        error/silence
//!     └──── Backoff <───┴─────────────────────────────────┘
//! ```

use std::sync::Arc;
use std::time::Duration;

use palisade_policy::delta::{self, SliceDelta};
use palisade_policy::slice::NodeSlice;
use palisade_policy::Digest;
use palisade_proto::convert;
use palisade_proto::v1::controller_message::Msg;
use palisade_proto::v1::sync_client::SyncClient;
use palisade_proto::v1::{self as pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use tracing::{debug, info, warn};

use crate::dataplane::{Dataplane, Installed};
use crate::store::StateStore;

pub use palisade_proto::endpoint::ClientTls;

#[derive(Clone)]
pub struct AgentConfig {
    pub node: String,
    /// `host:port`, or a URL with `http://` or `https://`.
    pub controller: String,
    /// `None`: plaintext (the controller must run with `--insecure`).
    pub tls: Option<ClientTls>,
    pub connect_timeout: Duration,
    /// Reconnect when the controller has sent nothing for this long (it sends keepalives).
    pub silence_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl AgentConfig {
    pub fn new(node: &str, controller: &str) -> AgentConfig {
        AgentConfig {
            node: node.to_string(),
            controller: controller.to_string(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(35),
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

/// What the agent has done, observable while it runs.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub phase: Phase,
    /// What the dataplane holds.
    pub version: u64,
    pub digest: Digest,
    pub connects: u64,
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
}

enum State {
    Connecting { attempt: u32 },
    Syncing(Session),
    Synced(Session),
    Backoff { attempt: u32, reason: String },
}

struct Session {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: Streaming<pb::ControllerMessage>,
}

/// What a message calls for.
enum Reply {
    Ack(u64, Digest, Installed),
    Nack(u64, String),
    /// Nack, then end the session and come back later: a local failure (the state cannot be
    /// saved) that a reconnection retries.
    NackAndRetry(u64, String),
    Nothing,
}

/// The policy-holding half of the agent: what the dataplane holds and where it is saved.
/// Moved into a blocking task for each message (installing and fsyncing block).
struct Holder<D> {
    held: NodeSlice,
    /// What the last install left failed closed.
    installed: Installed,
    dataplane: D,
    store: Arc<StateStore>,
}

impl<D: Dataplane> Holder<D> {
    /// Save `target`, then install it. Disk first: a restart reinstalls what is saved, so
    /// what is saved must never be older than what the dataplane holds and was acked. A slice
    /// that cannot be saved is not installed (and not acked); a slice that cannot be installed
    /// is unsaved again.
    fn install(&mut self, target: NodeSlice, delta: Option<&SliceDelta>) -> Reply {
        let (version, digest) = (target.version, target.digest());
        if let Err(e) = self.store.save(&target) {
            return Reply::NackAndRetry(
                version,
                format!("cannot save the slice, so it is not applied: {e}"),
            );
        }
        let installed = match self.dataplane.install(&target, delta) {
            Ok(i) => i,
            Err(e) => {
                if let Err(undo) = self.store.save(&self.held) {
                    warn!("cannot save the held slice back after a failed install: {undo}");
                }
                return Reply::Nack(version, e.to_string());
            }
        };
        if let Some(w) = &installed.warning {
            warn!(version, "{w}");
        }
        self.held = target;
        self.installed = installed.clone();
        Reply::Ack(version, digest, installed)
    }

    fn handle(&mut self, msg: Msg) -> Reply {
        match msg {
            Msg::Keepalive(_) => Reply::Nothing,
            Msg::Snapshot(s) => {
                let Some(wire) = s.slice else {
                    return Reply::Nack(0, "snapshot without a slice".into());
                };
                let version = wire.version;
                match convert::slice_from_pb(&wire) {
                    Err(e) => Reply::Nack(version, format!("unreadable snapshot: {e}")),
                    Ok((slice, digest)) if slice.digest() != digest => Reply::Nack(
                        version,
                        format!(
                            "snapshot content has digest {}, not {digest}",
                            slice.digest()
                        ),
                    ),
                    Ok((slice, _)) => self.install(slice, None),
                }
            }
            Msg::Update(u) => {
                let to = u.to_version;
                if u.from_version != self.held.version {
                    return Reply::Nack(
                        to,
                        format!(
                            "update from version {}, but holding {}",
                            u.from_version, self.held.version
                        ),
                    );
                }
                let Some(digest) = Digest::from_hex(&u.digest) else {
                    return Reply::Nack(to, "update digest is not 64 hex digits".into());
                };
                let delta = match u.delta.as_ref().map(convert::delta_from_pb).transpose() {
                    Ok(d) => d.unwrap_or_default(),
                    Err(e) => return Reply::Nack(to, format!("unreadable update: {e}")),
                };
                let mut target = self.held.clone();
                if let Err(e) = delta::apply(&mut target, &delta) {
                    return Reply::Nack(to, format!("update does not fit the held slice: {e}"));
                }
                target.version = to;
                if target.digest() != digest {
                    return Reply::Nack(
                        to,
                        format!(
                            "slice after the update has digest {}, not {digest}",
                            target.digest()
                        ),
                    );
                }
                if delta.is_empty() && self.held.version == to {
                    return Reply::Ack(to, digest, self.installed.clone());
                }
                self.install(target, Some(&delta))
            }
        }
    }
}

pub struct Agent<D> {
    config: AgentConfig,
    holder: Option<Holder<D>>,
    /// Slices in a row that could not be saved: the back-off before trying again grows.
    save_failures: u32,
    status: watch::Sender<Status>,
    endpoint: Endpoint,
}

impl AgentConfig {
    /// The controller's endpoint, or why the address or TLS material cannot be used.
    pub fn endpoint(&self) -> Result<Endpoint, AgentError> {
        Ok(palisade_proto::endpoint::endpoint(
            &self.controller,
            self.tls.as_ref(),
            palisade_proto::endpoint::Options {
                connect_timeout: self.connect_timeout,
                keepalive: Some(Duration::from_secs(10)),
            },
        )?)
    }
}

impl<D: Dataplane> Agent<D> {
    /// An agent holding what `store` saved (installed into `dataplane` again), or nothing.
    pub fn new(
        config: AgentConfig,
        mut dataplane: D,
        store: StateStore,
    ) -> Result<Agent<D>, AgentError> {
        let endpoint = config.endpoint()?;
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
            ..Status::default()
        })
        .0;
        Ok(Agent {
            config,
            save_failures: 0,
            holder: Some(Holder {
                held,
                installed,
                dataplane,
                store: Arc::new(store),
            }),
            status,
            endpoint,
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
        let mut state = State::Connecting { attempt: 0 };
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
            State::Connecting { attempt } => {
                self.set_phase(Phase::Connecting);
                // Bound the whole attempt (TCP, TLS, HTTP/2, the controller's first response):
                // a peer that accepts and then says nothing must not hold the agent here.
                let limit = self.config.connect_timeout * 2;
                let connected = tokio::select! {
                    _ = shutdown.cancelled() => return stop(),
                    c = tokio::time::timeout(limit, self.connect()) => c
                        .unwrap_or_else(|_| Err(format!("no answer from {} within {limit:?}", self.config.controller))),
                };
                match connected {
                    Ok(session) => {
                        self.status.send_modify(|s| s.connects += 1);
                        self.set_phase(Phase::Syncing);
                        State::Syncing(session)
                    }
                    Err(reason) => State::Backoff {
                        attempt: attempt + 1,
                        reason,
                    },
                }
            }
            State::Syncing(mut session) => match self.next_message(&mut session, shutdown).await {
                Ok(()) => {
                    self.set_phase(Phase::Synced);
                    info!(version = self.held().version, "synced");
                    State::Synced(session)
                }
                Err(reason) => State::Backoff {
                    attempt: self.save_failures.max(1),
                    reason,
                },
            },
            State::Synced(mut session) => match self.next_message(&mut session, shutdown).await {
                Ok(()) => State::Synced(session),
                // A session that worked: reconnect promptly (unless saving keeps failing).
                Err(reason) => State::Backoff {
                    attempt: self.save_failures,
                    reason,
                },
            },
            State::Backoff { attempt, reason } => {
                self.set_phase(Phase::Backoff);
                let cap = self
                    .config
                    .backoff_initial
                    .saturating_mul(1u32 << attempt.min(16))
                    .min(self.config.backoff_max);
                let delay = Duration::from_millis(fastrand::u64(0..=cap.as_millis() as u64));
                warn!(%reason, ?delay, "sync interrupted; reconnecting");
                self.status.send_modify(|s| s.last_error = Some(reason));
                tokio::select! {
                    _ = shutdown.cancelled() => stop(),
                    _ = tokio::time::sleep(delay) => State::Connecting { attempt },
                }
            }
        }
    }

    async fn connect(&self) -> Result<Session, String> {
        let channel: Channel = self.endpoint.connect().await.map_err(|e| {
            format!(
                "connecting to {}: {}",
                self.config.controller,
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
    ) -> Result<(), String> {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return Err("shutting down".into()),
            r = tokio::time::timeout(self.config.silence_timeout, session.inbound.message()) => r,
        };
        let msg = received
            .map_err(|_| {
                format!(
                    "nothing from the controller for {:?}",
                    self.config.silence_timeout
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
            Reply::Nothing => return Ok(()),
            Reply::Ack(version, digest, installed) => {
                debug!(version, "ack");
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
            _ => Ok(()),
        }
    }
}

fn capacities_pb(c: crate::dataplane::Capacities) -> pb::Capacities {
    pb::Capacities {
        endpoints: c.endpoints.unwrap_or(0),
        identities: c.identities.unwrap_or(0),
        rules: c.rules.unwrap_or(0),
    }
}
