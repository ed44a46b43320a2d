//! The command line as a shell user meets it: output cut short by a closed pipe, and
//! directories read exactly as the controller reads them.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

#[test]
fn a_closed_pipe_ends_it_quietly() {
    // 200 pods: a reachability matrix far larger than a pipe's buffer.
    let pods: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: default}}\nspec: {{nodeName: n1, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: 10.0.{}.{}}}\n",
                i / 200,
                i % 200 + 1
            )
        })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["evaluate", "-f", "-"])
        .args([
            "--probe", "80/TCP", "--probe", "8080/TCP", "--probe", "3306/TCP",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(pods.join("---\n").as_bytes()).unwrap();
    }
    // `palisadectl evaluate … | head -c 1`: the reader goes away after one byte.
    let mut stdout = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    stdout.read_exact(&mut one).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

#[test]
fn dotfiles_in_a_directory_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("a.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
    )
    .unwrap();
    // An editor's swap file and a half-written temporary: the controller ignores them.
    std::fs::write(tmp.path().join(".a.yaml.swp"), "kind: [").unwrap();
    std::fs::write(tmp.path().join(".tmp.yaml"), "kind: [").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["evaluate", "--probe", "80/TCP", "-f"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn matrices_by_namespace_and_filtered() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/namespace-isolation"
    );
    let grouped = run(&[
        "evaluate",
        "-f",
        dir,
        "--probe",
        "80/TCP",
        "--group-by",
        "namespace",
        "-o",
        "json",
    ]);
    assert!(grouped.status.success());
    let v: serde_json::Value = serde_json::from_slice(&grouped.stdout).unwrap();
    let m = &v["probes"][0]["matrix"];
    // From `other`, nothing reaches `demo`; within `demo`, everything.
    assert_eq!(m["other"]["demo"]["allowed"], 0);
    assert_eq!(m["demo"]["demo"]["allowed"], m["demo"]["demo"]["pairs"]);
    let table = run(&[
        "evaluate",
        "-f",
        dir,
        "--probe",
        "80/TCP",
        "--group-by",
        "namespace",
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("3 other     X . ."), "{text}");
    // -n keeps the pods of the namespaces named, as rows and columns.
    let only = run(&[
        "evaluate", "-f", dir, "--probe", "80/TCP", "-n", "other", "-o", "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&only.stdout).unwrap();
    let rows: Vec<&String> = v["probes"][0]["matrix"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r.starts_with("other/")),
        "{rows:?}"
    );
}

#[test]
fn slice_of_one_namespace() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/namespace-isolation"
    );
    let whole = run(&["slice", "-f", dir, "--node", "node-1"]);
    let whole: serde_json::Value = serde_json::from_slice(&whole.stdout).unwrap();
    let demo = run(&["slice", "-f", dir, "--node", "node-1", "-n", "demo"]);
    let demo: serde_json::Value = serde_json::from_slice(&demo.stdout).unwrap();
    // The whole slice's digest, the namespace's endpoints.
    assert_eq!(demo["digest"], whole["digest"]);
    assert_eq!(demo["namespace"], "demo");
    assert_eq!(demo["endpoints"], whole["endpoints"]);
    let other = run(&[
        "slice", "-f", dir, "--node", "node-1", "-n", "frontend", "-o", "table",
    ]);
    assert!(other.status.success());
    let text = String::from_utf8_lossy(&other.stdout);
    assert!(
        text.contains("namespace frontend: 0 endpoints, 0 address sets")
            && !text.contains("demo/api"),
        "{text}"
    );
}

#[test]
fn version_and_completion() {
    let v = run(&["version", "--client"]);
    assert_eq!(
        String::from_utf8_lossy(&v.stdout),
        format!(
            "Client Version: palisadectl {}\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    for shell in ["bash", "zsh", "fish"] {
        let c = run(&["completion", shell]);
        assert!(c.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&c.stdout);
        assert!(
            text.contains("palisadectl") && text.contains("lint"),
            "{shell}"
        );
    }
    // A context file that names a controller nobody serves: the client's version is printed,
    // then the error, with status 1.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, "controller: 127.0.0.1:1\ninsecure: true\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["version"])
        .env("PALISADE_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Client Version"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[test]
fn a_listener_that_never_answers_is_an_error_not_a_hang() {
    // Accepts connections (the kernel's backlog would do the same for a stopped process) and
    // never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let (sock, _) = silent.accept().unwrap();
        sock
    });
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let minted = run(&[
        "certs",
        "--dir",
        certs.to_str().unwrap(),
        "--operator",
        "admin",
    ]);
    assert!(minted.status.success(), "{minted:?}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["replicas", "--controller", &addr])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("operator-admin.pem"))
        .arg("--key")
        .arg(certs.join("operator-admin-key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded by the connect timeout; a hang is killed well after it and fails below.
    let limit = palisadectl::remote::CONNECT * 3;
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("does not answer as a controller"),
        "{stderr}"
    );
    drop(held.join());
}
