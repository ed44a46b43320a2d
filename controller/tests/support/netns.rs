//! Replicas in network namespaces on a bridge, so a replica's peer traffic can be cut while
//! agents in the test process still reach it. Needs root.

use std::process::Command;

/// Replica N at `{subnet}.N` in namespace `{prefix}-rN`; this process at `{subnet}.254` on
/// bridge `{prefix}br`.
#[derive(Clone, Debug)]
pub struct Netns {
    pub prefix: String,
    pub subnet: String,
}

impl Netns {
    /// Names and addresses no other test process uses.
    pub fn unique() -> Netns {
        let pid = std::process::id();
        Netns {
            prefix: format!("pt{}", pid % 100_000),
            subnet: format!("10.213.{}", pid % 250),
        }
    }

    pub fn ns(&self, id: u64) -> String {
        format!("{}-r{id}", self.prefix)
    }

    pub fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The namespaces and the bridge; what was made is removed again if a step fails.
    pub fn create(&self, ids: &[u64]) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test cuts a replica off with network namespaces: it needs root");
        }
        let made = std::panic::catch_unwind(|| self.try_create(ids));
        if let Err(panic) = made {
            self.remove(ids);
            std::panic::resume_unwind(panic);
        }
    }

    fn try_create(&self, ids: &[u64]) {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", self.subnet),
            "dev",
            &br,
        ]);
        ip(&["link", "set", &br, "up"]);
        for id in ids {
            let ns = self.ns(*id);
            let host = format!("{}v{id}", self.prefix);
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &host, "master", &br, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}.{id}/24", self.subnet),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
    }

    pub fn remove(&self, ids: &[u64]) {
        for id in ids {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(*id)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
