//! `palisadectl certs` as an operator runs it over a cluster's life: mint, add a node later
//! without touching the other certificates, keys private from the start, finite validity,
//! renewal in place.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn certs(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// notBefore and notAfter, in seconds since the epoch.
fn validity(path: &Path) -> (i64, i64) {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const DAY: i64 = 24 * 3600;

#[test]
fn adding_a_node_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = certs(d, &["--node", "node-1"]);
    let written = String::from_utf8_lossy(&first.stdout).to_string();
    for f in [
        "ca.pem",
        "ca-key.pem",
        "controller.pem",
        "node-node-1.pem",
        "operator-admin-key.pem",
    ] {
        assert!(written.contains(f), "{f} not in {written}");
    }
    // Keys are private; certificates are not secret.
    for entry in std::fs::read_dir(d).unwrap() {
        let p = entry.unwrap().path();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with("-key.pem") {
            assert_eq!(mode, 0o600, "{name}");
        } else {
            assert_eq!(mode & 0o077 & !0o044, 0, "{name} {mode:o}");
        }
    }
    // One year for leaves, ten for the CA.
    let (nb, na) = validity(&d.join("node-node-1.pem"));
    assert!(nb <= now() && nb > now() - DAY);
    assert!((na - now() - 365 * DAY).abs() < DAY, "{}", na - now());
    let (_, ca_after) = validity(&d.join("ca.pem"));
    assert!(ca_after - now() > 9 * 365 * DAY);

    let before = |f: &str| std::fs::read(d.join(f)).unwrap();
    let (controller, operator, node1) = (
        before("controller.pem"),
        before("operator-admin.pem"),
        before("node-node-1.pem"),
    );
    let second = certs(d, &["--node", "node-2", "--valid-for", "90d"]);
    let written = String::from_utf8_lossy(&second.stdout).to_string();
    assert_eq!(
        written.lines().collect::<Vec<_>>(),
        vec![
            d.join("node-node-2-key.pem").display().to_string(),
            d.join("node-node-2.pem").display().to_string()
        ]
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("kept"));
    assert_eq!(before("controller.pem"), controller);
    assert_eq!(before("operator-admin.pem"), operator);
    assert_eq!(before("node-node-1.pem"), node1);
    let (_, na) = validity(&d.join("node-node-2.pem"));
    assert!((na - now() - 90 * DAY).abs() < DAY);

    // Renewal replaces what is named, with the same CA.
    let ca = before("ca.pem");
    certs(d, &["--node", "node-1", "--renew"]);
    assert_ne!(before("node-node-1.pem"), node1);
    assert_eq!(before("ca.pem"), ca);
    // The controller's certificate is always among those requested.
    assert_ne!(before("controller.pem"), controller);
}

#[test]
fn a_validity_too_short_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["certs", "--valid-for", "10m", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("an hour at least"));
}

#[test]
fn half_a_ca_and_endless_validity_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["--node", "n1"]);
    std::fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["certs", "--node", "n2", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca-key.pem"));
    assert!(!dir.path().join("node-n2.pem").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["certs", "--valid-for", "10000y", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 100 years"));
}
