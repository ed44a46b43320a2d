//! Cluster-wide rollout state without writing acks anywhere (contracts.md §5 and §9).
//!
//! An agent acks to the replica it is connected to. That replica records, per node, what its
//! own streams saw (the highest version acked with its digest, whether the agent is connected
//! here, its last nack, what it said of itself) in a [`Table`], each change under a new
//! sequence number. Every replica asks every other for the changes after the last one it holds
//! (`palisade.v1.Raft.Acks`, a long poll: `replication::exchange`), and merges them into its own rollout
//! state per node by highest version. That is sound because a node's (version, digest) is the
//! same on every replica at a log index (tested in `replica/tests/cluster.rs`), and an agent's
//! version never goes down.
//!
//! Only what a replica's own streams saw goes into its table; merged knowledge never does, so
//! nothing echoes between replicas.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_policy::model::Name;
use palisade_policy::Digest;
use palisade_proto::v1 as pb;

/// Failed-closed entries carried per node between replicas (the agent's own list is longer
/// only when thousands of endpoints fail closed; the count is what matters then).
pub const FAILED_CLOSED_SHARED: usize = 1024;

/// What an agent said of itself in Hello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub version: String,
    /// Map capacities (endpoints, identities, rules; 0: unlimited).
    pub capacities: [u64; 3],
    /// `palisade.v1.Dataplane`.
    pub dataplane: i32,
}

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

/// This replica's table: what its own streams saw, with a sequence number per change. A node
/// this replica forgets leaves a tombstone (`None`) for askers that hold it; past
/// [`MAX_TOMBSTONES`] they are dropped and the epoch changes, so every asker starts over with
/// the whole table: the table stays bounded by the nodes this replica knows.
pub struct Table {
    epoch: u64,
    seq: u64,
    nodes: HashMap<Name, (u64, Option<Record>)>,
    by_seq: BTreeMap<u64, Name>,
    tombstones: usize,
}

/// Tombstones kept before the table starts a new epoch.
const MAX_TOMBSTONES: usize = 4096;

impl Table {
    /// An empty table; `epoch` distinguishes this run of the replica from earlier ones.
    pub fn new(epoch: u64) -> Table {
        Table {
            epoch,
            seq: 0,
            nodes: HashMap::new(),
            by_seq: BTreeMap::new(),
            tombstones: 0,
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
        if let Some((_, Some(old))) = self.nodes.get(node) {
            record.changed_unix_ms = old.changed_unix_ms;
            if *old == record {
                return false;
            }
        }
        record.changed_unix_ms = unix_ms();
        self.put(node, Some(record));
        true
    }

    /// This replica no longer knows `node`; returns whether the table changed.
    pub fn forget(&mut self, node: &Name) -> bool {
        if !matches!(self.nodes.get(node), Some((_, Some(_)))) {
            return false;
        }
        self.put(node, None);
        self.tombstones += 1;
        if self.tombstones > MAX_TOMBSTONES {
            self.nodes.retain(|_, (_, r)| r.is_some());
            let nodes = &self.nodes;
            self.by_seq.retain(|_, n| nodes.contains_key(n));
            self.tombstones = 0;
            self.epoch = self.epoch.wrapping_add(1).max(1);
        }
        true
    }

    fn put(&mut self, node: &Name, record: Option<Record>) {
        if let Some((seq, _)) = self.nodes.get(node) {
            self.by_seq.remove(seq);
        }
        self.seq += 1;
        self.by_seq.insert(self.seq, node.clone());
        self.nodes.insert(node.clone(), (self.seq, record));
    }

    /// What an asker holding (`epoch`, `since`) lacks: `(full, records)`; `None`: forgotten
    /// (never in a full answer).
    pub fn since(&self, epoch: u64, since: u64) -> (bool, Vec<(Name, Option<Record>)>) {
        let full = epoch != self.epoch || since > self.seq;
        let from = if full { 0 } else { since };
        let records = self
            .by_seq
            .range(from + 1..)
            .map(|(_, n)| (n.clone(), self.nodes[n].1.clone()))
            .filter(|(_, r)| !full || r.is_some())
            .collect();
        (full, records)
    }

    /// Nodes with a stream open here.
    pub fn connected(&self) -> usize {
        self.nodes
            .values()
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.connected))
            .count()
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
    /// When the peer last answered an ask for its table (`None`: unreachable, or never),
    /// and the revision it had applied then.
    pub answered: Option<(Instant, u64)>,
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
            .map(|t| {
                t.answered = None;
                t.connected.drain().map(|(n, _)| n).collect()
            })
            .unwrap_or_default()
    }

    /// Each peer that answered within `within`: the agents connected to it, and the revision
    /// it had applied when it answered.
    pub fn answering(&self, within: Duration) -> Vec<(usize, u64)> {
        self.tables
            .values()
            .filter_map(|t| match t.answered {
                Some((at, applied)) if at.elapsed() < within => Some((t.connected.len(), applied)),
                _ => None,
            })
            .collect()
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

/// A record (or a forgotten node: `None`) on the wire.
pub fn to_pb(node: &Name, r: Option<&Record>) -> pb::NodeAck {
    let Some(r) = r else {
        return pb::NodeAck {
            node: node.to_string(),
            forgotten: true,
            ..pb::NodeAck::default()
        };
    };
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
        forgotten: false,
    }
}

/// A peer's table as read from the wire: the changes after what this replica held (or the
/// whole table, `full`), each node's record (`None`: the peer forgot the node), and the
/// revision the peer had applied.
#[derive(Clone, Debug, Default)]
pub struct PeerChanges {
    pub full: bool,
    pub applied: u64,
    pub nodes: Vec<(Name, Option<Record>)>,
}

/// A peer's table from the wire, and why each record that cannot be one was left out.
pub fn decode(table: pb::AckTable) -> (PeerChanges, Vec<String>) {
    let mut unreadable = Vec::new();
    let nodes = table
        .nodes
        .into_iter()
        .filter_map(|wire| from_pb(wire).map_err(|why| unreadable.push(why)).ok())
        .collect();
    let changes = PeerChanges {
        full: table.full,
        applied: table.applied,
        nodes,
    };
    (changes, unreadable)
}

/// A record from the wire (`None`: the peer forgot the node), or why it cannot be one.
pub fn from_pb(a: pb::NodeAck) -> Result<(Name, Option<Record>), String> {
    if a.node.is_empty() || a.node.len() > 253 {
        return Err(format!("a node name of {} bytes", a.node.len()));
    }
    if a.forgotten {
        return Ok((a.node.as_str().into(), None));
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
        Some(Record {
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
        }),
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
        // A forgotten node reaches askers as a tombstone, and whole tables leave it out.
        assert!(t.forget(&b));
        assert!(!t.forget(&b));
        assert_eq!(t.since(7, 3), (false, vec![(b.clone(), None)]));
        assert_eq!(t.since(0, 0).1.len(), 1);
        assert!(t.set(&b, rec(1, true)));
        let (full, all) = t.since(6, 2);
        assert!(full, "another epoch: the whole table");
        assert_eq!(all.len(), 2);
        assert!(t.since(7, t.seq()).1.is_empty());
        assert_eq!(t.connected(), 2);
        t.set(&a, rec(2, false));
        assert_eq!(t.connected(), 1);
    }

    #[test]
    fn tombstones_are_bounded_by_a_new_epoch() {
        let mut t = Table::new(1);
        for i in 0..=MAX_TOMBSTONES {
            let n: Name = format!("n{i}").as_str().into();
            t.set(&n, rec(1, true));
            t.forget(&n);
        }
        assert_eq!(t.epoch(), 2, "asked again from scratch");
        assert!(t.nodes.is_empty() && t.by_seq.is_empty());
    }

    #[test]
    fn records_survive_the_wire() {
        let mut r = rec(5, true);
        r.nack = Some((6, "no room".into()));
        r.agent.version = "0.1.0".into();
        r.agent.capacities = [1, 2, 3];
        r.failed_closed = vec!["10.0.0.1".into()];
        let node: Name = "n".into();
        assert_eq!(
            from_pb(to_pb(&node, Some(&r))).unwrap(),
            (node.clone(), Some(r))
        );
        assert_eq!(from_pb(to_pb(&node, None)).unwrap(), (node, None));
        assert!(from_pb(pb::NodeAck {
            node: "n".into(),
            digest: "zz".into(),
            ..Default::default()
        })
        .is_err());
    }
}
