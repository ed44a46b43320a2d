//! Once a second: every replica's bytes sent to agents (its counter), RSS and CPU time, and
//! this process's (the agents and the checker's model), from `/proc` and `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::faults::Shared;
use crate::replicas::sum;

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the churn started.
    pub t: f64,
    /// By replica id (0: this process, the agents).
    pub rss_bytes: BTreeMap<u64, u64>,
    pub cpu_seconds: BTreeMap<u64, f64>,
    /// Bytes each replica has sent to agents since it started (`palisade_sync_bytes_sent_total`).
    pub sent_bytes: BTreeMap<u64, f64>,
}

/// Resident set size and CPU time (user + system) of a process.
pub fn usage(pid: u32) -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some((rss_pages * 4096, (utime + stime) / ticks))
}

/// Sample until `stop`, every `every`; times from `started`.
pub async fn run(
    replicas: Shared,
    started: Instant,
    every: Duration,
    stop: CancellationToken,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (handle, pids) = {
            let r = replicas.lock().expect("replicas");
            let pids: Vec<(u64, u32)> = r
                .ids()
                .into_iter()
                .filter_map(|id| Some((id, r.pid(id)?)))
                .collect();
            (r.handle(), pids)
        };
        let t = started.elapsed().as_secs_f64();
        let sample = tokio::task::spawn_blocking(move || {
            let mut s = Sample {
                t,
                rss_bytes: BTreeMap::new(),
                cpu_seconds: BTreeMap::new(),
                sent_bytes: BTreeMap::new(),
            };
            for (id, pid) in pids.into_iter().chain([(0, std::process::id())]) {
                if let Some((rss, cpu)) = usage(pid) {
                    s.rss_bytes.insert(id, rss);
                    s.cpu_seconds.insert(id, cpu);
                }
                if id > 0 {
                    let page = handle.metrics(id);
                    if !page.is_empty() {
                        s.sent_bytes
                            .insert(id, sum(&page, "palisade_sync_bytes_sent_total{"));
                    }
                }
            }
            s
        })
        .await;
        if let Ok(s) = sample {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_size_and_has_run() {
        let (rss, cpu) = super::usage(std::process::id()).unwrap();
        assert!(rss > 1 << 20);
        assert!(cpu >= 0.0);
    }
}
