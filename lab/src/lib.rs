//! palisade-lab: Palisade on real packets on one machine. From a set of manifests it builds
//! nodes and pods in network namespaces the way a routed CNI leaves them ([`topology`]),
//! starts controller replicas and a real eBPF agent per node ([`lab`]), and measures
//! reachability with real TCP and UDP sockets ([`probe`]) to set beside what `palisadectl
//! evaluate` predicts from the same manifests; with three replicas, it kills the leader while
//! probing ([`failover`]). The end-to-end tests and the quick start use it. Needs root, BPF
//! and network namespaces.

pub mod bench;
pub mod demo;
pub mod failover;
pub mod fallback;
pub mod lab;
pub mod netns;
pub mod probe;
pub mod topology;

pub use lab::{Lab, LabOptions};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Command(String),
    #[error("{0}")]
    Topology(String),
    #[error("manifests: {0}")]
    Manifests(String),
    #[error("controller: {0}")]
    Controller(String),
    #[error("{0}")]
    Probe(String),
}

/// Whether this process can build a lab: root, network namespaces and BPF. `Err` says what
/// is missing.
pub fn check_privileges() -> Result<(), String> {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Err("no `ip` command (iproute2)".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
        && !std::path::Path::new("/proc/sys/net/core/bpf_jit_enable").exists()
    {
        return Err("no BPF support in this kernel".into());
    }
    Ok(())
}
