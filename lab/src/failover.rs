//! The quick start's failover: with three controller replicas, SIGKILL the leader while real
//! connections probe an allowed and a denied flow without pause, and show that enforcement
//! never lapsed (agents keep what they hold), a new leader took over, and the agents of the
//! killed replica resumed on the others with deltas, not snapshots (the replicas' own
//! `palisade_sync_resumes_total`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::model::Protocol;

use crate::probe::{self, Flow, Servers};
use crate::{Lab, LabError};
use palisadectl::output::Output;

/// What the failover showed.
pub struct Failover {
    pub report: String,
    /// Probes whose verdict differed from the policy's during the failover.
    pub lapses: usize,
    /// Agents that resumed with a snapshot on a surviving replica.
    pub snapshots: u64,
}

/// One flow probed again and again until told to stop: (verdict, count) pairs seen.
fn keep_probing(
    lab: &Lab,
    flow: &Flow,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    let ns = lab
        .topology
        .pod(&flow.0)
        .map(|p| p.netns.clone())
        .unwrap_or_default();
    let dst = lab.addr(&flow.1);
    let (port, proto) = (flow.2, flow.3);
    std::thread::spawn(move || {
        let (mut allowed, mut denied) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            if probe::probe(&ns, dst, port, proto) {
                allowed += 1;
            } else {
                denied += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (allowed, denied)
    })
}

/// The sum of `palisade_sync_resumes_total{by="BY"}` in `metrics`.
fn resumes(metrics: &str, by: &str) -> u64 {
    let key = format!("palisade_sync_resumes_total{{by=\"{by}\"}}");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&key))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The leader replica `lab.conn` knows, once it knows one other than `except` (within
/// `bound`).
fn leader(
    lab: &Lab,
    rt: &tokio::runtime::Runtime,
    bound: Duration,
    except: Option<u64>,
) -> Option<u64> {
    let until = Instant::now() + bound;
    while Instant::now() < until {
        if let Ok(text) = rt.block_on(palisadectl::store::replicas(&lab.conn, Output::Json)) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(l) = v["leader"]
                .as_u64()
                .filter(|l| *l != 0 && Some(*l) != except)
            {
                return Some(l);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Whether every node's agent is connected (to a live replica) and holds its desired version.
fn all_synced(lab: &Lab, rt: &tokio::runtime::Runtime) -> bool {
    let Ok(text) = rt.block_on(palisadectl::remote::nodes(
        &lab.conn,
        &Default::default(),
        Default::default(),
        Output::Json,
    )) else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["nodes"].as_array().is_some_and(|nodes| {
        nodes.iter().all(|n| {
            n["connected"] == true
                && n["ackedVersion"] == n["desiredVersion"]
                && lab
                    .controllers_alive()
                    .contains(&n["replica"].as_u64().unwrap_or(0))
        })
    })
}

/// Kill the leader while probing `allowed` and `denied` (flows the policy allows and denies).
pub fn run(lab: &mut Lab, allowed: &Flow, denied: &Flow) -> Result<Failover, LabError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::Command(format!("start a runtime: {e}")))?;
    let fail = |why: String| LabError::Controller(why);
    let mut out = String::new();
    let old = leader(lab, &rt, Duration::from_secs(30), None)
        .ok_or_else(|| fail("no leader among the replicas".into()))?;
    let mut servers = Servers::new();
    for f in [allowed, denied] {
        let ns = lab
            .topology
            .pod(&f.1)
            .ok_or_else(|| LabError::Topology(format!("no pod {}", f.1)))?
            .netns
            .clone();
        servers.serve(&ns, f.2, f.3)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let probers = [
        keep_probing(lab, allowed, stop.clone()),
        keep_probing(lab, denied, stop.clone()),
    ];
    // Let the probes run on a healthy system first.
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    lab.kill_controller(old);
    let live = lab.controllers_alive();
    lab.use_replica(live[0]);
    let new = leader(lab, &rt, Duration::from_secs(30), Some(old)).ok_or_else(|| {
        let logs: Vec<String> = live
            .iter()
            .map(|r| {
                let log = lab.logs(&lab.controller_log(*r));
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "replica {r}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        fail(format!(
            "no new leader within 30 s after killing replica {old}; the others' logs:\n{}",
            logs.join("\n")
        ))
    })?;
    let elected = killed.elapsed();
    let until = Instant::now() + Duration::from_secs(60);
    while !all_synced(lab, &rt) {
        if Instant::now() > until {
            return Err(fail(
                "the agents did not all resume on the live replicas within 60 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed = killed.elapsed();
    // Keep probing a little after, then stop.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<(usize, usize)> = probers
        .into_iter()
        .map(|h| h.join().unwrap_or((0, 0)))
        .collect();
    drop(servers);
    let (mut delta, mut current, mut snapshot) = (0, 0, 0);
    for r in &live {
        let m = lab.controller_metrics(*r)?;
        delta += resumes(&m, "delta");
        current += resumes(&m, "current");
        snapshot += resumes(&m, "snapshot");
    }
    let shown = |f: &Flow| format!("{} -> {} {}/{}", f.0, f.1, f.3, f.2);
    let _ = writeln!(
        out,
        "Replica {old} (the leader) SIGKILLed. Replica {new} leads after {:.1} s; every agent \
         holds its slice from a live replica after {:.1} s.",
        elected.as_secs_f64(),
        resumed.as_secs_f64()
    );
    let lapses = counts[0].1 + counts[1].0;
    let _ = writeln!(
        out,
        "Probed without pause meanwhile: {} (allowed) {} times, {} refused; {} (denied) {} times, {} let through.",
        shown(allowed),
        counts[0].0 + counts[0].1,
        counts[0].1,
        shown(denied),
        counts[1].0 + counts[1].1,
        counts[1].0,
    );
    let _ = writeln!(
        out,
        "{}",
        if lapses == 0 {
            "Enforcement never lapsed: the agents kept enforcing what they held."
        } else {
            "ENFORCEMENT LAPSED during the failover."
        }
    );
    let _ = writeln!(
        out,
        "Agents that held a version resumed on the surviving replicas: {delta} with a delta, \
         {current} already current, {snapshot} with a snapshot (palisade_sync_resumes_total; \
         an agent of a node without pods holds nothing to resume from).\n"
    );
    if let Ok(table) = rt.block_on(palisadectl::store::replicas(&lab.conn, Output::Table)) {
        let _ = writeln!(
            out,
            "$ palisadectl replicas --controller {} --insecure\n{table}",
            lab.conn.controller.trim_start_matches("http://")
        );
    }
    Ok(Failover {
        report: out,
        lapses,
        snapshots: snapshot,
    })
}

/// Nodes without pods to add so that each of `replicas` replicas has an agent (agents spread
/// over replicas by node name), given the pods in `files`: the killed leader then has agents
/// to hand over.
pub fn standbys(files: &[(String, String)], replicas: u64) -> Result<Vec<String>, LabError> {
    let n = replicas as usize;
    let mut homes: BTreeSet<usize> = crate::lab::pods_of(files)?
        .iter()
        .map(|p| palisade_agent::client::home(&p.node, n))
        .collect();
    let mut out = Vec::new();
    for k in 1..=64 {
        if homes.len() >= n {
            break;
        }
        let name = format!("standby-{k}");
        if homes.insert(palisade_agent::client::home(&name, n)) {
            out.push(name);
        }
    }
    Ok(out)
}

/// A flow the policy allows and one it denies, between pods, among `flows` with `predicted`.
pub fn pick(
    flows: &[Flow],
    predicted: &std::collections::BTreeMap<Flow, bool>,
) -> Option<(Flow, Flow)> {
    let between_pods = |f: &&Flow| f.0 != "outside" && f.3 == Protocol::Tcp;
    let allowed = flows.iter().filter(between_pods).find(|f| predicted[*f])?;
    let denied = flows.iter().filter(between_pods).find(|f| !predicted[*f])?;
    Some((allowed.clone(), denied.clone()))
}
