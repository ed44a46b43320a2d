//! Subcommands against a running controller's Introspection service.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use palisade_policy::report::FlowReport;
use palisade_proto::convert;
use palisade_proto::endpoint::{self, ClientTls};
use palisade_proto::v1::introspection_client::IntrospectionClient;
use palisade_proto::v1::{self as pb};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::fresh::{self, ReadArgs};
use crate::output::{in_namespace, Output, Table};
use crate::show;

mod rejected_report;
pub use rejected_report::{rejected, RejectedReport};

/// How to reach the controller.
#[derive(Clone, Debug)]
pub struct Conn {
    /// HOST:PORT, or a URL with http:// or https://.
    pub controller: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub insecure: bool,
}

impl Conn {
    /// mTLS to `controller` as operator `name`, with the certificates `palisadectl certs`
    /// wrote into `certs` (`ca.pem`, `operator-NAME.pem`, `operator-NAME-key.pem`).
    pub fn operator(controller: String, certs: &std::path::Path, name: &str) -> Conn {
        Conn {
            controller,
            ca: Some(certs.join("ca.pem")),
            cert: Some(certs.join(format!("operator-{name}.pem"))),
            key: Some(certs.join(format!("operator-{name}-key.pem"))),
            server_name: None,
            insecure: false,
        }
    }

    /// Plaintext to `controller` (`http://` is added to a bare HOST:PORT), said explicitly.
    pub fn insecure(controller: &str) -> Conn {
        let controller = if controller.contains("://") {
            controller.to_string()
        } else {
            format!("http://{controller}")
        };
        Conn {
            controller,
            ca: None,
            cert: None,
            key: None,
            server_name: None,
            insecure: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot reach the controller at {0}: {1}")]
    Connect(String, String),
    #[error("the controller answered {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("the controller sent a slice Palisade cannot read: {0}")]
    Decode(String),
    /// What was waited for did not happen in time (a negative answer, exit status 3).
    #[error("{0}")]
    NotYet(String),
}

impl From<tonic::Status> for RemoteError {
    fn from(s: tonic::Status) -> RemoteError {
        RemoteError::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

pub async fn client(conn: &Conn) -> Result<IntrospectionClient<Channel>, RemoteError> {
    Ok(IntrospectionClient::new(channel(conn).await?).max_decoding_message_size(256 << 20))
}

/// A connection to the controller, with the operator's TLS material.
pub async fn channel(conn: &Conn) -> Result<Channel, RemoteError> {
    let tls = if conn.insecure {
        None
    } else {
        let read = |p: &Option<PathBuf>, flag: &str| -> Result<Vec<u8>, RemoteError> {
            let p = p.as_ref().ok_or_else(|| {
                RemoteError::Usage(format!(
                    "{flag} is required (or --insecure for a plaintext controller)"
                ))
            })?;
            std::fs::read(p).map_err(|e| RemoteError::Read(p.clone(), e))
        };
        Some(ClientTls {
            ca: read(&conn.ca, "--ca")?,
            cert: read(&conn.cert, "--cert")?,
            key: read(&conn.key, "--key")?,
            domain: conn.server_name.clone(),
        })
    };
    let options = endpoint::Options {
        connect_timeout: CONNECT,
        keepalive: None,
    };
    let ep = endpoint::endpoint(&conn.controller, tls.as_ref(), options)
        .map_err(|e| RemoteError::Usage(e.to_string()))?;
    // tonic's connect timeout covers TCP only: a listener that accepts and never speaks
    // (a stopped process, or something other than a controller at that port) would hold the
    // TLS and HTTP/2 handshakes for ever.
    match tokio::time::timeout(CONNECT, ep.connect()).await {
        Ok(c) => c.map_err(|e| {
            RemoteError::Connect(conn.controller.clone(), palisade_proto::error_chain(&e))
        }),
        Err(_) => Err(RemoteError::Connect(
            conn.controller.clone(),
            format!(
                "no TLS and HTTP/2 handshake within {} (something accepts connections at that address but does not answer as a controller: a stopped or overloaded process, or another service)",
                humantime::format_duration(CONNECT)
            ),
        )),
    }
}

/// The longest connecting to the controller may take (TCP, TLS and HTTP/2).
pub const CONNECT: Duration = Duration::from_secs(10);

fn status_json(n: &pb::NodeStatus) -> Value {
    json!({
        "node": n.node,
        "desiredVersion": n.desired_version,
        "desiredDigest": n.desired_digest,
        "ackedVersion": n.acked_version,
        "ackedDigest": n.acked_digest,
        "connected": n.connected,
        "replica": n.replica,
        "lagRevisions": n.lag_revisions,
        "lagSeconds": n.lag_seconds,
        "nackVersion": n.nack_version,
        "nackError": n.nack_error,
        "pods": n.pods,
        "endpoints": n.endpoints,
        "sets": n.sets,
        "agentVersion": n.agent_version,
        "dataplane": dataplane(n.dataplane),
        "enforcing": n.dataplane == pb::Dataplane::Ebpf as i32,
        "failedClosed": n.failed_closed,
        "capacityWarning": n.capacity_warning,
        "capacities": n.capacities.as_ref().map(|c| json!({
            "endpoints": c.endpoints,
            "identities": c.identities,
            "rules": c.rules,
        })),
    })
}

/// The dataplane a node's agent runs, in words: `ebpf`, `memory` (enforces nothing), or `-`
/// when not said (no agent yet, or an older one).
fn dataplane(d: i32) -> &'static str {
    match pb::Dataplane::try_from(d) {
        Ok(pb::Dataplane::Ebpf) => "ebpf",
        Ok(pb::Dataplane::Memory) => "memory",
        _ => "-",
    }
}

/// The same, with the warning a table needs.
fn dataplane_shown(d: i32) -> &'static str {
    match dataplane(d) {
        "memory" => "memory(NOT-ENFORCING)",
        other => other,
    }
}

/// Whether the node's agent is connected, and to which replica.
fn connected_shown(n: &pb::NodeStatus) -> String {
    match (n.connected, n.replica) {
        (false, _) => "no".into(),
        (true, 0) => "yes".into(),
        (true, r) => format!("replica {r}"),
    }
}

/// Which nodes `nodes` shows.
#[derive(Clone, Debug, Default)]
pub struct NodeFilter {
    /// Only nodes that have not acked their desired version.
    pub lagging: bool,
    /// Only nodes whose name matches this glob (`*` any run of characters, `?` one).
    pub name: Option<String>,
}

/// `pattern` with `*` and `?` wildcards matches all of `name`.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn lagging(n: &pb::NodeStatus) -> bool {
    n.acked_version < n.desired_version
}

/// `N nodes: X in sync, Y lagging (Z not connected), W failing endpoints closed`.
fn summary(nodes: &[pb::NodeStatus]) -> String {
    let lag = nodes.iter().filter(|n| lagging(n)).count();
    let disconnected = nodes.iter().filter(|n| !n.connected).count();
    let closed = nodes.iter().filter(|n| !n.failed_closed.is_empty()).count();
    format!(
        "{} node{}: {} in sync, {lag} lagging, {disconnected} not connected, {closed} failing endpoints closed",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        nodes.len() - lag
    )
}

/// The nodes `filter` keeps, after a summary of every node; `-o wide` adds the lag in
/// seconds, the agent's version and the acked digest.
pub async fn nodes(
    conn: &Conn,
    filter: &NodeFilter,
    read: ReadArgs,
    output: Output,
) -> Result<String, RemoteError> {
    let mut r = client(conn)
        .await?
        .list_nodes(pb::ListNodesRequest {
            consistent: read.consistent,
        })
        .await?
        .into_inner();
    fresh::require(read.consistent, r.freshness.as_ref())?;
    fresh::warn(r.freshness.as_ref());
    let all = summary(&r.nodes);
    r.nodes.retain(|n| {
        (!filter.lagging || lagging(n)) && filter.name.as_deref().is_none_or(|g| glob(g, &n.node))
    });
    if output.structured() {
        let v = json!({"revision": r.revision, "freshness": fresh::json(r.freshness.as_ref()), "summary": all, "nodes": r.nodes.iter().map(status_json).collect::<Vec<_>>()});
        return Ok(serde_json::to_string_pretty(&v).expect("serialisable") + "\n");
    }
    let mut out = format!("revision {}; {all}\n", r.revision);
    if r.nodes.is_empty() {
        out.push_str("no node matches\n");
        return Ok(out);
    }
    let mut table = Table::new(output)
        .text("NODE")
        .number("DESIRED")
        .number("ACKED")
        .number("LAG")
        .text("CONNECTED")
        .text("DATAPLANE")
        .number("PODS")
        .number("ENDPOINTS")
        .number("SETS")
        .number("FAILED-CLOSED")
        .wide_number("LAG-S")
        .wide_text("AGENT")
        .wide_text("ACKED-DIGEST")
        .text("NACK");
    for n in &r.nodes {
        table.row([
            n.node.clone(),
            n.desired_version.to_string(),
            n.acked_version.to_string(),
            n.lag_revisions.to_string(),
            connected_shown(n),
            dataplane_shown(n.dataplane).to_string(),
            n.pods.to_string(),
            n.endpoints.to_string(),
            n.sets.to_string(),
            n.failed_closed.len().to_string(),
            format!("{:.1}", n.lag_seconds),
            if n.agent_version.is_empty() {
                "-".to_string()
            } else {
                n.agent_version.clone()
            },
            short(&n.acked_digest).to_string(),
            n.nack_error.clone(),
        ]);
    }
    out.push_str(&table.render());
    Ok(out)
}

/// How `node` shows the node's slice.
#[derive(Clone, Copy, Debug, Default)]
pub struct SliceView<'a> {
    /// Only the endpoints of this namespace.
    pub namespace: Option<&'a str>,
}

/// One node's status, and its slice when `slice` says how to show it.
pub async fn node(
    conn: &Conn,
    name: &str,
    slice: Option<SliceView<'_>>,
    read: ReadArgs,
    json_out: bool,
) -> Result<String, RemoteError> {
    let view = slice.unwrap_or_default();
    let n = client(conn)
        .await?
        .get_node(pb::GetNodeRequest {
            node: name.to_string(),
            include_slice: slice.is_some(),
            consistent: read.consistent,
        })
        .await?
        .into_inner();
    fresh::require(read.consistent, n.freshness.as_ref())?;
    fresh::warn(n.freshness.as_ref());
    let slice = match &n.slice {
        Some(s) => Some(
            convert::slice_from_pb(s)
                .map_err(|e| RemoteError::Decode(e.to_string()))?
                .0,
        ),
        None => None,
    };
    if json_out {
        let mut v = status_json(&n);
        v["freshness"] = fresh::json(n.freshness.as_ref());
        if let Some(s) = &slice {
            v["slice"] = serde_json::from_str(&show::json(s, view.namespace)).expect("valid JSON");
        }
        return Ok(serde_json::to_string_pretty(&v).expect("serialisable") + "\n");
    }
    let mut out = format!(
        "node {}\n  desired version {} (digest {})\n  acked version   {} (digest {})\n  connected       {} (agent {}, dataplane {})\n  lag             {} revisions, {:.1} s\n  pods {}, endpoints {}, address sets {}\n",
        n.node,
        n.desired_version,
        short(&n.desired_digest),
        n.acked_version,
        short(&n.acked_digest),
        connected_shown(&n),
        if n.agent_version.is_empty() { "-" } else { &n.agent_version },
        dataplane_shown(n.dataplane),
        n.lag_revisions,
        n.lag_seconds,
        n.pods,
        n.endpoints,
        n.sets,
    );
    if let Some(c) = &n.capacities {
        let cap = |c: u64| {
            if c == 0 {
                "unlimited".to_string()
            } else {
                c.to_string()
            }
        };
        let _ = writeln!(
            out,
            "  map capacity    {} endpoints, {} identities, {} rules",
            cap(c.endpoints),
            cap(c.identities),
            cap(c.rules)
        );
    }
    if !n.failed_closed.is_empty() {
        let _ = writeln!(
            out,
            "  FAILED CLOSED   {}: {}",
            n.failed_closed.join(", "),
            n.capacity_warning
        );
    }
    if !n.nack_error.is_empty() {
        let _ = writeln!(
            out,
            "  last nack       version {}: {}",
            n.nack_version, n.nack_error
        );
    }
    if let Some(s) = &slice {
        out.push('\n');
        out.push_str(&show::table(s, view.namespace));
    }
    Ok(out)
}

fn short(digest: &str) -> &str {
    if digest.is_empty() {
        "-"
    } else {
        digest.get(..16).unwrap_or(digest)
    }
}

fn revision_json(r: &pb::RevisionStatus) -> Value {
    json!({
        "revision": r.revision,
        "latestRevision": r.latest_revision,
        "realized": r.realized,
        "realizedThrough": r.realized_through,
        "lagging": r.lagging.iter().map(|l| json!({
            "node": l.node,
            "neededVersion": l.needed_version,
            "ackedVersion": l.acked_version,
            "connected": l.connected,
            "nackError": l.nack_error,
        })).collect::<Vec<_>>(),
    })
}

/// Wait for `revision` (`None`: the latest); returns the report and whether it is realized.
pub async fn wait(
    conn: &Conn,
    revision: Option<u64>,
    timeout: Duration,
    json_out: bool,
) -> Result<(String, bool), RemoteError> {
    let mut c = client(conn).await?;
    let revision = match revision {
        Some(r) => r,
        None => {
            c.list_nodes(pb::ListNodesRequest::default())
                .await?
                .into_inner()
                .revision
        }
    };
    let r = c
        .wait_revision(pb::WaitRevisionRequest {
            revision,
            timeout_ms: timeout.as_millis() as u64,
        })
        .await?
        .into_inner();
    if json_out {
        return Ok((
            serde_json::to_string_pretty(&revision_json(&r)).expect("serialisable") + "\n",
            r.realized,
        ));
    }
    let mut out = String::new();
    if r.realized {
        let _ = writeln!(
            out,
            "revision {} is realized (every revision up to {} is)",
            r.revision, r.realized_through
        );
    } else if r.revision > r.latest_revision {
        let _ = writeln!(
            out,
            "revision {} is not committed yet (latest is {})",
            r.revision, r.latest_revision
        );
    } else {
        let _ = writeln!(
            out,
            "revision {} is not realized after {}; waiting on:",
            r.revision,
            humantime::format_duration(timeout)
        );
        for l in &r.lagging {
            let _ = writeln!(
                out,
                "  {}  needs version {}, acked {}, {}{}",
                l.node,
                l.needed_version,
                l.acked_version,
                if l.connected {
                    "connected"
                } else {
                    "not connected"
                },
                if l.nack_error.is_empty() {
                    String::new()
                } else {
                    format!(", last error: {}", l.nack_error)
                }
            );
        }
    }
    Ok((out, r.realized))
}

/// Explain a flow on the running controller; returns the report and whether it is allowed.
pub async fn explain(
    conn: &Conn,
    req: pb::ExplainFlowRequest,
    json_out: bool,
) -> Result<(String, bool), RemoteError> {
    let consistent = req.consistent;
    let e = client(conn).await?.explain_flow(req).await?.into_inner();
    fresh::require(consistent, e.freshness.as_ref())?;
    fresh::warn(e.freshness.as_ref());
    if e.report_json.is_empty() {
        return Err(RemoteError::Usage(
            "the controller sent no explanation in detail (it is older than this palisadectl): upgrade it".into(),
        ));
    }
    let r: FlowReport = serde_json::from_str(&e.report_json).map_err(|err| {
        RemoteError::Usage(format!(
            "the controller's explanation does not parse: {err}"
        ))
    })?;
    let text = if json_out {
        serde_json::to_string_pretty(&r).expect("serialisable") + "\n"
    } else {
        crate::explain::text(&r)
    };
    Ok((text, r.allowed))
}

/// The answering replica's version and id.
pub async fn server_version(conn: &Conn) -> Result<(String, u64), RemoteError> {
    let r = client(conn)
        .await?
        .list_replicas(pb::ListReplicasRequest {})
        .await?
        .into_inner();
    let version = if r.version.is_empty() {
        "unknown (older than 0.1.0)".to_string()
    } else {
        r.version
    };
    Ok((version, r.self_id))
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("pool-a-*", "pool-a-17"));
        assert!(!glob("pool-a-*", "pool-b-17"));
        assert!(glob("n?", "n1") && !glob("n?", "n10"));
        assert!(glob("*", "") && glob("*-1*", "x-10"));
    }
}
