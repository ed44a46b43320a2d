//! Tests of replica processes stop by themselves: every request to a replica is bounded,
//! and past a limit the replicas are killed, their logs printed and the test process
//! aborted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::WAIT;

/// The longest a test of replicas may run: past it, the replicas' logs are printed and the
/// test process aborts (a hang fails at once, with what the replicas said, instead of holding
/// CI until its own limit). `PALISADE_TEST_LIMIT` (seconds) sets another.
fn limit() -> Duration {
    std::env::var("PALISADE_TEST_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs)
}

/// Once [`limit`] has passed (unless dropped first): kills the replicas still running, prints
/// their logs and aborts the test process.
pub struct Watchdog {
    done: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    /// The replicas' process ids, by replica id.
    pub pids: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, u32>>>,
}

impl Watchdog {
    pub fn start(logs: PathBuf) -> Watchdog {
        let done = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let pids: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, u32>>> = Default::default();
        let d = done.clone();
        let running = pids.clone();
        std::thread::spawn(move || {
            let (lock, cvar) = &*d;
            let limit = limit();
            let (finished, _) = cvar
                .wait_timeout_while(lock.lock().unwrap(), limit, |f| !*f)
                .unwrap();
            if !*finished {
                for pid in running.lock().unwrap().values() {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                // Straight to the file descriptor: the test harness captures `eprintln!`.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "a test of replicas ran longer than {limit:?}: aborting\n{}",
                    log_tails(&logs)
                );
                std::process::abort();
            }
        });
        Watchdog { done, pids }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.done;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
}

/// The last lines of every replica's log in `dir`.
fn log_tails(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for p in logs {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {} (last 40 lines)\n", p.display()));
        for l in &lines[lines.len().saturating_sub(40)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// `call`, or a panic naming `what` and showing the replicas' logs if it does not answer
/// within [`WAIT`] (a request to a replica never waits unbounded).
pub async fn bounded<T>(
    dir: &std::path::Path,
    what: &str,
    call: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(WAIT, call).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {WAIT:?}\n{}", log_tails(dir)),
    }
}
