//! `palisadectl get KIND NAME...`: objects as the running controller's replicated state holds
//! them (what Palisade understood of each, defaults applied) and the source that owns each,
//! as `palisade.v1.Introspection.GetObjects` answers. `-o wide` adds what Palisade uses of
//! each: a pod's address, node and labels; a namespace's labels; a policy's pod selector and
//! the rules of each direction it enforces.

use palisade_policy::k8s::Kind;
use palisade_policy::model::{self, Direction, Labels};
use palisade_proto::v1 as pb;
use serde_json::{json, Value};

use crate::output::{Output, Table};
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
    read: crate::fresh::ReadArgs,
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
        .get_objects(pb::GetObjectsRequest {
            objects,
            consistent: read.consistent,
        })
        .await?
        .into_inner();
    crate::fresh::require(read.consistent, r.freshness.as_ref())?;
    crate::fresh::warn(r.freshness.as_ref());
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
        let v = json!({"revision": r.revision, "freshness": crate::fresh::json(r.freshness.as_ref()), "objects": objects});
        return Ok(Got {
            text: serde_json::to_string_pretty(&v).expect("serialisable") + "\n",
            all_found,
        });
    }
    let mut table = Table::new(output).text("KIND").text("NAME").text("OWNER");
    for name in wide_header(kind) {
        table = table.wide_text(name);
    }
    for o in &r.objects {
        let owner = if o.found {
            o.owner.as_str()
        } else {
            "(not found)"
        };
        let wide = if output.wide() && o.found {
            wide_columns(kind, &o.json)
        } else {
            Vec::new()
        };
        table.row(
            [o.kind.clone(), o.name.clone(), owner.to_string()]
                .into_iter()
                .chain(wide),
        );
    }
    let text = format!("revision {}\n{}", r.revision, table.render());
    Ok(Got { text, all_found })
}

/// The columns `-o wide` adds for `kind`.
fn wide_header(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &["IP", "NODE", "LABELS"],
        Kind::Namespace => &["LABELS"],
        Kind::NetworkPolicy => &["POD-SELECTOR", "INGRESS", "EGRESS"],
    }
}

/// `-o wide`'s columns for one object, from the model JSON the controller sent; `?` when it
/// does not read as that kind (a controller of another version).
fn wide_columns(kind: Kind, json: &str) -> Vec<String> {
    let labels = |l: &Labels| {
        let all: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if all.is_empty() {
            "<none>".to_string()
        } else {
            all.join(",")
        }
    };
    let unread = || vec!["?".to_string()];
    match kind {
        Kind::Pod => match serde_json::from_str::<model::Pod>(json) {
            Ok(p) => vec![
                p.ip.map_or("<none>".to_string(), |ip| ip.to_string()),
                p.node.as_deref().unwrap_or("<none>").to_string(),
                labels(&p.labels),
            ],
            Err(_) => unread(),
        },
        Kind::Namespace => match serde_json::from_str::<model::Namespace>(json) {
            Ok(n) => vec![labels(&n.labels)],
            Err(_) => unread(),
        },
        Kind::NetworkPolicy => match serde_json::from_str::<model::NetworkPolicy>(json) {
            Ok(p) => {
                let rules = |d: Direction| match p.rules(d) {
                    None => "-".to_string(),
                    Some(r) => format!("{} rules", r.len()),
                };
                vec![
                    p.pod_selector.to_string(),
                    rules(Direction::Ingress),
                    rules(Direction::Egress),
                ]
            }
            Err(_) => unread(),
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
        assert_eq!(
            wide_columns(Kind::Pod, &pod),
            vec!["10.0.0.5", "node-1", "app=web"]
        );
        assert_eq!(wide_columns(Kind::Pod, "{}"), vec!["?"]);
    }
}
