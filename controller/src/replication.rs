//! The controller's Raft replica, wired to I/O: the thin tokio and thread adapters around the
//! sans-I/O [`palisade_replica::Replica`].
//!
//! * [`driver`]: one thread owns the replica. It ticks it, steps messages from peers into it,
//!   proposes batches of commands for the leader's sources and the admin API, and carries out
//!   each `Ready` (the log write is durable before the messages that depend on it leave).
//!   It never waits on the apply thread, so compiling or a slow reader cannot stall
//!   heartbeats.
//! * [`apply`]: one thread owns the applied state and applies what committed to it (the state machine, each
//!   entry at its index = its revision), installs snapshots sent by the leader, and takes
//!   snapshots every so many entries, which the driver stores (compacting the log).
//! * [`transport`]: Raft messages to and from peers over gRPC (`palisade.v1.Raft`) on the
//!   controller's own listener, mTLS with replica certificates; raft-rs's messages travel as
//!   opaque bytes.
//!
//! A proposal answers once its entry is applied here, with the index; or says why not (not
//! the leader, leadership lost before commit: raft-rs drops such proposals, so sources
//! reconcile against what was applied, never against what they proposed).

pub mod apply;
pub mod bootstrap;
pub mod driver;
pub mod exchange;
pub mod freshness;
pub mod identity;
pub mod peers;
pub mod report;
pub mod service;
pub mod standing;
pub mod start;
pub mod transport;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_policy::model::Command;
use palisade_replica::{Confirmed, Options, Role, Status};
use tokio::sync::{oneshot, watch};

pub use freshness::Freshness;
pub use peers::{parse_peers, PeersError};

/// How this replica joins its group.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id.
    pub id: u64,
    /// Every replica's id and gRPC address (this one's included). Empty: a group of one.
    pub peers: BTreeMap<u64, String>,
    /// One tick of Raft's logical clock (elections after `options.election_tick` ticks without
    /// a leader, heartbeats every `options.heartbeat_tick`).
    pub tick: Duration,
    pub options: Options,
    /// Largest log entry proposed, in bytes of encoded commands (a larger batch is split).
    pub entry_bytes: usize,
    /// A planted fault, for proving the load test's checker catches divergence: skip the
    /// first committed entry holding commands at or after this index (this replica's state
    /// then differs from its group's). Never set outside that test.
    pub fault_drop_entry: Option<u64>,
    /// With a blank directory and peers: create the group with them (a new group), instead
    /// of refusing to start (the directory may have lost its state).
    pub bootstrap: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: 1,
            peers: BTreeMap::new(),
            tick: Duration::from_millis(100),
            options: Options::default(),
            entry_bytes: 1 << 20,
            fault_drop_entry: None,
            bootstrap: false,
        }
    }
}

impl Config {
    /// Every voter's id.
    pub fn voters(&self) -> Vec<u64> {
        if self.peers.is_empty() {
            vec![self.id]
        } else {
            self.peers.keys().copied().collect()
        }
    }
}

/// Why a proposal did not become a revision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeFailed {
    #[error("this replica is not the leader{}", leader.map(|l| format!(" (the leader is replica {l})")).unwrap_or_else(|| " and no leader is known yet".into()))]
    NotLeader { leader: Option<u64> },
    #[error("leadership changed before the change was committed; it may or may not have been applied (applying again is safe)")]
    Lost,
    #[error("the replica has stopped: {0}")]
    Stopped(String),
}

/// Why a membership change was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeFailed {
    #[error("{0}")]
    Propose(#[from] ProposeFailed),
    #[error("{0}")]
    Refused(#[from] palisade_replica::membership::Refused),
    /// The leader is the replica to remove: leadership goes to `to` first; ask it again.
    #[error("replica {from} leads the group; leadership is being handed to replica {to} before it is removed")]
    Handing { from: u64, to: u64 },
    #[error("the replica has stopped")]
    Stopped,
}

/// A membership change's answer.
pub type ChangeReply = oneshot::Sender<Result<(u64, palisade_replica::Members), ChangeFailed>>;

/// A proposal committed and applied here: at which revision (a large proposal's last
/// entry), and what the state machine refused of it (objects another source owns, by key:
/// that source), decided once, in the log's order, the same on every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub revision: u64,
    pub refused: palisade_replica::Refused,
}

/// A proposal's answer.
pub type Reply = oneshot::Sender<Result<Committed, ProposeFailed>>;

/// A read index's answer: the index to apply before reading, or why the leader did not give
/// one.
pub type ReadReply = oneshot::Sender<Result<u64, String>>;

/// The group as this replica sees it, kept current by the driver and apply threads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// The replica's own view (its `applied` is what was handed out to apply).
    pub raft: Status,
    /// Applied to the state machine here (the latest revision served).
    pub applied: u64,
    /// On the leader: each member's matched index and whether it was heard from recently.
    pub progress: Vec<(u64, u64, bool)>,
    /// Who votes and who only learns, as this replica's configuration says.
    pub members: palisade_replica::Members,
    /// Why this replica stopped taking part (its log or state machine failed).
    pub failure: Option<String>,
    /// Read indexes the leader answered within the lease ([`palisade_replica::Lease`]).
    pub confirmed: Confirmed,
}

impl GroupStatus {
    pub fn is_leader(&self) -> bool {
        self.raft.role == Role::Leader && self.failure.is_none()
    }
}

/// Role names as introspection shows them.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
    }
}

/// The handle the rest of the controller uses: propose, and watch where the group stands.
#[derive(Clone)]
pub struct Group {
    pub(crate) id: u64,
    pub(crate) inbox: std::sync::mpsc::Sender<driver::Input>,
    pub(crate) status: watch::Receiver<GroupStatus>,
    /// The address this replica is reached at (from --peers, or its listener).
    pub(crate) address: String,
    pub(crate) transport: Arc<transport::Transport>,
    /// Why this replica refuses agents ([`standing`]), when it does.
    pub(crate) refusing: watch::Receiver<Option<String>>,
    /// How long a confirmation holds: the election timeout.
    pub(crate) lease: Duration,
    /// The runtime the group's async parts run on, for threads outside it that wait on them.
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Group {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where the group stands now.
    pub fn status(&self) -> GroupStatus {
        self.status.borrow().clone()
    }

    /// A watch of [`Group::status`].
    pub fn watch(&self) -> watch::Receiver<GroupStatus> {
        self.status.clone()
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Every replica's address by id, this one's included (membership changes add and
    /// remove them).
    pub fn peers(&self) -> BTreeMap<u64, String> {
        let mut all = self.transport.addresses();
        all.insert(self.id, self.address.clone());
        all
    }

    /// Change the group's membership (any replica takes it: a follower forwards it through
    /// the admin API, see [`crate::admin`]); answers once the change is applied here, with
    /// its index and the configuration then.
    /// `retired`: the ids removed before (the state machine's), never used again.
    pub async fn change(
        &self,
        change: palisade_replica::Change,
        retired: std::collections::BTreeSet<u64>,
    ) -> Result<(u64, palisade_replica::Members), ChangeFailed> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(driver::Input::Change {
                change,
                retired,
                reply,
            })
            .map_err(|_| ChangeFailed::Stopped)?;
        answer.await.unwrap_or(Err(ChangeFailed::Stopped))
    }

    /// Propose `commands` from `owner`; answers once applied here, with the revision and what
    /// was refused. A large batch is split into bounded entries (the answer is the last one's
    /// index, and what all of them refused).
    pub async fn propose(
        &self,
        owner: &str,
        commands: Vec<Command>,
    ) -> Result<Committed, ProposeFailed> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(driver::Input::Propose {
                owner: owner.to_string(),
                commands,
                reply,
                at: Instant::now(),
            })
            .map_err(|_| ProposeFailed::Stopped("the Raft driver is gone".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(ProposeFailed::Stopped("the Raft driver is gone".into())))
    }

    /// Wait (at most `bound`) until this replica has applied everything committed when it
    /// became leader, or everything committed now on a follower: a source reconciling, or
    /// the admin API comparing, against less would see stale state. Whether it did.
    pub async fn caught_up(&self, bound: Duration) -> bool {
        let mut w = self.status.clone();
        let target = self.catch_up_target();
        tokio::time::timeout(bound, w.wait_for(|s| s.applied >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Run `f` to its end from a thread outside the async runtime (the manifests source's),
    /// which waits meanwhile. Never from a task on the runtime (it panics there).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    fn catch_up_target(&self) -> u64 {
        let s = self.status.borrow();
        // A new leader's first entry is its last index when it took over: once applied,
        // every entry committed before it is too.
        if s.is_leader() {
            s.raft.last_index.max(s.raft.commit)
        } else {
            s.raft.commit
        }
    }

    /// How fresh what this replica serves is now.
    pub fn freshness(&self) -> Freshness {
        // A copy: never hold the status's read lock while doing anything else.
        let status = self.status.borrow().clone();
        freshness::assess(&status, Instant::now(), self.lease)
    }

    /// A consistent read: ask the leader to confirm its leadership (Raft's read index), then
    /// wait until this replica has applied what was committed then; at most `bound` in all.
    /// Answers with the freshness of the state a read may then be served from.
    pub async fn read_index(&self, bound: Duration) -> Result<Freshness, String> {
        let until = tokio::time::Instant::now() + bound;
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(driver::Input::ReadIndex {
                reply,
                until: Instant::now() + bound,
            })
            .map_err(|_| "the Raft driver is gone".to_string())?;
        // Bounded here too: a driver stuck on its disk answers nothing.
        let index = match tokio::time::timeout_at(until, answer).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => return Err("the Raft driver is gone".into()),
            Err(_) => {
                return Err(format!(
                    "no answer from this replica's Raft driver within {}",
                    humantime::format_duration(bound)
                ))
            }
        };
        let mut w = self.status.clone();
        match tokio::time::timeout_at(until, w.wait_for(|s| s.applied >= index)).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(format!(
                "the leader confirmed index {index}, but this replica had not applied it within {}",
                humantime::format_duration(bound)
            ))
            }
        }
        let mut f = self.freshness();
        f.confirmed = true;
        // Confirmed by the leader just now, whatever this replica's own lease says.
        f.stale = None;
        Ok(f)
    }

    /// Why this replica refuses agent streams now (cut off from its group), if it does.
    pub fn refusing_agents(&self) -> watch::Receiver<Option<String>> {
        self.refusing.clone()
    }

    /// When this replica last heard from each peer.
    pub fn contacts(&self) -> BTreeMap<u64, Instant> {
        self.transport.contacts()
    }
}

/// A failure that stops this replica taking part, shared by its threads.
#[derive(Clone, Default)]
pub struct Failure(Arc<Mutex<Option<String>>>);

impl Failure {
    pub fn set(&self, why: String) {
        tracing::error!("this replica stops taking part in the group: {why}; it keeps serving its last applied state");
        self.0.lock().expect("failure lock").get_or_insert(why);
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("failure lock").clone()
    }
}
