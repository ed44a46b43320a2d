//! The controller's Prometheus metrics: what they count, and the exposition format they
//! claim (checked by prometheus_client's own parsers).

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{pod, shop, AgentOpts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_streams_messages_acks_and_realization() {
    let mut c = shop().await;
    c.start_agent("n3", AgentOpts::default());
    c.in_sync("n3").await;
    c.realized(c.revision()).await;
    let page = c.http_get("/metrics").await;
    let value = |name: &str| -> f64 {
        page.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{page}"))
    };
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    assert_eq!(value("palisade_sync_streams"), 3.0);
    // n2 and n3 enforce policy (a snapshot each); n1 enforces nothing (an empty confirmation).
    assert_eq!(
        value("palisade_sync_messages_sent_total{kind=\"snapshot\"}"),
        2.0
    );
    assert!(value("palisade_sync_messages_sent_total{kind=\"update\"}") >= 1.0);
    assert!(value("palisade_sync_bytes_sent_total{kind=\"snapshot\"}") > 100.0);
    assert!(value("palisade_acks_total") >= 3.0);
    assert_eq!(value("palisade_nacks_total"), 0.0);
    assert_eq!(value("palisade_realized_revision"), c.revision() as f64);
    assert!(value("palisade_revision_realization_seconds_count") >= 1.0);
    assert_eq!(value("palisade_raft_applied_index"), c.revision() as f64);
    assert_eq!(value("palisade_raft_term"), 1.0);
    assert!(c.http_get("/healthz").await.ends_with("ok\n"));
    // Where a change's time goes: a change to agents in sync goes through every stage the
    // manifests source has (the admin API's `ingest` aside).
    let before = c.revision();
    c.write("more.yaml", &pod("shop", "api2", "api", "n3", "10.0.0.4"));
    let revision = c.next_revision(before).await;
    c.realized(revision).await;
    let page = c.http_get("/metrics").await;
    for stage in ["commit", "compile", "encode", "send", "ack"] {
        let name = format!("palisade_stage_seconds_count{{stage=\"{stage}\"}}");
        assert!(
            page.lines().any(|l| l.starts_with(&name)),
            "{stage} in\n{page}"
        );
    }
    c.shutdown().await;
}

/// `scripts/check-metrics.py` on `url`: prometheus_client's parsers, by the content type.
fn check_metrics(url: &str, require: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-metrics.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script).arg(url);
    for r in require {
        cmd.args(["--require", r]);
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_exposition_format_they_claim() {
    let c = shop().await;
    let url = format!("http://{}/metrics", c.metrics_addr);
    let families = tokio::task::spawn_blocking(move || {
        check_metrics(
            &url,
            &[
                "palisade_build_info",
                "palisade_nodes",
                "palisade_acks",
                "palisade_lint_findings",
                "palisade_sync_streams",
            ],
        )
    })
    .await
    .unwrap();
    assert!(families.contains("palisade_acks counter"), "{families}");
    assert!(families.contains("palisade_nodes gauge"), "{families}");
    let text = c.http_get("/metrics").await;
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{text}"
    );
    // Gauges are current without a full compile: three nodes known.
    assert!(text.contains("\npalisade_nodes 3\n"), "{text}");
    assert!(c.http_get("/livez").await.starts_with("HTTP/1.0 200"));
    assert!(c.http_get("/readyz").await.contains("readyz check passed"));
    c.shutdown().await;
}
