//! A manifests subdirectory made unreadable (`chmod 000`) was reported only at the next
//! rescan, 30 s later. The real controller binary, run without capabilities (as root they
//! would read anything), with a rescan an hour away: the chmod itself is noticed (inotify
//! reports the attribute change), the directory is reported at once, and the policy it held
//! stays in force until it can be read again.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisadectl::output::Output;
use palisadectl::remote::{self, Conn};

const WAIT: Duration = Duration::from_secs(30);

const POLICY: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}]}\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn policy_held(conn: &Conn) -> bool {
    palisadectl::get::get(
        conn,
        "netpol",
        &["shop/web".into()],
        "default",
        Default::default(),
        Output::Json,
    )
    .await
    .is_ok_and(|g| g.all_found)
}

async fn problems(conn: &Conn) -> String {
    remote::rejected(conn, None, false)
        .await
        .map(|r| r.text)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_directory_is_reported_at_once_and_keeps_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("manifests/team");
    std::fs::create_dir_all(&team).unwrap();
    std::fs::write(team.join("policy.yaml"), POLICY).unwrap();
    let port = free_port();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--",
    ])
    .arg(env!("CARGO_BIN_EXE_palisade-controller"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PALISADE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--insecure", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", "127.0.0.1:0", "--rescan", "1h"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--manifests")
        .arg(dir.path().join("manifests"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _controller = Stop(
        cmd.spawn()
            .expect("setpriv (util-linux) runs the controller"),
    );
    let conn = Conn::insecure(&format!("127.0.0.1:{port}"));
    let deadline = Instant::now() + WAIT;
    while !policy_held(&conn).await {
        assert!(Instant::now() < deadline, "the policy never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::set_permissions(&team, std::fs::Permissions::from_mode(0o000)).unwrap();
    let locked = Instant::now();
    loop {
        let text = problems(&conn).await;
        if text.contains("team") {
            assert!(text.contains("stays in force"), "{text}");
            break;
        }
        assert!(
            locked.elapsed() < Duration::from_secs(10),
            "not reported: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("reported after {:?}", locked.elapsed());
    assert!(policy_held(&conn).await, "what it held stays in force");

    std::fs::set_permissions(&team, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opened = Instant::now();
    while problems(&conn).await.contains("team") {
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "still reported once readable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(policy_held(&conn).await);
}
