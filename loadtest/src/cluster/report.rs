//! What a scenario measured, computed after the run from the changes the store acknowledged
//! and every agent's recorded installs: change → every affected agent acked (all changes,
//! and those clear of any fault), the realized lag over time, and the report as JSON or a
//! table.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use super::check::CheckReport;
use super::churn::Op;
use super::faults::Event;
use super::sample::Sample;
use crate::compile::{percentiles, Percentiles};
use crate::fleet::Install;

/// One acknowledged change.
pub struct ChangeRecord {
    pub op: Op,
    pub sent: Instant,
    pub acked: Instant,
    /// Committed at a revision in `(after, at]`.
    pub after: u64,
    pub at: u64,
    /// Nodes whose slice it changed.
    pub nodes: Vec<String>,
}

/// A change's outcome: when every affected agent held it.
pub struct Outcome {
    pub sent_s: f64,
    /// `None`: some affected agent never acked it (or a later version).
    pub done_s: Option<f64>,
    pub commit_ms: f64,
}

/// When every change was held by every agent it affected (times since `started`).
pub fn outcomes(
    changes: &[ChangeRecord],
    installs: &HashMap<String, Vec<Install>>,
    started: Instant,
) -> Vec<Outcome> {
    let secs = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
    changes
        .iter()
        .map(|c| {
            let mut done = Some(c.acked);
            for n in &c.nodes {
                let first = installs
                    .get(n)
                    .and_then(|is| is.iter().find(|i| i.version > c.after).map(|i| i.at));
                done = match (done, first) {
                    (Some(d), Some(f)) => Some(d.max(f)),
                    _ => None,
                };
            }
            Outcome {
                sent_s: secs(c.sent),
                done_s: done.map(secs),
                commit_ms: (c.acked - c.sent).as_secs_f64() * 1e3,
            }
        })
        .collect()
}

/// Whether a change's life (sent to done; never done: to the end) overlaps a fault or the
/// `settle` seconds after one.
pub fn near_fault(o: &Outcome, faults: &[Event], settle: f64) -> bool {
    let done = o.done_s.unwrap_or(f64::INFINITY);
    faults
        .iter()
        .any(|f| o.sent_s <= f.ended_s + settle && done >= f.at_s - 0.01)
}

/// The realized lag every `step` seconds: how long the oldest change not yet held by every
/// affected agent has waited (0 when none waits).
pub fn lag_series(outcomes: &[Outcome], until: f64, step: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut t = 0.0;
    while t <= until {
        let lag = outcomes
            .iter()
            .filter(|o| o.sent_s <= t && o.done_s.is_none_or(|d| d > t))
            .map(|o| t - o.sent_s)
            .fold(0.0, f64::max);
        out.push((t, lag * 1e3));
        t += step;
    }
    out
}

#[derive(Serialize)]
pub struct Latency {
    pub changes: usize,
    /// Changes some affected agent never acked.
    pub never_acked: usize,
    pub ms: Percentiles,
}

pub fn latency<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Latency {
    let mut ms = Vec::new();
    let mut never = 0;
    let mut n = 0;
    for o in outcomes {
        n += 1;
        match o.done_s {
            Some(d) => ms.push((d - o.sent_s) * 1e3),
            None => never += 1,
        }
    }
    Latency {
        changes: n,
        never_acked: never,
        ms: percentiles(ms),
    }
}

/// Where the time of a change goes, by stage (milliseconds, bucket bounds for the
/// replicas' histograms).
#[derive(Serialize, Default)]
pub struct Stages {
    pub stages: BTreeMap<String, crate::failover::Staleness>,
    /// The agents' dataplane installs during the churn (measured here, exact).
    pub agent_apply_ms: Option<Percentiles>,
}

#[derive(Serialize)]
pub struct ClusterReport {
    /// Where the objects came from.
    pub source: super::feed::Source,
    pub replicas: usize,
    pub agents: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub duration_seconds: f64,
    pub rate_per_second: f64,
    /// Objects loaded before the agents started (through the store; or from the Kubernetes
    /// API: from starting the replicas to the leader's lists committed), how long it took.
    pub load_seconds: f64,
    /// From starting the agents to every one holding its slice.
    pub initial_sync_seconds: f64,
    /// This process's RSS growth from starting the agents to their initial sync, per agent.
    pub memory_per_agent_bytes: u64,
    pub changes_by_op: BTreeMap<String, usize>,
    /// Attempts to apply a change whose answer was lost (faults).
    pub lost_answers: u64,
    /// From sending a change to the store to its acknowledgement (committed and applied on
    /// the leader), or writing it to the Kubernetes API to a replica holding it,
    /// milliseconds.
    pub change_to_commit_ms: Percentiles,
    /// From sending a change to every affected agent acking it.
    pub change_to_acked: Latency,
    /// The same, for changes clear of any fault (sent to acked, they overlap no fault nor the
    /// 5 s after one).
    pub change_to_acked_steady: Latency,
    pub stages: Stages,
    pub faults: Vec<Event>,
    /// Peak RSS of each replica process (its last run), bytes.
    pub replica_peak_rss_bytes: BTreeMap<u64, u64>,
    pub loadtest_peak_rss_bytes: u64,
    pub check: CheckReport,
    /// Seconds to wait for quiescence after the churn (every agent at its final digest).
    pub settle_seconds: f64,
    pub plots: Vec<String>,
    #[serde(skip)]
    pub lag: Vec<(f64, f64)>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    #[serde(skip)]
    pub outcome_ms: Vec<f64>,
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

pub fn table(r: &ClusterReport) -> String {
    let mut out = format!(
        "{} replicas (processes, mTLS), {} agents, {} pods, {} namespaces, {} policies\n\
         load through {}: {:.1} s; initial sync of every agent: {:.1} s; {:.0} KiB per agent\n\
         churn: {:.0} s at {} changes/s ({} changes: {}); {} lost answers\n\
         change -> committed: p50 {:.1} ms, p99 {:.1} ms\n\
         change -> every affected agent acked: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} never)\n\
         the same clear of faults: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} changes)\n",
        r.replicas,
        r.agents,
        r.pods,
        r.namespaces,
        r.policies,
        r.source.through(),
        r.load_seconds,
        r.initial_sync_seconds,
        r.memory_per_agent_bytes as f64 / 1024.0,
        r.duration_seconds,
        r.rate_per_second,
        r.change_to_acked.changes,
        r.changes_by_op
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.lost_answers,
        r.change_to_commit_ms.p50,
        r.change_to_commit_ms.p99,
        r.change_to_acked.ms.p50,
        r.change_to_acked.ms.p99,
        r.change_to_acked.ms.max,
        r.change_to_acked.never_acked,
        r.change_to_acked_steady.ms.p50,
        r.change_to_acked_steady.ms.p99,
        r.change_to_acked_steady.ms.max,
        r.change_to_acked_steady.changes,
    );
    if !r.stages.stages.is_empty() || r.stages.agent_apply_ms.is_some() {
        out.push_str("stages (p50 / p99 ms):");
        for (name, s) in &r.stages.stages {
            let _ = write!(out, " {name} {}/{}", s.p50_at_most, s.p99_at_most);
        }
        if let Some(a) = &r.stages.agent_apply_ms {
            let _ = write!(out, " agent-apply {:.2}/{:.2}", a.p50, a.p99);
        }
        out.push('\n');
    }
    if !r.faults.is_empty() {
        out.push_str("faults:\n");
        for f in &r.faults {
            let _ = writeln!(out, "  {}", super::faults::describe(f));
        }
    }
    for (id, rss) in &r.replica_peak_rss_bytes {
        let _ = writeln!(out, "replica {id} peak RSS: {:.0} MiB", mib(*rss));
    }
    let _ = writeln!(
        out,
        "load test (agents, model) peak RSS: {:.0} MiB",
        mib(r.loadtest_peak_rss_bytes)
    );
    let _ = writeln!(
        out,
        "checker: {}",
        if r.check.passed { "PASSED" } else { "FAILED" }
    );
    for c in &r.check.checks {
        let _ = writeln!(
            out,
            "  {:<50} {:>9} checked, {} failed",
            c.name, c.checked, c.failures
        );
        for e in &c.examples {
            let _ = writeln!(out, "      {e}");
        }
    }
    for p in &r.plots {
        let _ = writeln!(out, "plot: {p}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(sent: f64, done: Option<f64>) -> Outcome {
        Outcome {
            sent_s: sent,
            done_s: done,
            commit_ms: 0.0,
        }
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_change_not_yet_held() {
        let o = [
            outcome(1.0, Some(1.5)),
            outcome(1.2, Some(3.0)),
            outcome(4.0, None),
        ];
        let lag: BTreeMap<u64, f64> = lag_series(&o, 5.0, 0.5)
            .into_iter()
            .map(|(t, l)| ((t * 10.0).round() as u64, l.round()))
            .collect();
        assert_eq!(lag[&0], 0.0);
        assert_eq!(lag[&10], 0.0);
        assert_eq!(lag[&15], 300.0); // the first is held at 1.5; the second waits since 1.2
        assert_eq!(lag[&30], 0.0);
        assert_eq!(lag[&50], 1000.0); // never held
        let l = latency(o.iter());
        assert_eq!((l.changes, l.never_acked), (3, 1));
    }
}
