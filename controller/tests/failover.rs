//! Every replica serves agents (issue: multi-address agents, resume across failover,
//! cluster-wide rollout state). Three controller replicas as real processes with mTLS, and
//! real agents (the agent library's sync client and in-memory dataplane, in this process)
//! given every replica's address: a SIGKILLed leader during a burst of applies moves its
//! agents to live replicas, which resume them with deltas; every replica answers for every
//! node; a replica cut off from its peers sheds its agents to the others; agents crowded onto
//! two replicas spread back once the third returns.

#[path = "support/replicas.rs"]
mod replicas;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_agent::{Agent, AgentConfig, ClientTls, MemoryDataplane, Phase, StateStore, Status};
use palisadectl::output::Output;
use replicas::{Netns, Options, Replicas, SHOP, WAIT};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NODES: usize = 12;

fn nodes() -> Vec<String> {
    (1..=NODES).map(|i| format!("n{i}")).collect()
}

/// Pod `i` of namespace `shop` on node n1..n12, selected by the policy in [`SHOP`].
fn pod(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: q{i}, namespace: shop, labels: {{app: web}}}}\nspec: {{nodeName: n{}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: 10.2.{}.{}}}\n",
        i % NODES + 1,
        i / 200,
        i % 200 + 1
    )
}

/// One pod per node, with the namespace and policy: every node has a slice.
fn base() -> String {
    let mut text = SHOP.to_string();
    for i in 0..NODES {
        text.push_str("---\n");
        text.push_str(&pod(i));
    }
    text
}

struct Agents {
    status: BTreeMap<String, watch::Receiver<Status>>,
    /// Every version each agent was seen to hold, in order.
    seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Agents {
    /// An agent per node, each given every replica's address.
    fn start(r: &Replicas) -> Agents {
        Agents::start_for(r, &nodes())
    }

    /// An agent for each of `nodes`, each given every replica's address.
    fn start_for(r: &Replicas, nodes: &[String]) -> Agents {
        let dir = tempfile::tempdir().unwrap();
        let certs = r.path("certs");
        let read = |f: String| std::fs::read(certs.join(f)).unwrap();
        let shutdown = CancellationToken::new();
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let mut status = BTreeMap::new();
        for node in nodes {
            let node = node.clone();
            let config = AgentConfig {
                tls: Some(ClientTls {
                    ca: read("ca.pem".into()),
                    cert: read(format!("node-{node}.pem")),
                    key: read(format!("node-{node}-key.pem")),
                    domain: None,
                }),
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
                ..AgentConfig::new(&node, &r.addrs())
            };
            let store = StateStore::open(&dir.path().join(&node)).unwrap();
            let agent = Agent::new(config, MemoryDataplane::default(), store).unwrap();
            let mut rx = agent.status();
            status.insert(node.clone(), rx.clone());
            tokio::spawn(agent.run(shutdown.clone()));
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let v = rx.borrow_and_update().version;
                    {
                        let mut seen = seen.lock().unwrap();
                        let list: &mut Vec<u64> = seen.entry(node.clone()).or_default();
                        if list.last() != Some(&v) {
                            list.push(v);
                        }
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        Agents {
            status,
            seen,
            shutdown,
            _dir: dir,
        }
    }

    fn now(&self) -> BTreeMap<String, Status> {
        self.status
            .iter()
            .map(|(n, s)| (n.clone(), s.borrow().clone()))
            .collect()
    }

    /// Wait until every agent is synced at the digest `want` names for its node.
    async fn synced_at(&self, want: &BTreeMap<String, (u64, String)>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.now();
            let done = now.iter().all(|(n, s)| {
                s.phase == Phase::Synced
                    && want
                        .get(n)
                        .is_some_and(|(v, d)| s.version == *v && s.digest.to_hex() == *d)
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agents never synced at {want:?}: {now:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// No agent's version ever went down.
    fn never_went_back(&self) {
        for (node, versions) in self.seen.lock().unwrap().iter() {
            assert!(
                versions.windows(2).all(|w| w[0] < w[1]),
                "{node} went back: {versions:?}"
            );
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Replica `id`'s answers for every node: (desired, acked, connected) — the same on every
/// replica once acks have reached it.
async fn rollout(r: &Replicas, id: u64) -> BTreeMap<String, (u64, u64, bool)> {
    let text = palisadectl::remote::nodes(
        &r.conn(id),
        &Default::default(),
        Default::default(),
        Output::Json,
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                (
                    n["desiredVersion"].as_u64().unwrap(),
                    n["ackedVersion"].as_u64().unwrap(),
                    n["connected"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

/// Why replica `id` refuses agents, as it says itself ("" when it serves them).
async fn refusing(r: &Replicas, id: u64) -> Option<String> {
    let v = r.replicas(id).await?;
    v["replicas"][0]["refusingAgents"]
        .as_str()
        .map(String::from)
}

/// Three replicas (with `opts`), the base objects applied, and an agent per node synced.
async fn synced(opts: Options) -> (Replicas, Agents, u64) {
    let r = Replicas::start_with(
        3,
        Options {
            nodes: nodes(),
            ..opts
        },
    );
    let leader = r.leader().await;
    let at = r.apply(leader, &base(), false).await.unwrap();
    let want = r.converged(at).await;
    let agents = Agents::start(&r);
    agents.synced_at(&want).await;
    (r, agents, at)
}

/// Apply `text` through a live replica (round robin from `i`), retrying through the election
/// as an operator would; the revision.
async fn apply_retrying(r: &Replicas, i: usize, text: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    let mut tries = 0;
    loop {
        let alive = r.alive();
        let via = alive[(i + tries) % alive.len()];
        match r.apply(via, text, false).await {
            Ok(rev) => return rev,
            Err(e) => assert!(Instant::now() < deadline, "no apply goes through: {e}"),
        }
        tries += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_follow_a_killed_leader_to_live_replicas_and_resume_with_deltas() {
    let (mut r, agents, at) = synced(Options::default()).await;
    let leader = r.leader().await;
    // Agents spread over the replicas (by node name), so the leader has some.
    let on = |a: &Agents, id: u64| -> Vec<String> {
        a.now()
            .into_iter()
            .filter(|(_, s)| s.controller == r.addr(id))
            .map(|(n, _)| n)
            .collect()
    };
    for id in 1..=3 {
        assert!(!on(&agents, id).is_empty(), "no agent on replica {id}");
    }
    let moved = on(&agents, leader);
    let before = agents.now();
    assert!(before.values().all(|s| s.snapshots == 1), "{before:#?}");

    // A burst of applies through every replica; the leader is SIGKILLed in the middle.
    let mut objects = base();
    let mut last = at;
    for i in NODES..NODES + 30 {
        if i == NODES + 10 {
            r.kill(leader);
        }
        last = apply_retrying(&r, i, &pod(i)).await.max(last);
        objects.push_str("---\n");
        objects.push_str(&pod(i));
    }
    let want = r.converged(last).await;
    agents.synced_at(&want).await;

    // Every agent holds what a fresh compile of the final objects gives its node.
    let fresh = palisadectl::load::parse_sources(&[("all.yaml".into(), objects)], "default");
    assert!(fresh.errors.is_empty(), "{:?}", fresh.errors);
    let engine = fresh.engine();
    let after = agents.now();
    for (node, s) in &after {
        assert_eq!(s.digest, engine.slice(node).digest(), "{node}");
        assert_ne!(s.controller, r.addr(leader), "{node} is on a live replica");
        // Resumed with deltas: the only snapshot each agent got is its first.
        assert_eq!(s.snapshots, 1, "{node} got a snapshot on resuming: {s:?}");
    }
    for node in &moved {
        assert!(after[node].moves >= 1, "{node}: {:?}", after[node]);
    }
    agents.never_went_back();

    // Every surviving replica answers for every node, wherever its agent is, and agrees.
    let mut answers = Vec::new();
    for id in r.alive() {
        let (report, realized) =
            palisadectl::remote::wait(&r.conn(id), Some(last), Duration::from_secs(20), true)
                .await
                .unwrap();
        assert!(realized, "replica {id}: {report}");
        let deadline = Instant::now() + WAIT;
        loop {
            let nodes = rollout(&r, id).await;
            let complete = nodes.len() == NODES
                && nodes
                    .values()
                    .all(|(desired, acked, connected)| desired == acked && *connected);
            if complete {
                answers.push(nodes);
                break;
            }
            assert!(Instant::now() < deadline, "replica {id}: {nodes:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(answers[0], answers[1]);
    // `node` and `explain` too: each replica answers from its own applied state.
    let mut nodes_and_flows = Vec::new();
    for id in r.alive() {
        let conn = r.conn(id);
        let node = palisadectl::remote::node(
            &conn,
            "n3",
            Some(Default::default()),
            Default::default(),
            true,
        )
        .await
        .unwrap();
        let mut node: Value = serde_json::from_str(&node).unwrap();
        // Seconds since the oldest unacked change: 0 on both once in sync, but a clock.
        node["lagSeconds"] = Value::Null;
        // Each replica says how fresh its own answer is.
        node["freshness"] = Value::Null;
        let flow = palisade_proto::v1::ExplainFlowRequest {
            source: "shop/q1".into(),
            destination: "shop/q2".into(),
            port: 80,
            protocol: palisade_proto::v1::Protocol::Tcp as i32,
            ..Default::default()
        };
        let (explained, allowed) = palisadectl::remote::explain(&conn, flow, true)
            .await
            .unwrap();
        assert!(allowed, "{explained}");
        nodes_and_flows.push((node, explained));
    }
    assert_eq!(nodes_and_flows[0], nodes_and_flows[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_peers_sheds_its_agents_to_the_others() {
    let (r, agents, _) = synced(Options {
        netns: Some(Netns::unique()),
        ..Options::default()
    })
    .await;
    let leader = r.leader().await;
    let cut = (1..=3).find(|i| *i != leader).unwrap();
    let shed: Vec<String> = agents
        .now()
        .into_iter()
        .filter(|(_, s)| s.controller == r.addr(cut))
        .map(|(n, _)| n)
        .collect();
    assert!(!shed.is_empty(), "agents on replica {cut}");

    r.partition(cut);
    // It says why it refuses agents, and they all move to the others.
    let deadline = Instant::now() + WAIT;
    loop {
        let refusing = refusing(&r, cut).await.unwrap_or_default();
        let moved = agents
            .now()
            .values()
            .all(|s| s.controller != r.addr(cut) && s.phase == Phase::Synced);
        if !refusing.is_empty() && moved {
            assert!(refusing.contains("no leader"), "{refusing}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica {cut} refusing: {refusing:?}; agents: {:#?}",
            agents.now()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The others keep them current, with deltas.
    let others: Vec<u64> = (1..=3).filter(|i| *i != cut).collect();
    let leader = r.leader_among(&others).await;
    let next = r.apply(leader, &pod(NODES + 1), false).await.unwrap();
    let want = r.converged_among(&others, next).await;
    agents.synced_at(&want).await;
    for (node, s) in agents.now() {
        assert_eq!(s.snapshots, 1, "{node}: {s:?}");
    }
    agents.never_went_back();

    // Healed, it serves agents again, and answers for every node again (its peers' tables
    // were dropped while they were unreachable: it asks for them whole).
    r.heal(cut);
    let deadline = Instant::now() + WAIT;
    loop {
        let refusing = refusing(&r, cut).await;
        let nodes = rollout(&r, cut).await;
        let complete = nodes.len() == NODES
            && nodes
                .values()
                .all(|(desired, acked, connected)| desired == acked && *connected);
        if refusing.as_deref() == Some("") && complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusing: {refusing:?}; nodes: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `get` of pod `q{i}` from replica `id`: whether it is held, and the answer's freshness
/// (`None`: a consistent read the replica refused, naming why).
async fn held_pod(r: &Replicas, id: u64, i: usize, consistent: bool) -> Option<(bool, Value)> {
    let read = palisadectl::fresh::ReadArgs { consistent };
    let got = palisadectl::get::get(
        &r.conn(id),
        "pod",
        &[format!("shop/q{i}")],
        "shop",
        read,
        Output::Json,
    )
    .await;
    let got = match got {
        Ok(g) => g,
        Err(e) if consistent => {
            let e = e.to_string();
            assert!(e.contains("cannot confirm a consistent read"), "{e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let v: Value = serde_json::from_str(&got.text).unwrap();
    Some((got.all_found, v["freshness"].clone()))
}

/// A leader frozen with SIGSTOP keeps its connections open: its agents once waited their 35 s
/// silence timeout, and, resumed, it answered from old state for a moment. Now its agents
/// leave it after three 2 s keepalives missed, and once resumed it never calls an answer that
/// lacks what its group committed meanwhile current; a consistent read from it is refused or
/// holds that change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_left_in_seconds_and_never_calls_old_state_current() {
    let (mut r, agents, _) = synced(Options::default()).await;
    let leader = r.leader().await;
    let on_leader = agents
        .now()
        .values()
        .filter(|s| s.controller == r.addr(leader))
        .count();
    assert!(on_leader > 0, "agents on replica {leader}");
    let (fresh, _) = held_pod(&r, leader, 0, false).await.unwrap();
    assert!(fresh, "q0 is held");

    r.pause(leader, true);
    let paused = Instant::now();
    let moved = loop {
        let now = agents.now();
        if now
            .values()
            .all(|s| s.controller != r.addr(leader) && s.phase == Phase::Synced)
        {
            break paused.elapsed();
        }
        assert!(
            paused.elapsed() < Duration::from_secs(20),
            "agents still on the paused replica {leader}: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("{on_leader} agents left the paused leader after {moved:?}");
    assert!(moved < Duration::from_secs(15), "{moved:?}");

    // The others commit a change while it is frozen; agents get it.
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let new = r.leader_among(&others).await;
    let added = NODES + 1;
    let next = r.apply(new, &pod(added), false).await.unwrap();
    let want = r.converged_among(&others, next).await;
    agents.synced_at(&want).await;

    // Resumed: every answer either holds the change or says it is not current.
    r.pause(leader, false);
    let resumed = Instant::now();
    let (mut stale_seen, mut refused) = (0, 0);
    loop {
        let (held, f) = held_pod(&r, leader, added, false).await.unwrap();
        let current = f["current"].as_bool().unwrap();
        assert!(held || !current, "old state called current: {f}");
        stale_seen += usize::from(!current);
        match held_pod(&r, leader, added, true).await {
            Some((held, f)) => assert!(held, "a consistent read without the change: {f}"),
            None => refused += 1,
        }
        if held && current {
            break;
        }
        assert!(resumed.elapsed() < WAIT, "never current again: {f}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "current again after {:?}; {stale_seen} answers said not current, {refused} consistent reads refused",
        resumed.elapsed()
    );
    agents.never_went_back();
}

/// How many agents stream from each replica, by the address each agent says it uses.
fn spread(r: &Replicas, agents: &Agents) -> BTreeMap<u64, usize> {
    let mut on: BTreeMap<u64, usize> = r.ids().into_iter().map(|id| (id, 0)).collect();
    for s in agents.now().values().filter(|s| s.phase == Phase::Synced) {
        if let Some(id) = r
            .ids()
            .into_iter()
            .find(|id| s.controller.contains(&r.addr(*id)))
        {
            *on.get_mut(&id).unwrap() += 1;
        }
    }
    on
}

/// Wait until the agents' spread over the replicas satisfies `done`; the spread.
async fn spread_until(
    r: &Replicas,
    agents: &Agents,
    what: &str,
    done: impl Fn(&BTreeMap<u64, usize>) -> bool,
) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let on = spread(r, agents);
        if done(&on) {
            return on;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: agents per replica {on:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_crowded_onto_two_replicas_spread_back_once_the_third_returns() {
    // Enough agents to be over the tolerance (a tenth of the share, at least 10).
    let many: Vec<String> = (1..=90).map(|i| format!("m{i}")).collect();
    let mut r = Replicas::start_with(
        3,
        Options {
            nodes: many.clone(),
            args: vec!["--rebalance-after=1s".into()],
            ..Options::default()
        },
    );
    let leader = r.leader().await;
    r.apply(leader, &base(), false).await.unwrap();
    let agents = Agents::start_for(&r, &many);
    let on = spread_until(&r, &agents, "every agent streaming", |on| {
        on.values().sum::<usize>() == 90
    })
    .await;
    // A follower goes (no election), and its agents move to the two others.
    let victim = r.ids().into_iter().find(|id| *id != leader).unwrap();
    assert!(on[&victim] > 0, "{on:?}");
    r.kill(victim);
    spread_until(&r, &agents, "agents off the killed replica", |on| {
        on[&victim] == 0 && on.values().sum::<usize>() == 90
    })
    .await;
    r.restart(victim);
    // 45 and 45 against a share of 30 (tolerance 10): each sends some to the one back.
    let on = spread_until(&r, &agents, "agents back on the restarted replica", |on| {
        on[&victim] >= 10 && on.values().sum::<usize>() == 90 && on.values().all(|n| *n <= 40)
    })
    .await;
    eprintln!("agents per replica after rebalancing: {on:?}");
    agents.never_went_back();
    // Only rebalancing sends agents back: they never move off a working replica by themselves.
    assert!(
        r.ids()
            .into_iter()
            .any(|id| r.log(id).contains("more than its share of the agents")),
        "no replica says it sent agents away"
    );
}
