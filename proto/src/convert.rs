//! Policy types ↔ `palisade.v1` messages. Encoding is total; decoding checks every field and
//! names the one that is wrong. A slice survives the round trip exactly, so its digest does too.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use palisade_policy::delta::{DirDelta, EndpointDelta, IsolationChange, MemberChange, SliceDelta};
use palisade_policy::model::{Name, ObjKey, Operator, Protocol, Requirement, Selector};
use palisade_policy::net::Prefix;
use palisade_policy::slice::{
    AddressSet, DirPolicy, Endpoint, Member, NodeSlice, NsScope, PeerRef, PortMatch, Rule, SetDef,
    SetId,
};
use palisade_policy::Digest;

use crate::v1 as pb;
use pb::set_definition::{self, pods::Namespaces};

/// A message that does not describe a valid policy value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn required<'a, T>(v: &'a Option<T>, field: &str) -> Result<&'a T, ConvertError> {
    v.as_ref().ok_or_else(|| bad(field, "missing"))
}

pub fn protocol_to_pb(p: Option<Protocol>) -> i32 {
    p.map_or(pb::Protocol::Any as i32, |p| i32::from(p.number()))
}

/// `None` for PROTOCOL_ANY.
pub fn protocol_from_pb(v: i32, field: &str) -> Result<Option<Protocol>, ConvertError> {
    if v == pb::Protocol::Any as i32 {
        return Ok(None);
    }
    u8::try_from(v)
        .ok()
        .and_then(Protocol::from_number)
        .map(Some)
        .ok_or_else(|| bad(field, format!("unknown protocol {v}")))
}

pub fn obj_to_pb(k: &ObjKey) -> pb::ObjectRef {
    pb::ObjectRef {
        namespace: k.namespace.to_string(),
        name: k.name.to_string(),
    }
}

pub fn obj_from_pb(o: &pb::ObjectRef) -> ObjKey {
    ObjKey::new(&o.namespace, &o.name)
}

pub fn ip_from_pb(s: &str, field: &str) -> Result<Ipv4Addr, ConvertError> {
    s.parse()
        .map_err(|_| bad(field, format!("'{s}' is not an IPv4 address")))
}

pub fn set_id_from_pb(s: &str, field: &str) -> Result<SetId, ConvertError> {
    SetId::from_str(s).map_err(|e| bad(field, e))
}

pub fn digest_from_pb(s: &str, field: &str) -> Result<Digest, ConvertError> {
    Digest::from_hex(s).ok_or_else(|| bad(field, format!("'{s}' is not a digest (64 hex digits)")))
}

pub fn selector_to_pb(s: &Selector) -> pb::LabelSelector {
    use pb::requirement::Operator as Op;
    let requirements = s
        .requirements()
        .iter()
        .map(|r| {
            let (op, values) = match &r.op {
                Operator::In(v) => (Op::In, v.iter().cloned().collect()),
                Operator::NotIn(v) => (Op::NotIn, v.iter().cloned().collect()),
                Operator::Exists => (Op::Exists, vec![]),
                Operator::DoesNotExist => (Op::DoesNotExist, vec![]),
            };
            pb::Requirement {
                key: r.key.clone(),
                operator: op as i32,
                values,
            }
        })
        .collect();
    pb::LabelSelector { requirements }
}

pub fn selector_from_pb(s: &pb::LabelSelector, field: &str) -> Result<Selector, ConvertError> {
    use pb::requirement::Operator as Op;
    let reqs = s.requirements.iter().enumerate().map(|(i, r)| {
        let values: BTreeSet<String> = r.values.iter().cloned().collect();
        let op = match Op::try_from(r.operator) {
            Ok(Op::In) => Operator::In(values),
            Ok(Op::NotIn) => Operator::NotIn(values),
            Ok(Op::Exists) => Operator::Exists,
            Ok(Op::DoesNotExist) => Operator::DoesNotExist,
            _ => {
                return Err(bad(
                    &format!("{field}.requirements[{i}].operator"),
                    format!("unknown operator {}", r.operator),
                ))
            }
        };
        Ok(Requirement {
            key: r.key.clone(),
            op,
        })
    });
    Ok(Selector::new(reqs.collect::<Result<Vec<_>, _>>()?))
}

pub fn set_def_to_pb(d: &SetDef) -> pb::SetDefinition {
    let kind = match d {
        SetDef::Pods { namespaces, pods } => set_definition::Kind::Pods(set_definition::Pods {
            namespaces: Some(match namespaces {
                NsScope::Name(n) => Namespaces::Namespace(n.to_string()),
                NsScope::Selector(s) => Namespaces::NamespaceSelector(selector_to_pb(s)),
            }),
            pods: Some(selector_to_pb(pods)),
        }),
        SetDef::IpBlock { cidr, except } => {
            set_definition::Kind::IpBlock(set_definition::IpBlock {
                cidr: cidr.to_string(),
                except: except.iter().map(|e| e.to_string()).collect(),
            })
        }
        SetDef::NamedPort {
            within,
            protocol,
            name,
        } => set_definition::Kind::NamedPort(Box::new(set_definition::NamedPort {
            within: within.as_deref().map(|w| Box::new(set_def_to_pb(w))),
            protocol: protocol_to_pb(Some(*protocol)),
            name: name.to_string(),
        })),
    };
    pb::SetDefinition { kind: Some(kind) }
}

pub fn set_def_from_pb(d: &pb::SetDefinition, field: &str) -> Result<SetDef, ConvertError> {
    let prefix = |s: &str, f: &str| Prefix::from_str(s).map_err(|e| bad(f, format!("'{s}': {e}")));
    match required(&d.kind, field)? {
        set_definition::Kind::Pods(p) => Ok(SetDef::Pods {
            namespaces: match required(&p.namespaces, &format!("{field}.pods.namespaces"))? {
                Namespaces::Namespace(n) => NsScope::Name(n.as_str().into()),
                Namespaces::NamespaceSelector(s) => NsScope::Selector(selector_from_pb(
                    s,
                    &format!("{field}.pods.namespaceSelector"),
                )?),
            },
            pods: selector_from_pb(
                required(&p.pods, &format!("{field}.pods.pods"))?,
                &format!("{field}.pods.pods"),
            )?,
        }),
        set_definition::Kind::IpBlock(b) => Ok(SetDef::IpBlock {
            cidr: prefix(&b.cidr, &format!("{field}.ipBlock.cidr"))?,
            except: b
                .except
                .iter()
                .enumerate()
                .map(|(i, e)| prefix(e, &format!("{field}.ipBlock.except[{i}]")))
                .collect::<Result<_, _>>()?,
        }),
        set_definition::Kind::NamedPort(n) => Ok(SetDef::NamedPort {
            within: match &n.within {
                None => None,
                Some(w) => Some(Box::new(set_def_from_pb(
                    w,
                    &format!("{field}.namedPort.within"),
                )?)),
            },
            protocol: protocol_from_pb(n.protocol, &format!("{field}.namedPort.protocol"))?
                .ok_or_else(|| {
                    bad(
                        &format!("{field}.namedPort.protocol"),
                        "a named port needs a protocol",
                    )
                })?,
            name: n.name.as_str().into(),
        }),
    }
}

pub fn address_set_to_pb(s: &AddressSet) -> pb::AddressSet {
    pb::AddressSet {
        id: s.id.to_string(),
        definition: Some(set_def_to_pb(&s.def)),
        members: s.members.iter().map(|m| m.to_string()).collect(),
        description: s.def.to_string(),
    }
}

pub fn members_from_pb(v: &[String], field: &str) -> Result<Vec<Member>, ConvertError> {
    v.iter()
        .enumerate()
        .map(|(i, m)| Member::from_str(m).map_err(|e| bad(&format!("{field}[{i}]"), e)))
        .collect()
}

pub fn address_set_from_pb(s: &pb::AddressSet, field: &str) -> Result<AddressSet, ConvertError> {
    let def = set_def_from_pb(
        required(&s.definition, &format!("{field}.definition"))?,
        &format!("{field}.definition"),
    )?;
    let id = set_id_from_pb(&s.id, &format!("{field}.id"))?;
    if def.id() != id {
        return Err(bad(
            &format!("{field}.id"),
            format!("{id} is not the id of its definition ({})", def.id()),
        ));
    }
    Ok(AddressSet {
        id,
        def,
        members: members_from_pb(&s.members, &format!("{field}.members"))?
            .into_iter()
            .collect(),
    })
}

pub fn rule_to_pb(r: &Rule) -> pb::Rule {
    let ports = match &r.ports {
        PortMatch::Any => pb::PortMatch::default(),
        PortMatch::Range { protocol, from, to } => pb::PortMatch {
            protocol: protocol_to_pb(Some(*protocol)),
            from_port: u32::from(*from),
            to_port: u32::from(*to),
            named: false,
        },
        PortMatch::Named { protocol } => pb::PortMatch {
            protocol: protocol_to_pb(Some(*protocol)),
            named: true,
            ..Default::default()
        },
    };
    pb::Rule {
        policy: r.policy.to_string(),
        index: r.index,
        peer_set: match r.peer {
            PeerRef::Any => None,
            PeerRef::Set(id) => Some(id.to_string()),
        },
        ports: Some(ports),
    }
}

pub fn rule_from_pb(r: &pb::Rule, field: &str) -> Result<Rule, ConvertError> {
    let p = required(&r.ports, &format!("{field}.ports"))?;
    let pf = format!("{field}.ports");
    let port = |v: u32, f: &str| {
        u16::try_from(v).map_err(|_| bad(&format!("{pf}.{f}"), format!("{v} is not a port")))
    };
    let ports = match (
        protocol_from_pb(p.protocol, &format!("{pf}.protocol"))?,
        p.named,
    ) {
        (None, false) => PortMatch::Any,
        (None, true) => return Err(bad(&pf, "a named port needs a protocol")),
        (Some(protocol), true) => PortMatch::Named { protocol },
        (Some(protocol), false) => PortMatch::Range {
            protocol,
            from: port(p.from_port, "fromPort")?,
            to: port(p.to_port, "toPort")?,
        },
    };
    Ok(Rule {
        peer: match &r.peer_set {
            None => PeerRef::Any,
            Some(id) => PeerRef::Set(set_id_from_pb(id, &format!("{field}.peerSet"))?),
        },
        ports,
        index: r.index,
        policy: r.policy.as_str().into(),
    })
}

fn names(v: &[String]) -> BTreeSet<Name> {
    v.iter().map(|s| Name::from(s.as_str())).collect()
}

pub fn dir_to_pb(d: &DirPolicy) -> pb::DirectionPolicy {
    pb::DirectionPolicy {
        policies: d.policies.iter().map(|p| p.to_string()).collect(),
        rules: d.rules.iter().map(rule_to_pb).collect(),
    }
}

pub fn dir_from_pb(d: &pb::DirectionPolicy, field: &str) -> Result<DirPolicy, ConvertError> {
    Ok(DirPolicy {
        policies: names(&d.policies),
        rules: rules_from_pb(&d.rules, &format!("{field}.rules"))?
            .into_iter()
            .collect(),
    })
}

fn rules_from_pb(v: &[pb::Rule], field: &str) -> Result<Vec<Rule>, ConvertError> {
    v.iter()
        .enumerate()
        .map(|(i, r)| rule_from_pb(r, &format!("{field}[{i}]")))
        .collect()
}

pub fn endpoint_to_pb(ip: Ipv4Addr, e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        ip: ip.to_string(),
        pod: Some(obj_to_pb(&e.pod)),
        ingress: e.ingress.as_deref().map(dir_to_pb),
        egress: e.egress.as_deref().map(dir_to_pb),
    }
}

pub fn endpoint_from_pb(
    e: &pb::Endpoint,
    field: &str,
) -> Result<(Ipv4Addr, Endpoint), ConvertError> {
    let dir = |d: &Option<pb::DirectionPolicy>,
               name: &str|
     -> Result<Option<Arc<DirPolicy>>, ConvertError> {
        d.as_ref()
            .map(|d| dir_from_pb(d, &format!("{field}.{name}")).map(Arc::new))
            .transpose()
    };
    Ok((
        ip_from_pb(&e.ip, &format!("{field}.ip"))?,
        Endpoint {
            pod: obj_from_pb(required(&e.pod, &format!("{field}.pod"))?),
            ingress: dir(&e.ingress, "ingress")?,
            egress: dir(&e.egress, "egress")?,
        },
    ))
}

/// A slice with its digest.
pub fn slice_to_pb(s: &NodeSlice) -> pb::NodeSlice {
    pb::NodeSlice {
        node: s.node.to_string(),
        version: s.version,
        digest: s.digest().to_hex(),
        endpoints: s
            .endpoints
            .iter()
            .map(|(ip, e)| endpoint_to_pb(*ip, e))
            .collect(),
        sets: s.sets.values().map(address_set_to_pb).collect(),
    }
}

/// The slice and the digest the message claims for it (check it against `slice.digest()`).
pub fn slice_from_pb(s: &pb::NodeSlice) -> Result<(NodeSlice, Digest), ConvertError> {
    let mut slice = NodeSlice::empty(&s.node);
    slice.version = s.version;
    for (i, e) in s.endpoints.iter().enumerate() {
        let (ip, e) = endpoint_from_pb(e, &format!("endpoints[{i}]"))?;
        slice.endpoints.insert(ip, e);
    }
    for (i, set) in s.sets.iter().enumerate() {
        let set = address_set_from_pb(set, &format!("sets[{i}]"))?;
        slice.sets.insert(set.id, set);
    }
    Ok((slice, digest_from_pb(&s.digest, "digest")?))
}

pub fn member_change_to_pb(c: &MemberChange) -> pb::MemberChange {
    pb::MemberChange {
        set: c.set.to_string(),
        added: c.added.iter().map(|m| m.to_string()).collect(),
        removed: c.removed.iter().map(|m| m.to_string()).collect(),
    }
}

fn dir_patch_to_pb(d: &DirDelta) -> pb::DirectionPatch {
    use pb::direction_patch::Isolation;
    let (isolation, policies) = match &d.isolation {
        IsolationChange::Unchanged => (Isolation::Unchanged, vec![]),
        IsolationChange::IsolatedBy(p) => (
            Isolation::IsolatedBy,
            p.iter().map(|p| p.to_string()).collect(),
        ),
        IsolationChange::Released => (Isolation::Released, vec![]),
    };
    pb::DirectionPatch {
        isolation: isolation as i32,
        policies,
        added: d.added.iter().map(rule_to_pb).collect(),
        removed: d.removed.iter().map(rule_to_pb).collect(),
    }
}

fn dir_patch_from_pb(
    d: Option<&pb::DirectionPatch>,
    field: &str,
) -> Result<DirDelta, ConvertError> {
    use pb::direction_patch::Isolation;
    let Some(d) = d else {
        return Ok(DirDelta {
            isolation: IsolationChange::Unchanged,
            added: vec![],
            removed: vec![],
        });
    };
    let isolation = match Isolation::try_from(d.isolation) {
        Ok(Isolation::Unchanged) => IsolationChange::Unchanged,
        Ok(Isolation::IsolatedBy) => IsolationChange::IsolatedBy(names(&d.policies)),
        Ok(Isolation::Released) => IsolationChange::Released,
        Err(_) => {
            return Err(bad(
                &format!("{field}.isolation"),
                format!("unknown value {}", d.isolation),
            ))
        }
    };
    Ok(DirDelta {
        isolation,
        added: rules_from_pb(&d.added, &format!("{field}.added"))?,
        removed: rules_from_pb(&d.removed, &format!("{field}.removed"))?,
    })
}

pub fn endpoint_delta_to_pb(e: &EndpointDelta) -> pb::EndpointChange {
    use pb::endpoint_change::Change;
    let ip = e.ip();
    let change = match e {
        EndpointDelta::Add { endpoint, .. } => Change::Add(endpoint_to_pb(ip, endpoint)),
        EndpointDelta::Replace { endpoint, .. } => Change::Replace(endpoint_to_pb(ip, endpoint)),
        EndpointDelta::Remove { .. } => Change::Remove(true),
        EndpointDelta::Change {
            pod,
            ingress,
            egress,
            ..
        } => Change::Patch(pb::EndpointPatch {
            pod: pod.as_ref().map(obj_to_pb),
            ingress: Some(dir_patch_to_pb(ingress)),
            egress: Some(dir_patch_to_pb(egress)),
        }),
    };
    pb::EndpointChange {
        ip: ip.to_string(),
        change: Some(change),
    }
}

pub fn endpoint_delta_from_pb(
    e: &pb::EndpointChange,
    field: &str,
) -> Result<EndpointDelta, ConvertError> {
    use pb::endpoint_change::Change;
    let ip = ip_from_pb(&e.ip, &format!("{field}.ip"))?;
    let with_ip = |got: Ipv4Addr| {
        if got == ip {
            Ok(())
        } else {
            Err(bad(
                field,
                format!("endpoint {got} inside the change of {ip}"),
            ))
        }
    };
    Ok(match required(&e.change, &format!("{field}.change"))? {
        Change::Add(x) => {
            let (got, endpoint) = endpoint_from_pb(x, &format!("{field}.add"))?;
            with_ip(got)?;
            EndpointDelta::Add { ip, endpoint }
        }
        Change::Replace(x) => {
            let (got, endpoint) = endpoint_from_pb(x, &format!("{field}.replace"))?;
            with_ip(got)?;
            EndpointDelta::Replace { ip, endpoint }
        }
        Change::Remove(_) => EndpointDelta::Remove { ip },
        Change::Patch(p) => EndpointDelta::Change {
            ip,
            pod: p.pod.as_ref().map(obj_from_pb),
            ingress: dir_patch_from_pb(p.ingress.as_ref(), &format!("{field}.patch.ingress"))?,
            egress: dir_patch_from_pb(p.egress.as_ref(), &format!("{field}.patch.egress"))?,
        },
    })
}

/// The delta without its member changes (see [`crate::encode`], which shares those).
pub fn delta_to_pb_without_members(d: &SliceDelta) -> pb::SliceDelta {
    pb::SliceDelta {
        sets_added: d.sets_added.iter().map(|s| address_set_to_pb(s)).collect(),
        sets_replaced: d
            .sets_replaced
            .iter()
            .map(|s| address_set_to_pb(s))
            .collect(),
        members: vec![],
        endpoints: d.endpoints.iter().map(endpoint_delta_to_pb).collect(),
        sets_removed: d.sets_removed.iter().map(|id| id.to_string()).collect(),
    }
}

pub fn delta_to_pb(d: &SliceDelta) -> pb::SliceDelta {
    let mut out = delta_to_pb_without_members(d);
    out.members = d.members.iter().map(|c| member_change_to_pb(c)).collect();
    out
}

pub fn delta_from_pb(d: &pb::SliceDelta) -> Result<SliceDelta, ConvertError> {
    let sets = |v: &[pb::AddressSet], f: &str| -> Result<Vec<Arc<AddressSet>>, ConvertError> {
        v.iter()
            .enumerate()
            .map(|(i, s)| address_set_from_pb(s, &format!("{f}[{i}]")).map(Arc::new))
            .collect()
    };
    Ok(SliceDelta {
        sets_added: sets(&d.sets_added, "setsAdded")?,
        sets_replaced: sets(&d.sets_replaced, "setsReplaced")?,
        members: d
            .members
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let f = format!("members[{i}]");
                Ok(Arc::new(MemberChange {
                    set: set_id_from_pb(&c.set, &format!("{f}.set"))?,
                    added: members_from_pb(&c.added, &format!("{f}.added"))?,
                    removed: members_from_pb(&c.removed, &format!("{f}.removed"))?,
                }))
            })
            .collect::<Result<_, ConvertError>>()?,
        endpoints: d
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| endpoint_delta_from_pb(e, &format!("endpoints[{i}]")))
            .collect::<Result<_, _>>()?,
        sets_removed: d
            .sets_removed
            .iter()
            .enumerate()
            .map(|(i, s)| set_id_from_pb(s, &format!("setsRemoved[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}
