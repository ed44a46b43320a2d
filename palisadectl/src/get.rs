//! `palisadectl get KIND NAME...`: objects as the running controller's replicated state holds
//! them (what Palisade understood of each, defaults applied) and the source that owns each,
//! as `palisade.v1.Introspection.GetObjects` answers.

use std::fmt::Write as _;

use palisade_proto::v1 as pb;
use serde_json::{json, Value};

use crate::remote::{client, Conn, RemoteError};

/// What `get` found: the text to print, and whether every object asked for is held.
pub struct Got {
    pub text: String,
    pub all_found: bool,
}

/// `names` of `kind` (kubectl's names: pod, po, ns, netpol, ...), `NAMESPACE/NAME` or a name
/// in `namespace`.
pub async fn get(
    conn: &Conn,
    kind: &str,
    names: &[String],
    namespace: &str,
    json_out: bool,
) -> Result<Got, RemoteError> {
    let kind: palisade_policy::k8s::Kind = kind.parse().map_err(RemoteError::Usage)?;
    let objects = names
        .iter()
        .map(|n| pb::ObjectKey {
            kind: kind.to_string(),
            name: match kind {
                palisade_policy::k8s::Kind::Namespace => n.clone(),
                _ if n.contains('/') => n.clone(),
                _ => format!("{namespace}/{n}"),
            },
        })
        .collect();
    let r = client(conn)
        .await?
        .get_objects(pb::GetObjectsRequest { objects })
        .await?
        .into_inner();
    let all_found = r.objects.iter().all(|o| o.found);
    if json_out {
        let objects: Vec<Value> = r
            .objects
            .iter()
            .map(|o| {
                let object: Value = serde_json::from_str(&o.json).unwrap_or(Value::Null);
                json!({"kind": o.kind, "name": o.name, "found": o.found, "owner": o.owner, "object": object})
            })
            .collect();
        let v = json!({"revision": r.revision, "objects": objects});
        return Ok(Got {
            text: serde_json::to_string_pretty(&v).expect("serialisable") + "\n",
            all_found,
        });
    }
    let width = r
        .objects
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut text = format!("revision {}\n", r.revision);
    let _ = writeln!(text, "{:<13}  {:width$}  OWNER", "KIND", "NAME");
    for o in &r.objects {
        let owner = if o.found {
            o.owner.as_str()
        } else {
            "(not found)"
        };
        let _ = writeln!(text, "{:<13}  {:width$}  {owner}", o.kind, o.name);
    }
    Ok(Got { text, all_found })
}
