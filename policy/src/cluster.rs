//! Cluster-wide verdicts from per-node slices, the way the datapath reaches them: the source
//! pod's node checks egress on the source's interface, the destination pod's node checks
//! ingress on the destination's. Used by `palisadectl evaluate` and by introspection; it never
//! reads policies directly, only the compiled slices.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::engine::Engine;
use crate::eval::{check, DirVerdict, Flow};
use crate::model::{Direction, Name, ObjKey, Protocol};
use crate::slice::NodeSlice;

/// A pod that can send or receive policy-governed traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub key: ObjKey,
    pub ip: Ipv4Addr,
    /// `None`: not scheduled, so enforced nowhere.
    pub node: Option<Name>,
}

/// One direction's check, on the node that performs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeCheck {
    pub node: Name,
    pub verdict: DirVerdict,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowExplanation {
    pub flow: Flow,
    pub source: Option<PodInfo>,
    pub destination: Option<PodInfo>,
    pub self_traffic: bool,
    /// `None` when the source is not a scheduled pod (nothing checks its egress).
    pub egress: Option<NodeCheck>,
    /// `None` when the destination is not a scheduled pod.
    pub ingress: Option<NodeCheck>,
    pub allowed: bool,
}

/// A port and protocol to probe every pod pair with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
}

/// One direction of `flow` for `pod` (if any), on its node's slice.
fn side<'a>(
    pod: &Option<PodInfo>,
    dir: Direction,
    flow: &Flow,
    slice: impl Fn(&str) -> Option<Cow<'a, NodeSlice>>,
) -> Option<NodeCheck> {
    let pod = pod.as_ref()?;
    let node = pod.node.as_ref()?;
    let verdict = slice(node)
        .and_then(|s| check(&s, flow, dir))
        .unwrap_or_else(|| DirVerdict::NotIsolated {
            endpoint: pod.key.clone(),
        });
    Some(NodeCheck {
        node: node.clone(),
        verdict,
    })
}

/// The verdict of `flow` between `source` and `destination` (the pods at its addresses, if
/// any), from the slices `slice` returns for their nodes.
fn explain_with<'a>(
    flow: &Flow,
    source: Option<PodInfo>,
    destination: Option<PodInfo>,
    slice: impl Fn(&str) -> Option<Cow<'a, NodeSlice>>,
) -> FlowExplanation {
    let egress = side(&source, Direction::Egress, flow, &slice);
    let ingress = side(&destination, Direction::Ingress, flow, &slice);
    FlowExplanation::new(*flow, source, destination, egress, ingress)
}

impl FlowExplanation {
    /// The verdict of the checks made: allowed when every direction checked passes (and
    /// always for traffic to itself).
    pub fn new(
        flow: Flow,
        source: Option<PodInfo>,
        destination: Option<PodInfo>,
        egress: Option<NodeCheck>,
        ingress: Option<NodeCheck>,
    ) -> FlowExplanation {
        let self_traffic = flow.src == flow.dst;
        let passes = |c: &Option<NodeCheck>| c.as_ref().is_none_or(|c| c.verdict.passes());
        FlowExplanation {
            flow,
            allowed: self_traffic || (passes(&egress) && passes(&ingress)),
            source,
            destination,
            self_traffic,
            egress,
            ingress,
        }
    }
}

/// The peer pod at `ip` (the smallest key when several claim it), by a scan of every pod.
pub fn peer_at(engine: &Engine, ip: Ipv4Addr) -> Option<PodInfo> {
    engine
        .pods()
        .into_iter()
        .find(|p| p.peer_ip() == Some(ip))
        .map(|p| PodInfo {
            key: p.key.clone(),
            ip,
            node: p.node.clone(),
        })
}

/// The verdict of one flow straight from an engine: only the two nodes' slices involved are
/// materialised (finding the pods scans every pod once).
pub fn explain_in(engine: &Engine, flow: &Flow) -> FlowExplanation {
    let source = peer_at(engine, flow.src);
    let destination = peer_at(engine, flow.dst);
    explain_with(flow, source, destination, |n| {
        Some(Cow::Owned(engine.slice(n)))
    })
}

/// Every node's slice and every peer pod, materialised once for many queries.
pub struct ClusterView {
    slices: BTreeMap<Name, NodeSlice>,
    pods: Vec<PodInfo>,
    by_ip: BTreeMap<Ipv4Addr, usize>,
}

impl ClusterView {
    pub fn new(engine: &Engine) -> ClusterView {
        let pods: Vec<PodInfo> = engine
            .pods()
            .into_iter()
            .filter_map(|p| {
                Some(PodInfo {
                    key: p.key.clone(),
                    ip: p.peer_ip()?,
                    node: p.node.clone(),
                })
            })
            .collect();
        let mut by_ip = BTreeMap::new();
        for (i, p) in pods.iter().enumerate() {
            // With duplicate addresses the smallest key wins, as on the node.
            by_ip.entry(p.ip).or_insert(i);
        }
        let slices = engine
            .nodes()
            .into_iter()
            .map(|n| (n.node.clone(), engine.slice(&n.node)))
            .collect();
        ClusterView {
            slices,
            pods,
            by_ip,
        }
    }

    /// Peer pods (with an address, not host-network, not finished), sorted by key.
    pub fn pods(&self) -> &[PodInfo] {
        &self.pods
    }

    pub fn pod(&self, key: &ObjKey) -> Option<&PodInfo> {
        self.pods.iter().find(|p| &p.key == key)
    }

    pub fn slice(&self, node: &str) -> Option<&NodeSlice> {
        self.slices.get(node)
    }

    pub fn explain(&self, flow: &Flow) -> FlowExplanation {
        let pod = |ip| self.by_ip.get(&ip).map(|i| self.pods[*i].clone());
        explain_with(flow, pod(flow.src), pod(flow.dst), |n| {
            self.slices.get(n).map(Cow::Borrowed)
        })
    }

    pub fn allowed(&self, src: Ipv4Addr, dst: Ipv4Addr, probe: Probe) -> bool {
        self.explain(&Flow {
            src,
            dst,
            protocol: probe.protocol.number(),
            port: probe.port,
        })
        .allowed
    }

    /// Reachability among all peer pods: `matrix[src][dst]`.
    pub fn matrix(&self, probe: Probe) -> BTreeMap<String, BTreeMap<String, bool>> {
        self.pods
            .iter()
            .map(|s| {
                let row = self
                    .pods
                    .iter()
                    .map(|d| (d.key.to_string(), self.allowed(s.ip, d.ip, probe)))
                    .collect();
                (s.key.to_string(), row)
            })
            .collect()
    }
}
