//! The eBPF dataplane on a bench: a real [`EbpfDataplane`] in a fresh network namespace (so it
//! finds no pod interface) on a private bpffs, and crafted packets run through its TC programs
//! with `BPF_PROG_TEST_RUN`. For the verdict tests and the per-packet cost benchmark
//! (`palisade-loadtest datapath`). Needs root and BPF.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::maps::{HashMap, Map, MapData};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use palisade_ebpf_common::{CtEntry, CtKey, IfaceEndpoint, LocalKey};
use palisade_policy::slice::NodeSlice;

use super::{EbpfConfig, EbpfDataplane, EbpfError};
use crate::dataplane::{Dataplane, DataplaneError, Installed};

pub struct Harness {
    pub dataplane: EbpfDataplane,
    pub from_pod: SchedClassifier,
    pub to_pod: SchedClassifier,
    ct: HashMap<MapData, CtKey, CtEntry>,
    local: HashMap<MapData, LocalKey, u32>,
    ifaces: HashMap<MapData, u32, IfaceEndpoint>,
    bpffs: PathBuf,
    dir: PathBuf,
}

/// `BPF_PROG_TEST_RUN` runs packets as if on loopback.
const TEST_IFINDEX: u32 = 1;

impl Harness {
    /// On this thread: a new network namespace (so the dataplane finds no pod interface to
    /// attach to), a bpffs of its own, and the agent's eBPF dataplane on it.
    pub fn start() -> Result<Harness, EbpfError> {
        // SAFETY: affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(EbpfError::Bpffs(format!(
                "cannot make a network namespace (needs root): {}",
                std::io::Error::last_os_error()
            )));
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "palisade-bench-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let bpffs = dir.join("bpf");
        let dataplane = EbpfDataplane::open(&EbpfConfig::new(&bpffs))?;
        let load = |e: String| EbpfError::Load(e);
        let prog = |n: &str| {
            SchedClassifier::from_pin(bpffs.join("progs").join(n)).map_err(|e| load(e.to_string()))
        };
        let map = |n: &str| {
            MapData::from_pin(bpffs.join("maps").join(n)).map_err(|e| load(e.to_string()))
        };
        Ok(Harness {
            from_pod: prog("from_pod")?,
            to_pod: prog("to_pod")?,
            ct: HashMap::try_from(Map::LruHashMap(map("PAL_CT")?))
                .map_err(|e| load(e.to_string()))?,
            local: HashMap::try_from(Map::HashMap(map("PAL_LOCAL")?))
                .map_err(|e| load(e.to_string()))?,
            ifaces: HashMap::try_from(Map::HashMap(map("PAL_IFACES")?))
                .map_err(|e| load(e.to_string()))?,
            dataplane,
            bpffs,
            dir,
        })
    }

    pub fn install(&mut self, slice: &NodeSlice) -> Result<Installed, DataplaneError> {
        self.dataplane.install(slice, None)
    }

    /// `addr` may send from the test interface (the anti-spoofing map).
    pub fn local(&mut self, addr: Ipv4Addr) {
        let key = LocalKey {
            ifindex: TEST_IFINDEX,
            addr: addr.octets(),
        };
        self.local
            .insert(key, 1, 0)
            .expect("PAL_LOCAL has room for test addresses");
    }

    /// The test interface carries the endpoints `addrs` (what frames of other address
    /// families are judged by); none: an interface the agent has not described.
    pub fn interface_endpoints(&mut self, addrs: &[Ipv4Addr]) {
        if addrs.is_empty() {
            let _ = self.ifaces.remove(&TEST_IFINDEX);
            return;
        }
        let mut e = IfaceEndpoint {
            count: addrs.len() as u32,
            ..IfaceEndpoint::default()
        };
        for (slot, a) in e.addrs.iter_mut().zip(addrs) {
            *slot = a.octets();
        }
        self.ifaces
            .insert(TEST_IFINDEX, e, 0)
            .expect("PAL_IFACES has room");
    }

    /// Forget every tracked connection.
    pub fn clear_conntrack(&mut self) {
        let keys: Vec<CtKey> = self.ct.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.ct.remove(&k);
        }
    }

    /// Whether `prog` passes `packet` (TC_ACT_UNSPEC: on to the next program / pass).
    pub fn passes(prog: &SchedClassifier, packet: &[u8]) -> bool {
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        match r.return_value as i32 {
            -1 => true,
            2 => false,
            other => panic!("unexpected TC verdict {other}"),
        }
    }

    /// Per-run cost of `prog` on `packet`, over `repeat` runs in the kernel.
    pub fn cost(prog: &SchedClassifier, packet: &[u8], repeat: u32) -> std::time::Duration {
        prog.test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .duration
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = super::unpin_all(&self.bpffs);
        super::bpffs::unmount(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// An Ethernet + IPv4 packet carrying `protocol` with `sport`/`dport` (TCP with `tcp_flags`;
/// ICMP: an echo request with identifier `sport`, or a reply when `tcp_flags` is 1).
pub fn packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
) -> Vec<u8> {
    let l4: Vec<u8> = match protocol {
        6 => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = tcp_flags;
            h
        }
        17 => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        }
        132 => {
            // Common header (ports, verification tag, checksum) and an INIT chunk header.
            let mut h = vec![0u8; 16];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 1;
            h[15] = 4;
            h
        }
        1 => {
            let mut h = vec![0u8; 8];
            h[0] = if tcp_flags == 1 { 0 } else { 8 };
            h[4..6].copy_from_slice(&sport.to_be_bytes());
            h
        }
        _ => vec![0u8; 8],
    };
    let mut p = vec![0u8; 14];
    p[12] = 0x08; // IPv4
    let total = 20 + l4.len();
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    p.extend(ip);
    p.extend(l4);
    p
}
