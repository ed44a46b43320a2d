//! The bpffs directory under which the agent pins its maps and TC links, so that they outlive
//! the agent: a restarted agent re-adopts them, and a stopped one leaves policy enforced.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `statfs` type of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `dir` is on a bpffs.
pub fn is_bpffs(dir: &Path) -> std::io::Result<bool> {
    let c = c_path(dir)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Make `dir` a bpffs directory: create it, and mount a bpffs on it unless it is on one
/// already. A bpffs mounted here lives in this process's mount namespace: under
/// `ip netns exec` (which gives every command its own), pins on it vanish when the agent
/// exits, so pass a directory on a bpffs mounted beforehand where pins must outlive the agent.
pub fn ensure(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    match is_bpffs(dir) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => return Err(format!("cannot statfs {}: {e}", dir.display())),
    }
    mount(dir).map_err(|e| {
        format!(
            "{} is not a bpffs and mounting one there failed: {e} (the eBPF dataplane needs root)",
            dir.display()
        )
    })?;
    tracing::info!(dir = %dir.display(), "mounted a bpffs");
    Ok(())
}

fn c_path(dir: &Path) -> std::io::Result<CString> {
    CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// Mount a new bpffs on `dir` (an existing directory).
pub fn mount(dir: &Path) -> std::io::Result<()> {
    let target = c_path(dir)?;
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Detach whatever is mounted on `dir` (lazily: it goes once nothing uses it). Nothing
/// mounted there is not an error worth reporting.
pub fn unmount(dir: &Path) {
    if let Ok(c) = c_path(dir) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}
