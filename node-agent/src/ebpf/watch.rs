//! The thread that keeps the programs on the pod interfaces: it rereads the routing table
//! whenever the kernel announces a route or link change (NETLINK_ROUTE multicast), and at
//! least every second, and drains the deny-event ring buffer into the log.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use palisade_ebpf_common::{DenyEvent, DENY_FAIL_CLOSED, DENY_FAMILY, DENY_SPOOFED, DIR_INGRESS};
use tracing::{info, warn};

use super::attach::Attacher;
use super::routes;

/// Deny events logged per second at most (the rest are only counted).
const EVENTS_LOGGED_PER_SECOND: u32 = 50;

/// A netlink socket subscribed to IPv4 route and link changes, with a 1 s receive timeout.
fn route_events() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a fresh descriptor, owned right away.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_ROUTE) as u32;
        if libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok(fd)
    }
}

/// Wait for a change notice or the timeout; drain whatever else is queued.
fn wait(sock: Option<&OwnedFd>) {
    let Some(sock) = sock else {
        std::thread::sleep(Duration::from_millis(200));
        return;
    };
    let mut buf = [0u8; 8192];
    // SAFETY: reading into a local buffer of the given size.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n > 0 {
        // A burst of changes (a pod's veth and routes) comes as several messages.
        std::thread::sleep(Duration::from_millis(5));
        while unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
    }
}

fn read_routes() -> routes::PodInterfaces {
    // This thread's network namespace (`/proc/net` is the process's main thread's).
    match std::fs::read_to_string("/proc/thread-self/net/route") {
        Ok(t) => routes::pod_interfaces(&t),
        Err(e) => {
            warn!("cannot read /proc/net/route: {e}");
            routes::PodInterfaces::new()
        }
    }
}

/// Attach to the current pod interfaces once (adopting pinned links), then keep doing it in a
/// thread until `stop`.
pub fn start(
    mut attacher: Attacher,
    mut events: Option<RingBuf<MapData>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    attacher.sync(&read_routes(), true);
    std::thread::Builder::new()
        .name("palisade-interfaces".into())
        .spawn(move || {
            let sock = route_events()
                .map_err(|e| warn!("no route change notices ({e}); polling the routing table"))
                .ok();
            let mut window = (Instant::now(), 0u32);
            while !stop.load(Ordering::Relaxed) {
                let wanted = read_routes();
                if wanted != attacher.attached() {
                    attacher.sync(&wanted, false);
                }
                if let Some(ring) = events.as_mut() {
                    drain(ring, &mut window);
                }
                wait(sock.as_ref());
            }
        })
        .expect("spawn the interface thread")
}

fn drain(ring: &mut RingBuf<MapData>, window: &mut (Instant, u32)) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<DenyEvent>() {
            continue;
        }
        // SAFETY: the program writes whole DenyEvents; read unaligned from the ring's bytes.
        let e: DenyEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if window.0.elapsed() >= Duration::from_secs(1) {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        if window.1 > EVENTS_LOGGED_PER_SECOND {
            continue;
        }
        let reason = match e.reason {
            DENY_FAIL_CLOSED => "endpoint failed closed (slice does not fit the maps)",
            DENY_SPOOFED => "source address not routed to this pod interface",
            DENY_FAMILY => {
                // No addresses: the ethertype rides in dport, the IPv6 next header in protocol.
                info!(
                    target: "palisade::deny",
                    endpoint = %std::net::Ipv4Addr::from(e.endpoint),
                    direction = if e.direction == DIR_INGRESS { "ingress" } else { "egress" },
                    ethertype = format_args!("{:#06x}", e.dport),
                    next_header = e.protocol,
                    reason = "an address family Palisade does not enforce yet (IPv6, non-IP) to or from an isolated endpoint",
                    "denied"
                );
                continue;
            }
            _ => "no policy allows it",
        };
        info!(
            target: "palisade::deny",
            endpoint = %std::net::Ipv4Addr::from(e.endpoint),
            direction = if e.direction == DIR_INGRESS { "ingress" } else { "egress" },
            src = %std::net::Ipv4Addr::from(e.src),
            dst = %std::net::Ipv4Addr::from(e.dst),
            protocol = e.protocol,
            sport = e.sport,
            dport = e.dport,
            reason,
            "denied"
        );
    }
}
