//! `ExplainFlow`: one flow against the slices (as the datapath decides it), explained in the
//! policies' terms by `palisade_policy::report`, the same document `palisadectl evaluate`
//! prints offline (sent whole as `report_json`, and summarised in the typed fields).

use std::borrow::Cow;
use std::net::Ipv4Addr;

use palisade_policy::cluster::{self, FlowExplanation, NodeCheck, PodInfo};
use palisade_policy::eval::{self, DirVerdict, Flow};
use palisade_policy::model::{Direction, Name, ObjKey};
use palisade_policy::report::{self, Check, FlowReport, Outcome};
use palisade_proto::convert;
use palisade_proto::v1::{self as pb, direction_check::Result as CheckResult};
use tonic::Status;

use crate::applied::State;

/// An address from `IP` or `namespace/name` of a pod with an address.
fn address(st: &State, s: &str, field: &str) -> Result<Ipv4Addr, Status> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let key: ObjKey = s
        .parse()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e} or an IPv4 address")))?;
    let pod = st
        .engine()
        .pod(&key)
        .ok_or_else(|| Status::not_found(format!("{field}: no pod {key}")))?;
    pod.peer_ip().ok_or_else(|| {
        Status::failed_precondition(format!(
            "{field}: pod {key} is not a policy peer (no IPv4 address, host network, or finished)"
        ))
    })
}

pub(super) fn flow(
    st: &State,
    req: &pb::ExplainFlowRequest,
) -> Result<pb::FlowExplanation, Status> {
    let protocol = convert::protocol_from_pb(req.protocol, "protocol")
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .ok_or_else(|| Status::invalid_argument("protocol: name TCP, UDP or SCTP"))?;
    let port = u16::try_from(req.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Status::invalid_argument(format!("port: {} is not 1-65535", req.port)))?;
    let flow = Flow {
        src: address(st, &req.source, "source")?,
        dst: address(st, &req.destination, "destination")?,
        protocol: protocol.number(),
        port,
    };
    let engine = st.engine();
    let r = if req.node.is_empty() {
        let e = cluster::explain_in(engine, &flow);
        report::report(engine, &e, protocol, None, |n| {
            Some(Cow::Owned(engine.slice(n)))
        })
    } else {
        let node: Name = req.node.as_str().into();
        let slice = engine.slice(&node);
        let source = cluster::peer_at(engine, flow.src);
        let destination = cluster::peer_at(engine, flow.dst);
        // A side on this node is checked here (not isolated when no policy selects it); a
        // side elsewhere is not.
        let on_node = |p: &Option<PodInfo>, dir| {
            let p = p.as_ref().filter(|p| p.node.as_ref() == Some(&node))?;
            let verdict =
                eval::check(&slice, &flow, dir).unwrap_or_else(|| DirVerdict::NotIsolated {
                    endpoint: p.key.clone(),
                });
            Some(NodeCheck {
                node: node.clone(),
                verdict,
            })
        };
        let egress = on_node(&source, Direction::Egress);
        let ingress = on_node(&destination, Direction::Ingress);
        let self_traffic = flow.src == flow.dst;
        if egress.is_none() && ingress.is_none() && !self_traffic {
            let at = |p: &Option<PodInfo>, ip: Ipv4Addr| match p {
                Some(PodInfo {
                    key, node: Some(n), ..
                }) => format!("{key} is on node {n}"),
                Some(PodInfo { key, .. }) => format!("{key} is not scheduled"),
                None => format!("{ip} is not a pod"),
            };
            return Err(Status::failed_precondition(format!(
                "neither end of the flow is on node {node}: {}, {}; nothing on {node} checks it (ask without --node, or on their nodes)",
                at(&source, flow.src),
                at(&destination, flow.dst)
            )));
        }
        let e = FlowExplanation::new(flow, source, destination, egress, ingress);
        report::report(engine, &e, protocol, Some(&node), |_| {
            Some(Cow::Borrowed(&slice))
        })
    };
    Ok(to_pb(&r))
}

fn to_pb(r: &FlowReport) -> pb::FlowExplanation {
    let check = |c: &Check| -> Option<pb::DirectionCheck> {
        let result = match c.result {
            Outcome::NotChecked => return None,
            Outcome::NotIsolated => CheckResult::NotIsolated,
            Outcome::Allowed => CheckResult::Allowed,
            Outcome::Denied => CheckResult::Denied,
        };
        Some(pb::DirectionCheck {
            node: c.node.clone().unwrap_or_default(),
            endpoint: c.endpoint.clone().unwrap_or_default(),
            result: result as i32,
            policies: c.policies.clone(),
            rules: c
                .allowed_by
                .iter()
                .map(|v| format!("{} {}: {}; {}", v.policy, v.rule, v.peers, v.ports))
                .collect(),
            not_matched: c
                .not_matched
                .iter()
                .map(|m| {
                    format!(
                        "{} {}: peers {}; ports {}",
                        m.policy, m.rule, m.peers.why, m.ports.why
                    )
                })
                .collect(),
        })
    };
    pb::FlowExplanation {
        allowed: r.allowed,
        self_traffic: r.self_traffic,
        source_ip: r.from.ip.to_string(),
        destination_ip: r.to.ip.to_string(),
        source_pod: r.from.pod.clone().unwrap_or_default(),
        destination_pod: r.to.pod.clone().unwrap_or_default(),
        egress: check(&r.egress),
        ingress: check(&r.ingress),
        report_json: serde_json::to_string(r).expect("serialisable"),
        freshness: None,
    }
}
