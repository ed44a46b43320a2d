//! Whole runs drawn from a seed: a workload of pod changes on three nodes under a policy,
//! and faults (message loss and delay by kind, replicas cut off, crashed and restarted,
//! agents' streams ended) at random ticks; then every fault heals and the run must converge
//! with nothing diverging on the way.

use palisade_policy::model::{Command, ObjKey};

use crate::net::{Faults, Kind};
use crate::Cluster;

pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The namespace and the policy every workload runs under: web pods take port 80 from api
/// pods only.
pub fn base() -> Vec<Command> {
    parse(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 80}]}]}\n",
    )
}

/// Pod `shop/p<i>` (web or api by `web`) on `node` at 10.0.<i/200>.<i%200+1>.
pub fn pod(i: u64, web: bool, node: &str) -> Vec<Command> {
    let app = if web { "web" } else { "api" };
    parse(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: 10.0.{}.{}}}\n",
        i / 200,
        i % 200 + 1
    ))
}

pub fn delete_pod(i: u64) -> Command {
    Command::DeletePod(ObjKey::new("shop", &format!("p{i}")))
}

fn parse(text: &str) -> Vec<Command> {
    palisade_policy::manifest::parse("harness", text, "default")
        .upserts()
        .expect("the harness's manifests are valid")
}

/// What a run came to.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    /// Proposals the group took during the run.
    pub proposed: usize,
    pub crashes: usize,
    pub cuts: usize,
    /// Ticks from healing to convergence.
    pub settled_in: u64,
}

/// One run of `ticks` ticks of faults from `seed`, then healing; what diverged, if anything.
pub fn run(seed: u64, ticks: u64) -> Result<Outcome, String> {
    let mut c = Cluster::new(seed, 3, &NODES);
    let fail = |c: &Cluster, why: String| {
        Err(format!(
            "seed {seed}: {why}; divergences: {:?}\n{}",
            c.ledger.divergences,
            c.describe()
        ))
    };
    if !c.run_until(500, |c| c.leader().is_some()) {
        return fail(&c, "no leader within 500 ticks".into());
    }
    while c.propose(base()).is_err() {
        c.tick();
    }
    let rng = c.net.rng();
    let raft = Faults {
        drop: rng.f64() * 0.2,
        delay: rng.u64(0..4),
    };
    let sync = Faults {
        drop: rng.f64() * 0.05,
        delay: rng.u64(0..3),
    };
    let acks = Faults {
        drop: rng.f64() * 0.3,
        delay: rng.u64(0..4),
    };
    c.net.set_faults(Kind::Raft, raft);
    c.net.set_faults(Kind::Sync, sync);
    c.net.set_faults(Kind::Acks, acks);
    let mut out = Outcome {
        seed,
        proposed: 0,
        crashes: 0,
        cuts: 0,
        settled_in: 0,
    };
    let mut next_pod = 0u64;
    for _ in 0..ticks {
        let roll = c.net.rng().u32(0..1000);
        match roll {
            0..100 => {
                let rng = c.net.rng();
                let command = if next_pod > 0 && rng.u8(0..4) == 0 {
                    vec![delete_pod(rng.u64(0..next_pod))]
                } else {
                    let node = NODES[rng.usize(0..NODES.len())];
                    let web = rng.bool();
                    next_pod += 1;
                    pod(next_pod - 1, web, node)
                };
                if c.propose(command).is_ok() {
                    out.proposed += 1;
                }
            }
            100..110 => {
                let live = c.live();
                let id = live[c.net.rng().usize(0..live.len())];
                c.isolate(id);
                out.cuts += 1;
            }
            110..130 => c.net.heal(),
            130..138 => {
                let live = c.live();
                if live.len() > 1 {
                    let id = live[c.net.rng().usize(0..live.len())];
                    c.crash(id);
                    out.crashes += 1;
                }
            }
            138..170 => {
                let crashed = c.crashed();
                if !crashed.is_empty() {
                    let id = crashed[c.net.rng().usize(0..crashed.len())];
                    c.restart(id);
                }
            }
            170..180 => {
                let node = NODES[c.net.rng().usize(0..NODES.len())].into();
                c.disconnect(&node);
            }
            _ => {}
        }
        c.tick();
        if !c.ledger.divergences.is_empty() {
            return fail(&c, "diverged".into());
        }
    }
    c.net.heal();
    c.net.calm();
    for id in c.crashed() {
        c.restart(id);
    }
    let healed = c.net.now();
    if !c.run_until(3_000, Cluster::converged) {
        return fail(&c, "not converged 3,000 ticks after healing".into());
    }
    out.settled_in = c.net.now() - healed;
    if !c.ledger.divergences.is_empty() {
        return fail(&c, "diverged".into());
    }
    Ok(out)
}
