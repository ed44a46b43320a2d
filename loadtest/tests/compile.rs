//! The compile benchmark runs end to end at a small scale and reports every figure the
//! benchmark record needs, in JSON.

use std::process::Command;

#[test]
fn compile_report_has_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-loadtest"))
        .args([
            "compile",
            "--nodes",
            "20",
            "--pods",
            "600",
            "--namespaces",
            "40",
            "--policies",
            "300",
        ])
        .args(["--samples", "50", "--runs", "2", "-o", "json"])
        .output()
        .expect("palisade-loadtest runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert!(r["full_compile_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(r["full_compile_runs"].as_array().unwrap().len(), 2);
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    for kind in [
        "pod_add",
        "pod_label_change",
        "policy_add",
        "namespace_label_change",
    ] {
        let p = &r["incremental_us"][kind];
        assert_eq!(p["samples"], 50, "{kind}");
        assert!(
            p["p50"].as_f64().unwrap() <= p["p99"].as_f64().unwrap(),
            "{kind}"
        );
    }
    assert!(r["entries_per_node"]["mean"].as_f64().unwrap() > 0.0);
    assert!(r["entries_per_node"]["max"].as_u64().unwrap() > 0);
    assert!(r["map_entries_per_node"]["mean"].as_f64().unwrap() > 0.0);
    assert!(r["encoded_bytes_total"].as_u64().unwrap() > 0);
    // Every pod add lands on a node that enforces something in this mix.
    assert!(r["nodes_changed_mean"]["pod_add"].as_f64().unwrap() >= 1.0);
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-loadtest"))
        .args(["compile", "--nodes", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}
