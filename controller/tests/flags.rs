//! The controller binary's boolean flags and their variables parse strictly, and
//! authentication is off only when asked for, and then on loopback only:
//! `PALISADE_INSECURE=false` once turned authentication off (the variable counted as present
//! whatever its value), so an anonymous caller could apply policies.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The controller with `env` (and nothing of the test's own PALISADE_ variables), on
/// ephemeral ports, its state in `dir`.
fn controller(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (Command, u16) {
    let metrics = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade-controller"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PALISADE_") {
            cmd.env_remove(k);
        }
    }
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics}"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    (cmd, metrics)
}

/// Run until it exits (it must, within `WAIT`): its exit code and standard error.
fn refused(mut cmd: Command) -> (i32, String) {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the controller should have refused to start, and is still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

/// Start it and wait until its metrics answer: their text.
fn started(mut cmd: Command, metrics: u16) -> (Child, String) {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the controller exited ({s}): {err}");
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", metrics)) {
            let mut out = String::new();
            if s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_ok()
                && s.read_to_string(&mut out).is_ok()
                && out.contains("palisade_insecure")
            {
                return (child, out);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the controller never served metrics"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn insecure_false_keeps_authentication_on() {
    let dir = tempfile::tempdir().unwrap();
    let (cmd, _) = controller(dir.path(), &[("PALISADE_INSECURE", "false")], &[]);
    let (code, err) = refused(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("authentication is on") && err.contains("--tls-ca"),
        "PALISADE_INSECURE=false: {err}"
    );
    // And on the command line.
    let (cmd, _) = controller(dir.path(), &[], &["--insecure=false"]);
    let (code, err) = refused(cmd);
    assert_ne!(code, 0);
    assert!(err.contains("authentication is on"), "{err}");
}

#[test]
fn boolean_variables_take_true_or_false_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    for var in [
        "PALISADE_INSECURE",
        "PALISADE_INSECURE_ALLOW_REMOTE",
        "PALISADE_KUBERNETES",
        "PALISADE_EMIT_EVENTS",
        "PALISADE_BOOTSTRAP",
    ] {
        // A variable counts only where its flag is not given: the others run with
        // --insecure, so they would start if the value were taken.
        let args: &[&str] = if var == "PALISADE_INSECURE" {
            &[]
        } else {
            &["--insecure"]
        };
        for value in ["yes", "1", "0", "", "off", "ture", "False", "TRUE"] {
            let (cmd, _) = controller(dir.path(), &[(var, value)], args);
            let (code, err) = refused(cmd);
            assert_eq!(code, 2, "{var}={value:?} must be a usage error: {err}");
            assert!(
                err.contains("invalid value") || err.contains("a value is required"),
                "{var}={value:?}: {err}"
            );
        }
    }
}

#[test]
fn plaintext_is_loopback_only_unless_asked_twice() {
    let dir = tempfile::tempdir().unwrap();
    // `true` turns authentication off: on loopback it serves, and says so in its metrics.
    let (cmd, metrics) = controller(dir.path(), &[("PALISADE_INSECURE", "true")], &[]);
    let (child, text) = started(cmd, metrics);
    assert!(text.contains("palisade_insecure 1"), "{text}");
    stop(child);

    // On an address others can reach, plaintext needs a second, explicit flag.
    let (cmd, _) = controller(dir.path(), &[], &["--insecure", "--listen", "0.0.0.0:0"]);
    let (code, err) = refused(cmd);
    assert_ne!(code, 0);
    assert!(
        err.contains("0.0.0.0") && err.contains("not a loopback address"),
        "{err}"
    );
    // Peers reached in plaintext count too.
    let (cmd, _) = controller(
        dir.path(),
        &[],
        &[
            "--insecure",
            "--id",
            "1",
            "--peers",
            "1=127.0.0.1:1,2=10.9.9.9:7443",
        ],
    );
    let (code, err) = refused(cmd);
    assert_ne!(code, 0);
    assert!(err.contains("10.9.9.9:7443"), "{err}");

    let (cmd, metrics) = controller(
        dir.path(),
        &[("PALISADE_INSECURE_ALLOW_REMOTE", "true")],
        &["--insecure", "--listen", "0.0.0.0:0"],
    );
    let (child, text) = started(cmd, metrics);
    assert!(text.contains("palisade_insecure 1"), "{text}");
    stop(child);

    // The second flag alone turns nothing off.
    let (cmd, _) = controller(
        dir.path(),
        &[("PALISADE_INSECURE_ALLOW_REMOTE", "true")],
        &[],
    );
    let (code, err) = refused(cmd);
    assert_ne!(code, 0);
    assert!(err.contains("only meaningful with --insecure"), "{err}");
}

#[test]
fn kubernetes_variables_parse_as_booleans() {
    let dir = tempfile::tempdir().unwrap();
    // `false` means no Kubernetes source: the controller starts without a kubeconfig.
    let (cmd, metrics) = controller(
        dir.path(),
        &[
            ("PALISADE_INSECURE", "true"),
            ("PALISADE_KUBERNETES", "false"),
            ("PALISADE_EMIT_EVENTS", "false"),
        ],
        &[],
    );
    let (child, _) = started(cmd, metrics);
    stop(child);
    // `true` asks for events, which need the Kubernetes source.
    let (cmd, _) = controller(
        dir.path(),
        &[
            ("PALISADE_INSECURE", "true"),
            ("PALISADE_EMIT_EVENTS", "true"),
        ],
        &[],
    );
    let (code, err) = refused(cmd);
    assert_ne!(code, 0);
    assert!(err.contains("--emit-events"), "{err}");
}
