//! Every scenario of the seed documents, as shipped under examples/, evaluated through the
//! real `palisadectl evaluate` binary: complete reachability matrices, plus flows from outside
//! the cluster.

#[path = "support/fixture.rs"]
mod fixture;

use fixture::{palisadectl, Fixture, Matrices};

fn example(dir: &str) -> Fixture {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/");
    let mut f = Fixture::new();
    let mut files: Vec<_> = std::fs::read_dir(format!("{root}{dir}"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for p in files {
        f = f.raw(&std::fs::read_to_string(p).unwrap());
    }
    f
}

fn matrices(dir: &str, probes: &[&str]) -> Matrices {
    example(dir).matrices(probes)
}

#[test]
fn microservices_chain_behind_default_deny() {
    let m = matrices(
        "microservices",
        &[
            "80/TCP", "8080/TCP", "3306/TCP", "6379/TCP", "53/UDP", "443/TCP",
        ],
    );
    let (fe, be, db, rd) = (
        "microservices/frontend",
        "microservices/backend",
        "microservices/mysql",
        "microservices/redis",
    );
    m.assert_only(0, &[]);
    m.assert_only(1, &[(fe, be)]);
    m.assert_only(2, &[(be, db)]);
    m.assert_only(3, &[(be, rd)]);
    m.assert_only(4, &[]);
    m.assert_only(5, &[]);
    let f = example("microservices");
    assert!(
        f.explain("203.0.113.7", fe, 80, "TCP").0,
        "frontend on 80 from outside"
    );
    assert!(!f.explain("203.0.113.7", fe, 443, "TCP").0);
    assert!(!f.explain("203.0.113.7", be, 8080, "TCP").0);
    assert!(
        !f.explain(fe, "203.0.113.7", 443, "TCP").0,
        "no egress to the internet"
    );
}

#[test]
fn three_tier_production() {
    let m = matrices("three-tier", &["80/TCP", "443/TCP", "8080/TCP", "5432/TCP"]);
    let (fe, be, db) = (
        "production/frontend",
        "production/backend",
        "production/database",
    );
    m.assert_only(0, &[(be, fe), (db, fe)]);
    m.assert_only(1, &[(be, fe), (db, fe)]);
    m.assert_only(2, &[(fe, be)]);
    m.assert_only(3, &[(be, db)]);
    assert!(
        example("three-tier")
            .explain("198.51.100.4", fe, 443, "TCP")
            .0
    );
}

#[test]
fn dns_and_https_egress() {
    let m = matrices(
        "dns-https-egress",
        &["53/UDP", "443/TCP", "80/TCP", "53/TCP"],
    );
    let (app, dns, api) = ("default/myapp", "kube-system/coredns", "web/api");
    m.assert_all_but(0, &[]);
    m.assert_all_but(1, &[]);
    m.assert_all_but(2, &[(app, dns), (app, api)]);
    m.assert_all_but(3, &[(app, dns), (app, api)]);
    // namespaceSelector: {} is every namespace's pods, never an outside address.
    assert!(
        !example("dns-https-egress")
            .explain(app, "8.8.8.8", 53, "UDP")
            .0
    );
}

#[test]
fn ip_block_with_except_namespace_and_pod_peers() {
    let m = matrices("ipblock-except", &["6379/TCP", "5978/TCP"]);
    let (db, fe, worker, stranger) = (
        "default/db",
        "default/frontend",
        "myproject/worker",
        "other/stranger",
    );
    m.assert_all_but(0, &[(stranger, db), (db, fe), (db, worker), (db, stranger)]);
    let f = example("ipblock-except");
    assert!(f.explain("172.17.0.9", db, 6379, "TCP").0);
    assert!(
        !f.explain("172.17.1.9", db, 6379, "TCP").0,
        "in the except block"
    );
    assert!(!f.explain("172.18.0.9", db, 6379, "TCP").0);
    assert!(!f.explain("172.17.0.9", db, 6380, "TCP").0);
    assert!(f.explain(db, "10.0.0.5", 5978, "TCP").0);
    assert!(!f.explain(db, "10.0.0.5", 5979, "TCP").0);
    assert!(!f.explain(db, "10.0.1.5", 5978, "TCP").0);
}

#[test]
fn namespace_isolation() {
    let m = matrices("namespace-isolation", &["8080/TCP", "53/UDP"]);
    let intruder = "other/intruder";
    for i in 0..2 {
        m.assert_all_but(i, &[(intruder, "demo/api"), (intruder, "demo/worker")]);
    }
}

#[test]
fn protocols_single_ranged_and_named_ports() {
    let m = matrices(
        "ports",
        &[
            "80/TCP",
            "8080/TCP",
            "32500/TCP",
            "28/SCTP",
            "53/UDP",
            "33000/TCP",
        ],
    );
    let (c, t, a, b) = (
        "default/client",
        "default/telco",
        "default/web-a",
        "default/web-b",
    );
    m.assert_only(0, &[(c, a), (c, b), (t, a), (t, b), (t, c)]);
    m.assert_only(1, &[(c, b), (t, b), (t, c)]); // "http" is 8080 on web-b only
    m.assert_only(2, &[(c, a), (c, b), (t, a), (t, b), (t, c)]);
    m.assert_only(3, &[(c, t), (t, c)]);
    m.assert_only(4, &[(a, c), (b, c), (t, c)]);
    m.assert_only(5, &[(t, c)]);
}

#[test]
fn environment_isolation_behind_default_deny() {
    let m = matrices("env-isolation", &["80/TCP", "8080/TCP"]);
    // Every default pod's egress is denied (only web may send to 10.0.0.0/24:5432), so the
    // env=production rule never gets a chance; the partner namespace reaches web on 80.
    m.assert_only(0, &[("myproject/partner", "default/web")]);
    m.assert_only(1, &[]);
    assert!(
        example("env-isolation")
            .explain("default/web", "10.0.0.9", 5432, "TCP")
            .0
    );
}

#[test]
fn demo_runs_every_scenario() {
    let out = palisadectl(&["demo"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "microservices",
        "three-tier",
        "dns-https-egress",
        "ipblock-except",
        "namespace-isolation",
        "ports",
        "env-isolation",
    ] {
        assert!(text.contains(&format!("== {name}:")), "{name} missing");
    }
    let json = palisadectl(&["demo", "-o", "json"], "");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["scenarios"].as_array().unwrap().len(), 7);
}
