//! Reachability measured with real sockets: servers in every pod's namespace answer TCP
//! connections and UDP datagrams, and a probe from one namespace to an address and port says
//! whether a reply came back (so a probe also checks that replies pass).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_policy::model::Protocol;

use crate::netns::in_netns;
use crate::LabError;

/// How long a probe waits for an answer before calling the flow denied.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1200);

/// Servers answering on some ports in some namespaces, until dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    listeners: Vec<i32>,
    /// The accepting and receiving threads (each owns its socket).
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    pub fn new() -> Servers {
        Servers {
            stop: Arc::new(AtomicBool::new(false)),
            listeners: Vec::new(),
            threads: Vec::new(),
        }
    }

    /// Answer on `port`/`protocol` in `netns` (TCP: a connection gets one byte, then echoes;
    /// UDP: every datagram is echoed), over IPv4.
    pub fn serve(&mut self, netns: &str, port: u16, protocol: Protocol) -> Result<(), LabError> {
        self.serve_on(netns, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port, protocol)
    }

    /// The same over IPv6 and IPv4 (one dual-stack socket).
    pub fn serve_dual_stack(
        &mut self,
        netns: &str,
        port: u16,
        protocol: Protocol,
    ) -> Result<(), LabError> {
        self.serve_on(netns, IpAddr::V6(Ipv6Addr::UNSPECIFIED), port, protocol)
    }

    fn serve_on(
        &mut self,
        netns: &str,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Result<(), LabError> {
        let addr = SocketAddr::from((ip, port));
        match protocol {
            Protocol::Tcp => {
                let l = in_netns(netns, move || TcpListener::bind(addr))?
                    .map_err(|e| LabError::Command(format!("listen on TCP {port} in {netns}: {e}")))?;
                self.listeners.push(l.as_raw_fd());
                self.threads.push(std::thread::spawn(move || {
                    for conn in l.incoming() {
                        let Ok(mut c) = conn else { break };
                        std::thread::spawn(move || {
                            let _ = c.write_all(b"+");
                            let mut buf = [0u8; 65536];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                }));
            }
            Protocol::Udp => {
                let s = in_netns(netns, move || UdpSocket::bind(addr))?
                    .map_err(|e| LabError::Command(format!("listen on UDP {port} in {netns}: {e}")))?;
                s.set_read_timeout(Some(Duration::from_millis(200))).ok();
                let stop = self.stop.clone();
                self.threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = s.recv_from(&mut buf) {
                            let _ = s.send_to(&buf[..n], from);
                        }
                    }
                }));
            }
            Protocol::Sctp => {
                return Err(LabError::Topology(
                    "this kernel has no SCTP sockets; SCTP verdicts are tested through BPF_PROG_TEST_RUN".into(),
                ))
            }
        }
        Ok(())
    }
}

impl Default for Servers {
    fn default() -> Servers {
        Servers::new()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for fd in &self.listeners {
            // SAFETY: shutting down a listening socket wakes its accept loop, which then ends
            // and closes it.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        // Their sockets are closed once their threads end (a socket keeps its namespace alive).
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether something in `netns` listens on TCP `port` (read from the namespace's
/// /proc/net/tcp and tcp6): a server started by another process is ready.
pub fn listening(netns: &str, port: u16) -> Result<bool, LabError> {
    let needle = format!(":{port:04X} ");
    in_netns(netns, move || {
        ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| {
                t.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    // local address, then state 0A = LISTEN
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
                })
            })
        })
    })
}

/// An open TCP connection made from a namespace (for testing what happens to established
/// connections).
pub struct Connection(TcpStream);

impl Connection {
    /// Connect from `netns` to `dst:port` and read the server's greeting.
    pub fn open(netns: &str, dst: Ipv4Addr, port: u16) -> Result<Connection, LabError> {
        let s = in_netns(netns, move || {
            TcpStream::connect_timeout(&SocketAddr::from((dst, port)), PROBE_TIMEOUT)
        })?
        .map_err(|e| LabError::Probe(format!("connect to {dst}:{port} from {netns}: {e}")))?;
        let mut s = s;
        s.set_read_timeout(Some(PROBE_TIMEOUT)).ok();
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .map_err(|e| LabError::Probe(format!("no greeting from {dst}:{port}: {e}")))?;
        Ok(Connection(s))
    }

    /// Whether a message sent now comes back.
    pub fn echoes(&mut self) -> bool {
        let msg = b"ping";
        if self.0.write_all(msg).is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        self.0.read_exact(&mut buf).is_ok() && &buf == msg
    }
}

/// Whether `dst:port/protocol` answers a probe from `netns`. Panics when the namespace cannot
/// be entered: that is a broken lab, not a denied flow.
pub fn probe(netns: &str, dst: impl Into<IpAddr>, port: u16, protocol: Protocol) -> bool {
    try_probe(netns, dst.into(), port, protocol).unwrap_or_else(|e| panic!("probe: {e}"))
}

/// Whether `dst:port/protocol` answers a probe from `netns`; an error when the namespace
/// cannot be entered.
pub fn try_probe(
    netns: &str,
    dst: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Result<bool, LabError> {
    let ns = netns.to_string();
    let r = match protocol {
        Protocol::Tcp => in_netns(&ns, move || {
            TcpStream::connect_timeout(&SocketAddr::from((dst, port)), PROBE_TIMEOUT)
        })?
        .ok()
        .map(|mut s| {
            s.set_read_timeout(Some(PROBE_TIMEOUT)).ok();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).is_ok()
        }),
        Protocol::Udp => in_netns(&ns, move || {
            let any: IpAddr = if dst.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let s = UdpSocket::bind((any, 0))?;
            s.connect((dst, port))?;
            s.set_read_timeout(Some(PROBE_TIMEOUT / 3))?;
            // Up to three tries: a first datagram can be lost to ARP resolution.
            for _ in 0..3 {
                s.send(b"ping")?;
                let mut buf = [0u8; 16];
                if let Ok(n) = s.recv(&mut buf) {
                    return Ok(&buf[..n] == b"ping");
                }
            }
            Ok::<bool, std::io::Error>(false)
        })?
        .ok(),
        Protocol::Sctp => None,
    };
    Ok(r.unwrap_or(false))
}

/// One probe of a matrix: (from, to, port, protocol).
pub type Flow = (String, String, u16, Protocol);

/// Probe every flow, `parallel` at a time; `namespaces` and `addrs` name sources and
/// destinations. A probe that cannot run (a namespace that cannot be entered) is an error.
pub fn measure(
    flows: &[Flow],
    namespaces: &BTreeMap<String, String>,
    addrs: &BTreeMap<String, Ipv4Addr>,
    parallel: usize,
) -> Result<BTreeMap<Flow, bool>, LabError> {
    let mut out = BTreeMap::new();
    for chunk in flows.chunks(parallel.max(1)) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|f| {
                let ns = namespaces[&f.0].clone();
                let dst = IpAddr::V4(addrs[&f.1]);
                let (port, proto) = (f.2, f.3);
                std::thread::spawn(move || try_probe(&ns, dst, port, proto))
            })
            .collect();
        for (f, h) in chunk.iter().zip(handles) {
            let verdict = h
                .join()
                .map_err(|_| LabError::Probe(format!("the probe of {f:?} panicked")))??;
            out.insert(f.clone(), verdict);
        }
    }
    Ok(out)
}
