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
    /// Each replica's `palisade_stage_seconds` buckets since it started.
    #[serde(skip)]
    pub stages: BTreeMap<u64, StageBuckets>,
    /// Each replica's process id (a new one: it restarted, its counters began again).
    #[serde(skip)]
    pub pids: BTreeMap<u64, u32>,
}

/// Cumulative bucket counts by stage, then by upper bound in microseconds (+Inf: `u64::MAX`).
pub type StageBuckets = BTreeMap<String, BTreeMap<u64, f64>>;

/// The `palisade_stage_seconds` buckets of a metrics page.
pub fn stage_buckets(page: &str) -> StageBuckets {
    let mut out = StageBuckets::new();
    for l in page.lines() {
        let Some(rest) = l.strip_prefix("palisade_stage_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        let (Some(stage), Some(le), Ok(value)) = (label("stage"), label("le"), value.parse())
        else {
            continue;
        };
        let le = le
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map_or(u64::MAX, |v| (v * 1e6).round() as u64);
        out.entry(stage).or_default().insert(le, value);
    }
    out
}

/// What every replica's stage histograms observed over the samples, summed: increments
/// between samples, and after a restart (counts reset) everything since.
pub fn stage_totals(samples: &[Sample]) -> StageBuckets {
    let mut totals = StageBuckets::new();
    let mut last: BTreeMap<u64, (&StageBuckets, Option<u32>)> = BTreeMap::new();
    for s in samples {
        for (id, now) in &s.stages {
            let pid = s.pids.get(id).copied();
            if let Some((prev, prev_pid)) = last.get(id) {
                let restarted = pid.is_some() && prev_pid.is_some() && pid != *prev_pid;
                for (stage, buckets) in now {
                    let before = prev.get(stage);
                    let count = |b: Option<&BTreeMap<u64, f64>>| {
                        b.and_then(|b| b.get(&u64::MAX)).copied().unwrap_or(0.0)
                    };
                    let reset = restarted || count(Some(buckets)) < count(before);
                    let total = totals.entry(stage.clone()).or_default();
                    for (le, v) in buckets {
                        let was = if reset {
                            0.0
                        } else {
                            before.and_then(|b| b.get(le)).copied().unwrap_or(0.0)
                        };
                        *total.entry(*le).or_default() += (v - was).max(0.0);
                    }
                }
            }
            last.insert(*id, (now, pid));
        }
    }
    totals
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
                stages: BTreeMap::new(),
                pids: BTreeMap::new(),
            };
            for (id, pid) in pids.into_iter().chain([(0, std::process::id())]) {
                s.pids.insert(id, pid);
                if let Some((rss, cpu)) = usage(pid) {
                    s.rss_bytes.insert(id, rss);
                    s.cpu_seconds.insert(id, cpu);
                }
                if id > 0 {
                    let page = handle.metrics(id);
                    if !page.is_empty() {
                        s.sent_bytes
                            .insert(id, sum(&page, "palisade_sync_bytes_sent_total{"));
                        s.stages.insert(id, stage_buckets(&page));
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
    use super::*;

    fn sample(id: u64, pid: u32, page: &str) -> Sample {
        Sample {
            t: 0.0,
            rss_bytes: BTreeMap::new(),
            cpu_seconds: BTreeMap::new(),
            sent_bytes: BTreeMap::new(),
            stages: [(id, stage_buckets(page))].into(),
            pids: [(id, pid)].into(),
        }
    }

    #[test]
    fn stage_totals_add_increments_and_survive_restarts() {
        let page = |a: u32, b: u32| {
            format!(
                "palisade_stage_seconds_bucket{{le=\"0.001\",stage=\"ack\"}} {a}\n\
                 palisade_stage_seconds_bucket{{le=\"+Inf\",stage=\"ack\"}} {b}\n"
            )
        };
        let samples = [
            sample(1, 10, &page(5, 10)),
            sample(1, 10, &page(7, 13)),
            // Restarted: counts start again.
            sample(1, 11, &page(1, 2)),
            // Restarted and already past the old counts (a log replayed): still all new.
            sample(1, 12, &page(9, 20)),
        ];
        let t = stage_totals(&samples);
        assert_eq!(t["ack"][&1000], 2.0 + 1.0 + 9.0);
        assert_eq!(t["ack"][&u64::MAX], 3.0 + 2.0 + 20.0);
    }

    #[test]
    fn this_process_has_a_size_and_has_run() {
        let (rss, cpu) = super::usage(std::process::id()).unwrap();
        assert!(rss > 1 << 20);
        assert!(cpu >= 0.0);
    }
}
