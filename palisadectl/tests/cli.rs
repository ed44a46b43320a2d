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
