//! The agent's saved state, and the binary's behaviour as an operator meets it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_agent::StateStore;
use palisade_policy::manifest;
use palisade_policy::model::Command as PolicyCommand;
use palisade_policy::{Engine, NodeSlice};

fn a_slice() -> NodeSlice {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ports/manifests.yaml"
    ))
    .unwrap();
    let parsed = manifest::parse("ports.yaml", &text, "default");
    let commands = parsed.objects.into_iter().map(|(_, o)| match o {
        manifest::Object::Namespace(n) => PolicyCommand::UpsertNamespace(n),
        manifest::Object::Pod(p) => PolicyCommand::UpsertPod(p),
        manifest::Object::NetworkPolicy(p) => PolicyCommand::UpsertPolicy(p),
    });
    let s = Engine::load(7, commands).slice("node-2");
    assert!(!s.endpoints.is_empty());
    s
}

#[test]
fn the_saved_slice_round_trips_and_corruption_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert!(store.load().unwrap().is_none());
    let slice = a_slice();
    store.save(&slice).unwrap();
    assert_eq!(store.load().unwrap(), Some(slice));
    let file = dir.path().join("slice.pb");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(
        err.contains("slice.pb") && err.contains("not a saved slice"),
        "{err}"
    );
}

#[test]
fn the_agent_exits_promptly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-agent"))
        .args(["--node", "n1", "--insecure", "--controller", "127.0.0.1:1"])
        .args(["--dataplane", "memory"])
        .arg("--state-dir")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until it has tried, failed and is backing off (it logs why).
    let stderr = child.stderr.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("Connection refused") {
                let _ = seen_tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    seen_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the agent tries to connect and says why it cannot");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "clean exit: {s:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "exits within a few seconds of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = reader.join().unwrap();
    assert!(
        log.contains("shutting down"),
        "a clean shutdown is logged: {log}"
    );
}

#[test]
fn bad_flags_are_explained() {
    let run = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-agent"))
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(5) {
                child.kill().unwrap();
                panic!("palisade-agent {args:?} should fail at once");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--node", "n1", "--state-dir", "/tmp/x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--tls-ca"),
        "TLS is required unless --insecure: {err}"
    );
    let (code, err) = run(&[
        "--node",
        "n1",
        "--state-dir",
        "/tmp/x",
        "--insecure",
        "--dataplane",
        "ebpf",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("eBPF dataplane"), "{err}");
    let (code, err) = run(&[
        "--node",
        "n1",
        "--state-dir",
        "/tmp/x",
        "--insecure",
        "--insecure-allow-remote",
        "--controller",
        "ftp://x",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ftp://x"), "{err}");
}

/// A peer that accepts connections and never answers (a hung or half-dead controller): the
/// agent gives up on it within its timeouts and keeps retrying, instead of hanging.
#[tokio::test]
async fn a_silent_controller_does_not_hang_the_agent() {
    use palisade_agent::{Agent, AgentConfig, MemoryDataplane, Phase};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock); // keep it open, say nothing
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        connect_timeout: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(10),
        ..AgentConfig::new("n1", &addr.to_string())
    };
    let agent = Agent::new(
        config,
        MemoryDataplane::default(),
        StateStore::open(dir.path()).unwrap(),
    )
    .unwrap();
    let mut status = agent.status();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(agent.run(shutdown.clone()));
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .expect("the agent notices the silence")
    .unwrap()
    .clone();
    assert!(
        s.last_error.unwrap().contains("no answer"),
        "{:?}",
        status.borrow()
    );
    assert_ne!(status.borrow().phase, Phase::Synced);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("stops")
        .unwrap();
}

/// One HTTP/1.0 GET: (status line, whole answer).
fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn metrics_and_probes_with_the_memory_dataplane() {
    let dir = tempfile::tempdir().unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-agent"))
        .args(["--node", "n1", "--insecure", "--controller", "127.0.0.1:1"])
        .args([
            "--dataplane",
            "memory",
            "--metrics-listen",
            &addr.to_string(),
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let live = loop {
        match http_get(addr, "/livez") {
            Ok(a) => break a,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("the agent's HTTP endpoint never answered: {e}"),
        }
    };
    assert!(live.starts_with("HTTP/1.0 200"), "{live}");
    // No controller reachable and nothing saved: not ready, and it says why.
    let ready = http_get(addr, "/readyz").unwrap();
    assert!(ready.starts_with("HTTP/1.0 503"), "{ready}");
    assert!(ready.contains("[-]dataplane holds no slice yet"), "{ready}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-metrics.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{addr}/metrics"))
        .args(["--require", "palisade_agent_build_info"])
        .args(["--require", "palisade_agent_applied_version"])
        .args(["--require", "palisade_agent_phase"])
        .args(["--require", "palisade_agent_nacks"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families = String::from_utf8_lossy(&out.stdout);
    assert!(
        families.contains("palisade_agent_acks counter"),
        "{families}"
    );
}

/// Run the agent binary with `env` (and none of the test's own PALISADE_ variables) until it
/// exits or logs `until` (then it is killed): (exit code if it exited, standard error).
fn agent_run(args: &[&str], env: &[(&str, &str)], until: Option<&str>) -> (Option<i32>, String) {
    use std::io::BufRead;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade-agent"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PALISADE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    loop {
        match line_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let seen = until.is_some_and(|u| line.contains(u));
                log.push_str(&line);
                log.push('\n');
                if seen {
                    let _ = child.kill();
                    let _ = child.wait();
                    return (None, log);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                return (status.code(), log);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("palisade-agent {args:?} {env:?}: neither exited nor logged {until:?}: {log}");
        }
    }
}

/// `PALISADE_INSECURE=false` once turned authentication off (the variable counted as present
/// whatever its value): booleans now take `true` or `false`, and plaintext needs both
/// --insecure and a loopback controller (or a second flag).
#[test]
fn boolean_variables_parse_strictly_and_plaintext_stays_local() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let base = [
        "--node",
        "n1",
        "--dataplane",
        "memory",
        "--state-dir",
        state,
        "--controller",
        "127.0.0.1:1",
    ];
    let (code, err) = agent_run(&base, &[("PALISADE_INSECURE", "false")], None);
    assert_eq!(code, Some(2), "PALISADE_INSECURE=false: {err}");
    assert!(err.contains("authentication is on"), "{err}");
    for var in ["PALISADE_INSECURE", "PALISADE_INSECURE_ALLOW_REMOTE"] {
        let mut args = base.to_vec();
        if var != "PALISADE_INSECURE" {
            args.push("--insecure");
        }
        for value in ["yes", "1", "", "no", "FALSE"] {
            let (code, err) = agent_run(&args, &[(var, value)], None);
            assert_eq!(code, Some(2), "{var}={value:?}: {err}");
            assert!(
                err.contains("invalid value") || err.contains("a value is required"),
                "{var}={value:?}: {err}"
            );
        }
    }
    // `true` is plaintext toward a loopback controller: it runs, and tries to connect.
    let (code, err) = agent_run(
        &base,
        &[("PALISADE_INSECURE", "true")],
        Some("Connection refused"),
    );
    assert_eq!(code, None, "{err}");
    assert!(err.contains("AUTHENTICATION IS OFF"), "{err}");
    // Toward another address, only with the second flag.
    let mut remote = base[..6].to_vec();
    remote.extend(["--controller", "http://10.9.9.9:7443"]);
    let (code, err) = agent_run(&remote, &[("PALISADE_INSECURE", "true")], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("10.9.9.9") && err.contains("loopback"),
        "{err}"
    );
    let (code, err) = agent_run(
        &remote,
        &[
            ("PALISADE_INSECURE", "true"),
            ("PALISADE_INSECURE_ALLOW_REMOTE", "true"),
        ],
        Some("AUTHENTICATION IS OFF"),
    );
    assert_eq!(code, None, "{err}");
}

/// The saved slice is read with the bounded reader: a link to /dev/zero or a FIFO in its
/// place is refused at once (it once took 4.9 GB in 5 s, or blocked start-up forever), and
/// temporary files a killed agent left are removed.
#[test]
fn the_saved_slice_is_read_within_bounds_and_stale_temporaries_go() {
    for kind in ["zero", "fifo"] {
        let dir = tempfile::tempdir().unwrap();
        let slice = dir.path().join("slice.pb");
        match kind {
            "zero" => std::os::unix::fs::symlink("/dev/zero", &slice).unwrap(),
            _ => {
                let status = Command::new("mkfifo").arg(&slice).status().unwrap();
                assert!(status.success());
            }
        }
        let stale = dir.path().join(".slice.pb.4242424.0.tmp");
        std::fs::write(&stale, b"half a slice").unwrap();
        let (code, log) = agent_run(
            &[
                "--node",
                "n1",
                "--insecure",
                "--dataplane",
                "memory",
                "--controller",
                "127.0.0.1:1",
                "--state-dir",
                dir.path().to_str().unwrap(),
            ],
            &[],
            Some("Connection refused"),
        );
        assert_eq!(code, None, "{kind}: {log}");
        assert!(
            log.contains("not a regular file") && log.contains("starting empty"),
            "{kind}: {log}"
        );
        assert!(
            !stale.exists(),
            "{kind}: the stale temporary file is removed"
        );
        assert!(log.contains("removed a temporary file"), "{kind}: {log}");
    }
}
