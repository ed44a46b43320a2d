//! `palisadectl get KIND NAME...`: objects as the running controller's replicated state holds
//! them (what Palisade understood of each, defaults applied) and the source that owns each,
//! as `palisade.v1.Introspection.GetObjects` answers. `-o wide` adds what Palisade uses of
//! each: a pod's address, node and labels; a namespace's labels; a policy's pod selector and
//! the rules of each direction it enforces.

use std::fmt::Write as _;

use palisade_policy::k8s::Kind;
use palisade_policy::model::{self, Direction, Labels};
use palisade_proto::v1 as pb;
use serde_json::{json, Value};

use crate::output::Output;
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
    output: Output,
) -> Result<Got, RemoteError> {
    let kind: Kind = kind.parse().map_err(RemoteError::Usage)?;
    let objects = names
        .iter()
        .map(|n| pb::ObjectKey {
            kind: kind.to_string(),
            name: match kind {
                Kind::Namespace => n.clone(),
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
    if output.structured() {
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
    let (owner_width, extra) = if output.wide() {
        (13, wide_header(kind))
    } else {
        (0, "")
    };
    let _ = writeln!(
        text,
        "{:<13}  {:width$}  {:owner_width$}{}",
        "KIND",
        "NAME",
        "OWNER",
        extra.trim_end()
    );
    for o in &r.objects {
        let owner = if o.found {
            o.owner.as_str()
        } else {
            "(not found)"
        };
        let extra = if output.wide() && o.found {
            format!("  {}", wide_columns(kind, &o.json))
        } else {
            String::new()
        };
        let line = format!(
            "{:<13}  {:width$}  {owner:owner_width$}{extra}",
            o.kind, o.name
        );
        let _ = writeln!(text, "{}", line.trim_end());
    }
    Ok(Got { text, all_found })
}

/// The columns `-o wide` adds for `kind`.
fn wide_header(kind: Kind) -> &'static str {
    match kind {
        Kind::Pod => "  IP               NODE                  LABELS",
        Kind::Namespace => "  LABELS",
        Kind::NetworkPolicy => "  POD-SELECTOR          INGRESS   EGRESS",
    }
}

/// `-o wide`'s columns for one object, from the model JSON the controller sent; `?` when it
/// does not read as that kind (a controller of another version).
fn wide_columns(kind: Kind, json: &str) -> String {
    let labels = |l: &Labels| {
        let all: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if all.is_empty() {
            "<none>".to_string()
        } else {
            all.join(",")
        }
    };
    match kind {
        Kind::Pod => match serde_json::from_str::<model::Pod>(json) {
            Ok(p) => format!(
                "{:<15}  {:<20}  {}",
                p.ip.map_or("<none>".to_string(), |ip| ip.to_string()),
                p.node.as_deref().unwrap_or("<none>"),
                labels(&p.labels)
            ),
            Err(_) => "?".into(),
        },
        Kind::Namespace => match serde_json::from_str::<model::Namespace>(json) {
            Ok(n) => labels(&n.labels),
            Err(_) => "?".into(),
        },
        Kind::NetworkPolicy => match serde_json::from_str::<model::NetworkPolicy>(json) {
            Ok(p) => {
                let rules = |d: Direction| match p.rules(d) {
                    None => "-".to_string(),
                    Some(r) => format!("{} rules", r.len()),
                };
                format!(
                    "{:<20}  {:<8}  {}",
                    p.pod_selector.to_string(),
                    rules(Direction::Ingress),
                    rules(Direction::Egress)
                )
            }
            Err(_) => "?".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_columns_read_the_model() {
        let pod = model::Pod {
            key: model::ObjKey {
                namespace: "shop".into(),
                name: "web".into(),
            },
            labels: [("app".to_string(), "web".to_string())].into(),
            node: Some("node-1".into()),
            ip: Some("10.0.0.5".parse().unwrap()),
            host_network: false,
            finished: false,
            named_ports: vec![],
        };
        let pod = serde_json::to_string(&pod).unwrap();
        let shown = wide_columns(Kind::Pod, &pod);
        assert!(shown.starts_with("10.0.0.5"), "{shown}");
        assert!(
            shown.contains("node-1") && shown.ends_with("app=web"),
            "{shown}"
        );
        assert_eq!(wide_columns(Kind::Pod, "{}"), "?");
    }
}
