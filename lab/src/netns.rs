//! Network namespaces from the outside: `ip` commands, sysctls inside a namespace, and running
//! a closure on a thread that has entered one (sockets keep the namespace they were made in,
//! so a socket made there can be used from any thread afterwards).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use crate::LabError;

/// Run `ip ARGS`; its stderr is the error.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LabError::Command(format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(LabError::Command(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `ip -n NS ARGS`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Write `value` to `/proc/sys/<key>` (slashes) as seen inside `ns`.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{key}");
    let v = value.to_string();
    in_netns(ns, move || std::fs::write(&path, v))?
        .map_err(|e| LabError::Command(format!("sysctl {key}={value} in {ns}: {e}")))
}

/// Names of the network namespaces `ip netns` knows.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Run `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LabError> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| LabError::Command(format!("open {path}: {e}")))?;
    let name = ns.to_string();
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace file we hold open; only this thread moves.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(LabError::Command(format!(
                "setns into {name}: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| LabError::Command(format!("a thread in {ns} panicked")))?
}
