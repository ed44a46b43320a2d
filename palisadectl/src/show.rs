//! `palisadectl slice` and `node --slice`: one node's slice as JSON (the slice's own serde
//! form plus its digest) or as a table, optionally only the endpoints of one namespace (and
//! the address sets their rules use).

use std::borrow::Cow;
use std::fmt::Write as _;

use palisade_policy::lower;
use palisade_policy::model::Direction;
use palisade_policy::slice::{NodeSlice, PeerRef};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SliceJson<'a> {
    /// The digest and size of the node's whole slice, filtered or not.
    digest: String,
    encoded_bytes: usize,
    /// The namespace shown, when filtered.
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(flatten)]
    slice: &'a NodeSlice,
}

/// The endpoints of `namespace` in `slice` and the address sets their rules reference (the
/// whole slice when `None`).
pub fn only_namespace<'a>(slice: &'a NodeSlice, namespace: Option<&str>) -> Cow<'a, NodeSlice> {
    let Some(ns) = namespace else {
        return Cow::Borrowed(slice);
    };
    let endpoints: std::collections::BTreeMap<_, _> = slice
        .endpoints
        .iter()
        .filter(|(_, ep)| &*ep.pod.namespace == ns)
        .map(|(ip, ep)| (*ip, ep.clone()))
        .collect();
    let used: std::collections::BTreeSet<_> = endpoints
        .values()
        .flat_map(|ep| Direction::BOTH.into_iter().filter_map(|d| ep.dir(d)))
        .flat_map(|dp| dp.rules.iter())
        .filter_map(|r| match r.peer {
            PeerRef::Set(id) => Some(id),
            PeerRef::Any => None,
        })
        .collect();
    Cow::Owned(NodeSlice {
        node: slice.node.clone(),
        version: slice.version,
        endpoints,
        sets: slice
            .sets
            .iter()
            .filter(|(id, _)| used.contains(id))
            .map(|(id, set)| (*id, set.clone()))
            .collect(),
    })
}

/// JSON: the digest and size of the whole slice, and its content (of `namespace` only, when
/// given).
pub fn json(slice: &NodeSlice, namespace: Option<&str>) -> String {
    let shown = only_namespace(slice, namespace);
    let view = SliceJson {
        digest: slice.digest().to_hex(),
        encoded_bytes: slice.encode().len(),
        namespace,
        slice: shown.as_ref(),
    };
    serde_json::to_string_pretty(&view).expect("serialisable") + "\n"
}

/// A table: the whole slice's figures, then its endpoints (of `namespace` only, when given)
/// and the address sets they use.
pub fn table(full: &NodeSlice, namespace: Option<&str>) -> String {
    let mut out = String::new();
    let image = lower::lower(full);
    let shown = only_namespace(full, namespace);
    let slice = shown.as_ref();
    let _ = writeln!(
        out,
        "node {}  version {}  digest {}\n{} endpoints, {} address sets; {} bytes encoded; {} map entries ({} endpoint, {} identity, {} rule)",
        full.node,
        full.version,
        &full.digest().to_hex()[..16],
        full.endpoints.len(),
        full.sets.len(),
        full.encode().len(),
        image.entry_count(),
        image.endpoints.len(),
        image.identities.len(),
        image.rules.len(),
    );
    if let Some(ns) = namespace {
        let _ = writeln!(
            out,
            "namespace {ns}: {} endpoints, {} address sets",
            slice.endpoints.len(),
            slice.sets.len()
        );
    }
    if slice.endpoints.is_empty() {
        let _ = match namespace {
            Some(ns) => writeln!(
                out,
                "\nno pod of namespace {ns} on this node is selected by a policy"
            ),
            None => writeln!(
                out,
                "\nno pod on this node is selected by a policy: nothing to enforce"
            ),
        };
        return out;
    }
    let _ = writeln!(out, "\nENDPOINTS");
    for (ip, ep) in &slice.endpoints {
        let _ = writeln!(out, "  {ip:<15}  {}", ep.pod);
        for d in Direction::BOTH {
            let Some(dp) = ep.dir(d) else {
                let _ = writeln!(out, "    {d:<7}  not isolated");
                continue;
            };
            let policies: Vec<&str> = dp.policies.iter().map(|p| &**p).collect();
            let _ = writeln!(
                out,
                "    {d:<7}  isolated by {}; {} allow rule(s)",
                policies.join(", "),
                dp.rules.len()
            );
            for r in &dp.rules {
                let peer = match r.peer {
                    PeerRef::Any => "any address".to_string(),
                    PeerRef::Set(id) => format!("set {id}"),
                };
                let _ = writeln!(
                    out,
                    "               {}[{}]  {:<22} {}",
                    r.policy, r.index, peer, r.ports
                );
            }
        }
    }
    if !slice.sets.is_empty() {
        let _ = writeln!(out, "\nADDRESS SETS");
        for (id, set) in &slice.sets {
            let members: Vec<String> = set.members.iter().map(|m| m.to_string()).collect();
            let shown = if members.is_empty() {
                "(empty)".to_string()
            } else {
                members.join(" ")
            };
            let _ = writeln!(out, "  set {id}  {}\n      {shown}", set.def);
        }
    }
    out
}
