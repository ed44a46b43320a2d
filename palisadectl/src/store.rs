//! `apply -f`, `delete -f` and `replicas`: the standalone store and the Raft group of a
//! running controller. Objects are read as for offline commands ([`crate::load`]), sent as
//! text with their file names, and validated by the controller as the API server would; the
//! answer names the revision that holds the change, for `palisadectl wait`.

use std::fmt::Write as _;

use palisade_proto::v1::admin_client::AdminClient;
use palisade_proto::v1::{self as pb};
use serde_json::{json, Value};

use crate::output::{Output, Table};
use crate::remote::{self, Conn, RemoteError};

/// What to send.
pub struct Change {
    /// `(name, text)` of every source.
    pub sources: Vec<(String, String)>,
    pub namespace: String,
    pub delete: bool,
    pub dry_run: bool,
}

/// Send `change`; the report as kubectl prints it (or JSON).
pub async fn apply(conn: &Conn, change: Change, json_out: bool) -> Result<String, RemoteError> {
    let req = pb::ApplyRequest {
        documents: change
            .sources
            .into_iter()
            .map(|(source, text)| pb::Document { source, text })
            .collect(),
        default_namespace: change.namespace,
        delete: change.delete,
        dry_run: change.dry_run,
        hops: 0,
    };
    let r = AdminClient::new(remote::channel(conn).await?)
        .max_encoding_message_size(64 << 20)
        .apply(req)
        .await?
        .into_inner();
    if json_out {
        let changes: Vec<Value> = r
            .changes
            .iter()
            .map(|c| json!({"kind": c.kind, "name": c.name, "action": c.action}))
            .collect();
        let v = json!({
            "revision": r.revision,
            "dryRun": change.dry_run,
            "changes": changes,
            "warnings": r.warnings,
        });
        return Ok(serde_json::to_string_pretty(&v).expect("serialisable") + "\n");
    }
    let mut out = String::new();
    for w in &r.warnings {
        eprintln!("Warning: {w}");
    }
    let dry = if change.dry_run { " (dry run)" } else { "" };
    for c in &r.changes {
        let _ = writeln!(
            out,
            "{}/{} {}{dry}",
            c.kind.to_lowercase(),
            c.name,
            c.action
        );
    }
    if !change.dry_run {
        let _ = writeln!(
            out,
            "revision {} (follow it with: palisadectl wait {})",
            r.revision, r.revision
        );
    }
    Ok(out)
}

/// The replicas of the group, as the one asked sees them; `-o wide` adds the asked replica's
/// last snapshot index and, when it leads, the index it knows each peer's log holds.
pub async fn replicas(conn: &Conn, output: Output) -> Result<String, RemoteError> {
    let r = remote::client(conn)
        .await?
        .list_replicas(pb::ListReplicasRequest {})
        .await?
        .into_inner();
    if output.structured() {
        let list: Vec<Value> = r
            .replicas
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "address": s.address,
                    "role": s.role,
                    "term": s.term,
                    "commit": s.commit,
                    "applied": s.applied,
                    "lastContactMs": s.last_contact_ms,
                    "snapshot": s.snapshot,
                    "matched": s.matched,
                    "failure": s.failure,
                    "agents": s.agents,
                    "refusingAgents": s.refusing_agents,
                    "watches": s.watches.iter().map(|w| json!({
                        "kind": w.kind,
                        "state": w.state,
                        "sinceMs": w.since_ms,
                        "lastEventMs": w.last_event_ms,
                        "error": w.error,
                        "retryInMs": w.retry_in_ms,
                        "objects": w.objects,
                        "rejected": w.rejected,
                        "relists": w.relists,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = json!({"self": r.self_id, "leader": r.leader, "term": r.term, "replicas": list});
        return Ok(serde_json::to_string_pretty(&v).expect("serialisable") + "\n");
    }
    let mut table = Table::new(output)
        .number("ID")
        .text("ADDRESS")
        .text("ROLE")
        .number("TERM")
        .number("COMMIT")
        .number("APPLIED")
        .text("LAST-CONTACT")
        .number("AGENTS")
        .wide_number("SNAPSHOT")
        .wide_number("MATCHED")
        .text("NOTE");
    for s in &r.replicas {
        let contact = match (s.id == r.self_id, s.last_contact_ms) {
            (true, _) => "self".to_string(),
            (false, Some(ms)) => format!("{:.1}s ago", ms as f64 / 1000.0),
            (false, None) => "never".to_string(),
        };
        let mut note = s.failure.clone();
        if s.id == r.leader && note.is_empty() {
            note = "leader".into();
        }
        if !s.refusing_agents.is_empty() {
            note = format!("refusing agents: {}", s.refusing_agents);
        }
        table.row([
            s.id.to_string(),
            if s.address.is_empty() {
                "-".to_string()
            } else {
                s.address.clone()
            },
            s.role.clone(),
            s.term.to_string(),
            s.commit.to_string(),
            s.applied.to_string(),
            contact,
            s.agents.to_string(),
            dash(s.snapshot),
            dash(s.matched),
            note,
        ]);
    }
    let mut out = table.render();
    if r.leader == 0 {
        let _ = writeln!(
            out,
            "no leader known to replica {}: an election is under way, or it cannot reach a quorum",
            r.self_id
        );
    }
    for s in r.replicas.iter().filter(|s| !s.watches.is_empty()) {
        let _ = writeln!(out, "\nKubernetes source (on replica {}):", s.id);
        out.push_str(&watches_table(&s.watches));
    }
    Ok(out)
}

/// An index, or `-` when not known (0).
fn dash(index: u64) -> String {
    if index == 0 {
        "-".into()
    } else {
        index.to_string()
    }
}

/// The Kubernetes source's watches as a table: state and for how long, objects, last event.
fn watches_table(watches: &[pb::WatchStatus]) -> String {
    let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
    let mut table = Table::new(Output::Table)
        .text("KIND")
        .text("STATE")
        .number("OBJECTS")
        .number("REJECTED")
        .number("RELISTS")
        .text("LAST-EVENT")
        .text("ERROR");
    for w in watches {
        let state = match w.state.as_str() {
            "backing-off" => format!("backing-off ({} left)", secs(w.retry_in_ms)),
            other => format!("{other} {}", secs(w.since_ms)),
        };
        let last = w
            .last_event_ms
            .map_or("never".to_string(), |ms| format!("{} ago", secs(ms)));
        table.row([
            w.kind.clone(),
            state,
            w.objects.to_string(),
            w.rejected.to_string(),
            w.relists.to_string(),
            last,
            w.error.clone(),
        ]);
    }
    table.render()
}
