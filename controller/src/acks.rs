//! Cluster-wide rollout state without writing acks anywhere (DESIGN.md contracts 5 and 9).
//!
//! An agent acks to the replica it is connected to. That replica records, per node, what its
//! own streams saw (the highest version acked with its digest, whether the agent is connected
//! here, its last nack, what it said of itself) in a [`Table`], each change under a new
//! sequence number. Every replica asks every other for the changes after the last one it holds
//! (`palisade.v1.Raft.Acks`, a long poll: `exchange`), and merges them into its own rollout
//! state per node by highest version. That is sound because a node's (version, digest) is the
//! same on every replica at a log index (tested in `replica/tests/cluster.rs`), and an agent's
//! version never goes down.
//!
//! Only what a replica's own streams saw goes into its table; merged knowledge never does, so
//! nothing echoes between replicas.

pub mod exchange;

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use palisade_policy::model::Name;
use palisade_policy::Digest;
use palisade_proto::v1 as pb;

use crate::rollout::{AgentInfo, NodeRollout};

/// Failed-closed entries carried per node between replicas (the agent's own list is longer
/// only when thousands of endpoints fail closed; the count is what matters then).
const FAILED_CLOSED_SHARED: usize = 1024;

/// What this replica's streams saw of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub digest: Option<Digest>,
    pub connected: bool,
    pub nack: Option<(u64, String)>,
    pub agent: AgentInfo,
    pub failed_closed: Vec<String>,
    pub warning: String,
    pub changed_unix_ms: u64,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This replica's table: what its own streams saw, with a sequence number per change.
pub struct Table {
    epoch: u64,
    seq: u64,
    nodes: HashMap<Name, (u64, Record)>,
    by_seq: BTreeMap<u64, Name>,
}

impl Table {
    /// An empty table; `epoch` distinguishes this run of the replica from earlier ones.
    pub fn new(epoch: u64) -> Table {
        Table {
            epoch,
            seq: 0,
            nodes: HashMap::new(),
            by_seq: BTreeMap::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Record what the streams of this replica now know of `node`; returns whether it changed.
    pub fn set(&mut self, node: &Name, mut record: Record) -> bool {
        if let Some((seq, old)) = self.nodes.get(node) {
            record.changed_unix_ms = old.changed_unix_ms;
            if *old == record {
                return false;
            }
            self.by_seq.remove(seq);
        }
        record.changed_unix_ms = unix_ms();
        self.seq += 1;
        self.by_seq.insert(self.seq, node.clone());
        self.nodes.insert(node.clone(), (self.seq, record));
        true
    }

    /// What an asker holding (`epoch`, `since`) lacks: `(full, records)`.
    pub fn since(&self, epoch: u64, since: u64) -> (bool, Vec<(Name, Record)>) {
        let full = epoch != self.epoch || since > self.seq;
        let from = if full { 0 } else { since };
        let records = self
            .by_seq
            .range(from + 1..)
            .map(|(_, n)| (n.clone(), self.nodes[n].1.clone()))
            .collect();
        (full, records)
    }

    /// Nodes with a stream open here.
    pub fn connected(&self) -> usize {
        self.nodes.values().filter(|(_, r)| r.connected).count()
    }
}

/// The record of a node as this replica's streams left it.
pub fn record_of(n: &NodeRollout, connected_here: bool) -> Record {
    Record {
        version: n.local_ack.map_or(0, |(v, _)| v),
        digest: n.local_ack.map(|(_, d)| d),
        connected: connected_here,
        nack: n.nack.clone(),
        agent: n.agent.clone(),
        failed_closed: n.failed_closed.clone(),
        warning: n.capacity_warning.clone(),
        changed_unix_ms: 0,
    }
}

/// What this replica holds of each peer's table.
#[derive(Default)]
pub struct Peers {
    tables: BTreeMap<u64, PeerTable>,
}

#[derive(Default)]
pub struct PeerTable {
    /// Nodes whose agents are connected to that peer (empty while it is unreachable), with
    /// when the peer recorded the connection (Unix ms).
    pub connected: HashMap<Name, u64>,
}

impl Peers {
    pub fn table(&mut self, id: u64) -> &mut PeerTable {
        self.tables.entry(id).or_default()
    }

    /// A peer that cannot be reached: its agents are not counted as connected (they move to
    /// other replicas); the acks it reported stay true.
    pub fn unreachable(&mut self, id: u64) -> Vec<Name> {
        self.tables
            .get_mut(&id)
            .map(|t| t.connected.drain().map(|(n, _)| n).collect())
            .unwrap_or_default()
    }

    /// The peer `node` is connected to, if any (the latest to say so when several do, which
    /// happens for a moment while an agent moves from a replica that is gone).
    pub fn connected_at(&self, node: &str) -> Option<u64> {
        self.tables
            .iter()
            .filter_map(|(id, t)| t.connected.get(node).map(|at| (*at, *id)))
            .max()
            .map(|(_, id)| id)
    }

    /// Nodes connected to peer `id`.
    pub fn agents(&self, id: u64) -> usize {
        self.tables.get(&id).map_or(0, |t| t.connected.len())
    }
}

/// A record on the wire.
pub fn to_pb(node: &Name, r: &Record) -> pb::NodeAck {
    pb::NodeAck {
        node: node.to_string(),
        version: r.version,
        digest: r.digest.map(|d| d.to_hex()).unwrap_or_default(),
        connected: r.connected,
        nack_version: r.nack.as_ref().map_or(0, |(v, _)| *v),
        nack_error: r.nack.as_ref().map(|(_, e)| e.clone()).unwrap_or_default(),
        agent_version: r.agent.version.clone(),
        dataplane: r.agent.dataplane,
        capacities: Some(pb::Capacities {
            endpoints: r.agent.capacities[0],
            identities: r.agent.capacities[1],
            rules: r.agent.capacities[2],
        }),
        failed_closed: r
            .failed_closed
            .iter()
            .take(FAILED_CLOSED_SHARED)
            .cloned()
            .collect(),
        capacity_warning: r.warning.clone(),
        changed_unix_ms: r.changed_unix_ms,
    }
}

/// A record from the wire, or why it cannot be one.
pub fn from_pb(a: pb::NodeAck) -> Result<(Name, Record), String> {
    if a.node.is_empty() || a.node.len() > 253 {
        return Err(format!("a node name of {} bytes", a.node.len()));
    }
    let digest = if a.digest.is_empty() {
        None
    } else {
        Some(
            Digest::from_hex(&a.digest)
                .ok_or_else(|| format!("node {}: digest is not 64 hex digits", a.node))?,
        )
    };
    let caps = a.capacities.unwrap_or_default();
    Ok((
        a.node.as_str().into(),
        Record {
            version: a.version,
            digest,
            connected: a.connected,
            nack: (a.nack_version > 0 || !a.nack_error.is_empty())
                .then_some((a.nack_version, a.nack_error)),
            agent: AgentInfo {
                version: a.agent_version,
                capacities: [caps.endpoints, caps.identities, caps.rules],
                dataplane: a.dataplane,
            },
            failed_closed: a.failed_closed,
            warning: a.capacity_warning,
            changed_unix_ms: a.changed_unix_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64, connected: bool) -> Record {
        Record {
            version,
            digest: Some(Digest([version as u8; 32])),
            connected,
            ..Record::default()
        }
    }

    #[test]
    fn askers_get_what_changed_since_their_position_or_everything() {
        let mut t = Table::new(7);
        let (a, b): (Name, Name) = ("a".into(), "b".into());
        assert!(t.set(&a, rec(1, true)));
        assert!(t.set(&b, rec(1, true)));
        assert!(
            !t.set(&b, rec(1, true)),
            "no change, no new sequence number"
        );
        assert_eq!(t.seq(), 2);
        assert!(t.set(&a, rec(2, true)));
        let (full, changed) = t.since(7, 2);
        assert!(!full);
        assert_eq!(changed, vec![(a.clone(), t.nodes[&a].1.clone())]);
        let (full, all) = t.since(6, 2);
        assert!(full, "another epoch: the whole table");
        assert_eq!(all.len(), 2);
        assert!(t.since(7, 3).1.is_empty());
        assert_eq!(t.connected(), 2);
        t.set(&a, rec(2, false));
        assert_eq!(t.connected(), 1);
    }

    #[test]
    fn records_survive_the_wire() {
        let mut r = rec(5, true);
        r.nack = Some((6, "no room".into()));
        r.agent.version = "0.1.0".into();
        r.agent.capacities = [1, 2, 3];
        r.failed_closed = vec!["10.0.0.1".into()];
        let node: Name = "n".into();
        assert_eq!(from_pb(to_pb(&node, &r)).unwrap(), (node, r));
        assert!(from_pb(pb::NodeAck {
            node: "n".into(),
            digest: "zz".into(),
            ..Default::default()
        })
        .is_err());
    }
}
