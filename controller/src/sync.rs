//! The agent sync stream (contracts.md §6).
//!
//! Each connection knows what the agent holds (or that it does not know), and the node's
//! latest version from a watch channel. When they differ, and the agent has answered the
//! previous update (one unacknowledged update at a time), it sends what takes the agent from
//! the one to the other, computed at that moment: so a slow agent gets one coalesced update
//! for everything it missed, and the controller holds at most one message per connection in
//! flight (memory per agent is bounded). Transport buffers alone would not do this: small
//! updates fit in HTTP/2 windows and would queue there. Updates recorded in the node's history
//! go out pre-encoded, shared with every other send of them; plans are made from the hub's
//! view (no lock), snapshots are sliced by the apply thread when asked and encoded here.
//!
//! Bounded whatever an agent does: one stream per node (a newer one replaces the older),
//! agent-supplied strings are cut to a few KiB before they are stored or logged, and an agent
//! that keeps acking a digest other than the one sent gets its snapshots with a growing
//! back-off instead of one per round trip.

use std::sync::Arc;
use std::time::Duration;

use palisade_policy::model::Name;
use palisade_policy::{Digest, NodeSlice};
use palisade_proto::pre_encoded::sync_server::Sync;
use palisade_proto::v1::agent_message::Msg;
use palisade_proto::v1::{self as pb};
use palisade_proto::Encoded;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, warn, Instrument};

use crate::auth;
use crate::hub::Hub;
use crate::replication::Group;

mod connection;
pub mod session;
mod streams;

use connection::{Connection, Stop};
use session::{Knowledge, Session};
pub use streams::{Stream, Streams};

#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Plaintext, no identities checked.
    pub insecure: bool,
    /// Send a keepalive first on every stream and then this often (where this replica stands:
    /// agents leave one that falls silent, is not current, or stalls).
    pub keepalive: Duration,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// How long an agent holding a version this replica has not applied yet waits for it
    /// (then it is sent elsewhere).
    pub resume_wait: Duration,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            insecure: false,
            keepalive: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(10),
            resume_wait: Duration::from_secs(5),
        }
    }
}

/// Most bytes of an agent-supplied string (nack error, capacity warning, failed-closed
/// entry) kept and logged.
pub const MAX_TEXT: usize = 1024;
/// Most failed-closed endpoints kept from one ack (an endpoint map holds a few thousand).
pub const MAX_FAILED_CLOSED: usize = 65_536;

/// `s` cut to at most `max` bytes (on a character boundary), saying how much was cut.
pub fn cap(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let cut = s.len();
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(&format!("… ({} more bytes)", cut - end));
    s
}

pub struct SyncService {
    hub: Arc<Hub>,
    /// The one open stream of each node here.
    streams: Arc<Streams>,
    config: SyncConfig,
    /// Where this replica's group stands, and whether it refuses agents.
    group: Group,
    shutdown: CancellationToken,
}

impl SyncService {
    pub fn new(
        hub: Arc<Hub>,
        streams: Arc<Streams>,
        config: SyncConfig,
        group: Group,
        shutdown: CancellationToken,
    ) -> SyncService {
        SyncService {
            hub,
            streams,
            config,
            group,
            shutdown,
        }
    }
}

fn parse_hello(m: Option<pb::AgentMessage>) -> Result<pb::Hello, Status> {
    let Some(pb::AgentMessage {
        msg: Some(Msg::Hello(hello)),
    }) = m
    else {
        return Err(Status::invalid_argument(
            "the first message of a sync stream must be Hello",
        ));
    };
    if hello.node.is_empty() {
        return Err(Status::invalid_argument("Hello.node is empty"));
    }
    if hello.node.len() > 253 {
        return Err(Status::invalid_argument(
            "Hello.node is longer than a node name can be (253)",
        ));
    }
    Ok(hello)
}

impl SyncService {
    /// An agent holding `version` may be served here once this replica has applied that far:
    /// served from older state, it would move back. Wait for that (bounded); then send it
    /// elsewhere. A leader whose log does not even reach `version`, and that has applied all
    /// it committed, serves it all the same: by Raft's leader completeness no committed entry
    /// is missing from a leader's log, so the agent's version came from an earlier group
    /// (one whose state was wiped). (A new leader that has not committed in its term yet may
    /// still hold entries it has not applied: that is why the log's end, not the commit
    /// index, decides.)
    async fn caught_up_with(&self, version: u64) -> Result<(), Status> {
        let mut revisions = self.hub.revisions();
        if *revisions.borrow_and_update() >= version {
            return Ok(());
        }
        self.hub.metrics.stream_parked();
        info!(
            version,
            "the agent holds a version this replica has not applied yet: waiting for it"
        );
        let waited = tokio::time::timeout(
            self.config.resume_wait,
            revisions.wait_for(|r| *r >= version),
        )
        .await;
        if waited.is_ok_and(|r| r.is_ok()) {
            return Ok(());
        }
        let s = self.group.status();
        if serves_ahead(s.is_leader(), &s.raft, s.applied, version) {
            return Ok(());
        }
        Err(Status::unavailable(format!(
            "this replica has applied revisions up to {} and the agent holds version {version}: try another replica",
            s.applied
        )))
    }
}

/// Whether a replica that has not applied `version` serves an agent holding it all the same:
/// a leader whose log does not reach it and that applied all it committed (see
/// `SyncService::caught_up_with`).
pub fn serves_ahead(
    leader: bool,
    raft: &palisade_replica::Status,
    applied: u64,
    version: u64,
) -> bool {
    leader && version > raft.last_index && applied >= raft.commit
}

#[tonic::async_trait]
impl Sync for SyncService {
    type StreamStream = ReceiverStream<Result<Encoded, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let refused = |s: Status| {
            self.hub.metrics.stream_refused();
            warn!(code = %s.code(), message = s.message(), "sync stream refused");
            s
        };
        let ids = auth::caller(&req, self.config.insecure).map_err(refused)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(self.config.hello_timeout, inbound.message())
            .await
            .map_err(|_| refused(Status::deadline_exceeded("no Hello received in time")))?
            .map_err(refused)?;
        let hello = parse_hello(first).map_err(refused)?;
        auth::authorize_node(&ids, &hello.node).map_err(refused)?;
        let holds = if hello.last_digest.is_empty() && hello.last_version == 0 {
            Knowledge::Holds(0, NodeSlice::empty(&hello.node).digest())
        } else {
            match Digest::from_hex(&hello.last_digest) {
                Some(d) => Knowledge::Holds(hello.last_version, d),
                None => {
                    return Err(refused(Status::invalid_argument(
                        "Hello.last_digest is not 64 hex digits",
                    )))
                }
            }
        };
        let mut refusing = self.group.refusing_agents();
        if let Some(why) = refusing.borrow_and_update().clone() {
            return Err(refused(Status::unavailable(format!(
                "{why}: try another replica"
            ))));
        }
        self.caught_up_with(hello.last_version)
            .await
            .map_err(refused)?;
        let (tx, rx) = mpsc::channel(1);
        let node: Name = hello.node.as_str().into();
        let span = info_span!("sync", node = %node);
        let stream = self.streams.open(&node);
        let conn = Connection {
            hub: self.hub.clone(),
            streams: self.streams.clone(),
            group: self.group.clone(),
            config: self.config.clone(),
            session: Session::new(node, holds),
        };
        let stop = Stop {
            shutdown: self.shutdown.clone(),
            stream,
            refusing,
        };
        tokio::spawn(conn.run(hello, inbound, tx, stop).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::session::divergence_backoff;
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        assert_eq!(cap("short".into(), 10), "short");
        let cut = cap("é".repeat(10), 5);
        assert!(
            cut.starts_with("éé") && cut.ends_with("(16 more bytes)"),
            "{cut}"
        );
        assert_eq!(divergence_backoff(1), Duration::ZERO);
        assert_eq!(divergence_backoff(2), Duration::from_secs(1));
        assert_eq!(divergence_backoff(30), Duration::from_secs(60));
    }
}
