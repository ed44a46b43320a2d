//! What every caller of replica processes needs besides the group: ports, the binaries'
//! directory, a metrics page, a process stopped and reaped.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Ports [`free_port`] handed out in this process: each is handed out once (the listener that
/// proved it free is closed at once, so a second draw could find it free again).
static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free TCP port on `host` below the kernel's ephemeral range, never one this process was
/// given before. A replica restarts on its port, and a port from that range could meanwhile
/// be handed to any listener on port 0 or any outgoing connection, which a test would then
/// talk to instead.
pub fn free_port(host: IpAddr) -> std::io::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12000 {
        (10000, low)
    } else {
        (low.max(1024), 65535)
    };
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..10_000 {
        let port = fastrand::u16(from..to);
        if !given.contains(&port) && std::net::TcpListener::bind((host, port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port on {host} in {from}..{to}"),
    ))
}

/// The directory of the running executable (where cargo puts the other binaries; one level
/// up from `target/*/deps`, where test binaries run).
pub fn beside_executable() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// GET `path` from `addr` (HTTP/1.0, 5 s at most to read); the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, b)| b.to_string()))
}

/// The sum of the samples of `name` (a full series name with labels, or a prefix ending in
/// `{`) in a Prometheus text page.
pub fn sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Stop `c` and reap it: SIGTERM and up to `grace` for it to end, then SIGKILL (a zero
/// `grace`: SIGKILL at once).
pub fn stop(mut c: Child, grace: Duration) {
    // Ended and reaped already (its PID may be another process's now): nothing to signal.
    if matches!(c.try_wait(), Ok(Some(_))) {
        return;
    }
    if !grace.is_zero() {
        // SAFETY: a plain signal to a child this process started and has not reaped, so its
        // PID is still this child's.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < grace {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = c.kill();
    let _ = c.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_below_the_ephemeral_range_and_free() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let lo = IpAddr::from([127, 0, 0, 1]);
        let port = free_port(lo).unwrap();
        if low > 12000 {
            assert!(port < low, "{port} is in the ephemeral range from {low}");
        }
        std::net::TcpListener::bind((lo, port)).unwrap();
    }

    #[test]
    fn a_port_is_handed_out_once_in_a_process() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let ports: Vec<u16> = (0..3000).map(|_| free_port(lo).unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
    }

    #[test]
    fn stop_ends_a_child_by_sigterm_within_its_grace_and_reaps_it() {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let started = Instant::now();
        stop(child, Duration::from_secs(30));
        // `sleep` ends on SIGTERM at once: the grace was not waited out.
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
