//! `palisadectl slice`: one node's slice as JSON (the slice's own serde form plus its digest)
//! or as a table.

use std::fmt::Write as _;

use palisade_policy::lower;
use palisade_policy::model::Direction;
use palisade_policy::slice::{NodeSlice, PeerRef};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SliceJson<'a> {
    digest: String,
    encoded_bytes: usize,
    #[serde(flatten)]
    slice: &'a NodeSlice,
}

pub fn json(slice: &NodeSlice) -> String {
    let view = SliceJson {
        digest: slice.digest().to_hex(),
        encoded_bytes: slice.encode().len(),
        slice,
    };
    serde_json::to_string_pretty(&view).expect("serialisable") + "\n"
}

pub fn table(slice: &NodeSlice) -> String {
    let mut out = String::new();
    let image = lower::lower(slice);
    let _ = writeln!(
        out,
        "node {}  version {}  digest {}\n{} endpoints, {} address sets; {} bytes encoded; {} map entries ({} endpoint, {} identity, {} rule)",
        slice.node,
        slice.version,
        &slice.digest().to_hex()[..16],
        slice.endpoints.len(),
        slice.sets.len(),
        slice.encode().len(),
        image.entry_count(),
        image.endpoints.len(),
        image.identities.len(),
        image.rules.len(),
    );
    if slice.endpoints.is_empty() {
        let _ = writeln!(
            out,
            "\nno pod on this node is selected by a policy: nothing to enforce"
        );
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
