//! The quick start without root or BPF: the same controller and agents over loopback with the
//! in-memory dataplane (policy compiled, distributed, acknowledged; nothing enforced), and
//! the reachability `palisadectl evaluate` predicts.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use palisade_policy::cluster::{ClusterView, Probe};
use palisade_policy::model::Protocol;
use palisadectl::remote::{self, Conn};

use crate::LabOptions;
use palisadectl::output::Output;

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(
    files: &[(String, String)],
    probes: &[(u16, Protocol)],
    opts: &LabOptions,
) -> Result<()> {
    let loaded = palisadectl::load::parse_sources(files, "default");
    let view = ClusterView::new(&loaded.engine());
    let probes: Vec<Probe> = probes
        .iter()
        .map(|(port, protocol)| Probe {
            port: *port,
            protocol: *protocol,
        })
        .collect();
    println!("Predicted reachability (palisadectl evaluate):\n");
    println!(
        "{}",
        palisadectl::evaluate::matrix_table(&view, &probes, &Default::default())
    );

    let dir = tempfile_dir()?;
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    for (name, text) in files {
        std::fs::write(manifests.join(name), text)?;
    }
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(opts.bin_dir.join("palisade-controller"))
            .args(["--insecure", "--listen", &addr, "--manifests"])
            .arg(&manifests)
            .arg("--state-dir")
            .arg(dir.join("controller"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start palisade-controller")?,
    );
    let mut nodes: Vec<String> = view
        .pods()
        .iter()
        .filter_map(|p| p.node.as_ref().map(|n| n.to_string()))
        .collect();
    nodes.sort();
    nodes.dedup();
    for n in &nodes {
        children.0.push(
            Command::new(opts.bin_dir.join("palisade-agent"))
                .args([
                    "--insecure",
                    "--dataplane",
                    "memory",
                    "--node",
                    n,
                    "--controller",
                    &addr,
                ])
                .arg("--state-dir")
                .arg(dir.join("agents").join(n))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start palisade-agent")?,
        );
    }
    let conn = Conn::insecure(&addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut realized = false;
    for _ in 0..100 {
        if let Ok((_, ok)) = rt.block_on(remote::wait(&conn, None, Duration::from_secs(5), false)) {
            if ok {
                realized = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = rt.block_on(remote::nodes(
        &conn,
        &Default::default(),
        Default::default(),
        Output::Table,
    ))?;
    println!(
        "A controller and {} agents (in-memory dataplane) on {addr}{}:\n\n$ palisadectl nodes --controller {addr} --insecure\n{table}",
        nodes.len(),
        if realized { ", every node acknowledged its slice" } else { "" }
    );
    println!("Run as root on a machine with BPF to measure it on real packets.");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("palisade-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
