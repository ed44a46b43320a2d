//! Changes on real packets: policy edits on open connections, pods coming, relabelled and
//! going, agents restarting and the controller going away.

#[path = "support.rs"]
mod support;

use std::time::Duration;

use palisade_lab::probe::{probe, Connection, Servers};
use palisade_lab::topology::PodSpec;
use palisade_lab::LabOptions;
use palisade_policy::model::Protocol::Tcp;
use support::{allowed, assert_matches, lab, lab_with, pod, policy};

fn ns() -> String {
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string()
}

fn api_and_web() -> String {
    [
        pod("shop", "web", "app: web", "node-1", "10.244.1.2", ""),
        pod("shop", "api", "app: api", "node-2", "10.244.2.2", ""),
    ]
    .join("---\n")
}

/// api accepts 8080 from pods labelled `from`.
fn api_allows(from: &str) -> String {
    policy(
        "shop",
        "api",
        &format!(
            "  podSelector: {{matchLabels: {{app: api}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: {from}}}}}}}]\n    ports: [{{protocol: TCP, port: 8080}}]\n"
        ),
    )
}

#[test]
fn a_policy_change_applies_to_open_and_new_connections_at_their_next_packet() {
    let (n, p) = (ns(), api_and_web());
    let allow = api_allows("web");
    let lab = lab(&[("ns.yaml", &n), ("pods.yaml", &p), ("policy.yaml", &allow)]);
    let api = lab.topology.pod("shop/api").unwrap().clone();
    let web = lab.topology.pod("shop/web").unwrap().clone();
    let mut servers = Servers::new();
    servers.serve(&api.netns, 8080, Tcp).unwrap();

    let mut open = Connection::open(&web.netns, api.spec.ip, 8080).unwrap();
    assert!(open.echoes(), "allowed connection works");

    // The rule goes: the open connection's next packet is checked against the new policy
    // (conntrack only remembers that a connection exists; verdicts are always current).
    lab.apply("policy.yaml", &api_allows("nobody")).unwrap();
    assert!(!open.echoes(), "the open connection is cut");
    assert!(!probe(&web.netns, api.spec.ip, 8080, Tcp), "new ones too");

    // Allowed again: new connections work.
    lab.apply("policy.yaml", &allow).unwrap();
    assert!(probe(&web.netns, api.spec.ip, 8080, Tcp));
    let mut again = Connection::open(&web.netns, api.spec.ip, 8080).unwrap();
    assert!(again.echoes());

    // The agent says each version it applies once: the first slice and both changes.
    let log = lab.logs(&format!("agent-{}", api.spec.node));
    let versions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" applied"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("version=")))
        .collect();
    assert!(versions.len() >= 3, "{log}");
    let unique: std::collections::BTreeSet<&&str> = versions.iter().collect();
    assert_eq!(unique.len(), versions.len(), "one line per version: {log}");
}

#[test]
fn a_pod_added_relabelled_and_deleted() {
    let (n, p) = (ns(), api_and_web());
    let allow = api_allows("web");
    let mut lab = lab(&[("ns.yaml", &n), ("pods.yaml", &p), ("policy.yaml", &allow)]);
    let api_ip = lab.addr("shop/api");
    let mut servers = Servers::new();
    let api_ns = lab.topology.pod("shop/api").unwrap().netns.clone();
    servers.serve(&api_ns, 8080, Tcp).unwrap();

    // A new pod: the CNI wires it, then the API server reports it. Labelled `job`, it is
    // denied; its own interface is filtered from the moment its route appears.
    lab.topology
        .add_pod(PodSpec {
            name: "shop/job".into(),
            node: "node-1".into(),
            ip: "10.244.1.7".parse().unwrap(),
        })
        .unwrap();
    let job_ns = lab.topology.pod("shop/job").unwrap().netns.clone();
    lab.apply(
        "job.yaml",
        &pod("shop", "job", "app: job", "node-1", "10.244.1.7", ""),
    )
    .unwrap();
    assert!(!probe(&job_ns, api_ip, 8080, Tcp), "job is not web");
    let mut job_servers = Servers::new();
    job_servers.serve(&job_ns, 9000, Tcp).unwrap();
    assert!(probe(
        &lab.topology.outside.netns,
        "10.244.1.7".parse::<std::net::Ipv4Addr>().unwrap(),
        9000,
        Tcp
    ));

    // Relabelled web: now allowed.
    lab.apply(
        "job.yaml",
        &pod("shop", "job", "app: web", "node-1", "10.244.1.7", ""),
    )
    .unwrap();
    assert!(probe(&job_ns, api_ip, 8080, Tcp), "relabelled to web");

    // Deleted: its address leaves api's allowed set; the agent stops filtering its gone
    // interface.
    let before = lab.revision().unwrap();
    lab.remove("job.yaml").unwrap();
    lab.realized(before).unwrap();
    // Its processes end (a socket would keep its network namespace, and so its veth, alive);
    // dropping the servers waits for their sockets to close.
    drop(job_servers);
    lab.topology.delete_pod("shop/job").unwrap();
    let flows: Vec<_> = lab
        .all_flows(&[(8080, Tcp)])
        .into_iter()
        .filter(|f| f.1 == "shop/api")
        .collect();
    assert_matches(&lab, &flows);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !lab.logs("agent-node-1").contains("pod interface gone")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        lab.logs("agent-node-1").contains("pod interface gone"),
        "{}",
        lab.logs("agent-node-1")
    );
}

#[test]
fn policy_stays_enforced_while_the_agent_restarts_and_without_a_controller() {
    let (n, p) = (ns(), api_and_web());
    let deny_web = api_allows("nobody");
    let mut lab = lab(&[
        ("ns.yaml", &n),
        ("pods.yaml", &p),
        ("policy.yaml", &deny_web),
    ]);
    let api = lab.topology.pod("shop/api").unwrap().clone();
    let web = lab.topology.pod("shop/web").unwrap().clone();
    let mut servers = Servers::new();
    servers.serve(&api.netns, 8080, Tcp).unwrap();
    servers.serve(&web.netns, 9090, Tcp).unwrap();
    let denied = || !probe(&web.netns, api.spec.ip, 8080, Tcp);
    assert!(denied());
    // An allowed connection (web is not isolated), open throughout.
    let mut other = Connection::open(&api.netns, web.spec.ip, 9090).unwrap();

    // The agent of api's node stops: its programs and maps stay pinned and enforcing.
    lab.stop_agent("node-2");
    assert!(denied(), "enforced with the agent stopped");
    assert!(other.echoes(), "and what was allowed still is");

    // It comes back and re-adopts the pinned maps and links, with no window: connection
    // attempts every few milliseconds all through the restart never get through.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (stop, ns, dst) = (stop.clone(), web.netns.clone(), api.spec.ip);
        std::thread::spawn(move || {
            palisade_lab::netns::in_netns(&ns, move || {
                let (mut tries, mut through) = (0u32, 0u32);
                // Through the whole restart, and at least 25 attempts however quick it is.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || tries < 25 {
                    let addr = std::net::SocketAddr::from((dst, 8080));
                    tries += 1;
                    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(20))
                        .is_ok()
                    {
                        through += 1;
                    }
                }
                (tries, through)
            })
            .unwrap()
        })
    };
    lab.start_agent("node-2").unwrap();
    // Until the new agent has re-adopted the maps, synced and been acked by the controller.
    lab.agent_synced("node-2").unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tries, through) = hammer.join().unwrap();
    assert!(tries > 10, "{tries} attempts");
    assert_eq!(
        through, 0,
        "{through} of {tries} attempts got through during the restart"
    );
    assert!(denied(), "enforced after the restart");
    assert!(other.echoes());
    let log = lab.logs("agent-node-2");
    assert!(log.contains("re-adopting the policy maps"), "{log}");

    // The controller goes away: both agents keep enforcing the last policy.
    lab.stop_controller();
    assert!(denied(), "enforced without a controller");
    assert!(other.echoes());
}

#[test]
fn a_slice_that_does_not_fit_the_maps_fails_endpoints_closed_and_says_so() {
    let files = palisade_lab::demo::MICROSERVICES;
    // Rule maps of 3 entries: node-1 needs 9 (frontend's allow from 0.0.0.0/0 takes one entry
    // per identity inside it), so frontend (the endpoint with the most) is failed closed and
    // backend keeps its 3; node-2 fits.
    let mut opts = LabOptions::beside_executable();
    opts.agent_args = vec!["--max-rules".into(), "3".into()];
    let lab = lab_with(&files, opts);
    let status = lab.node_status("node-1").unwrap();
    assert_eq!(
        status["failedClosed"],
        serde_json::json!(["10.244.1.10"]),
        "{status}"
    );
    assert_eq!(status["capacities"]["rules"], 3);
    assert_eq!(status["ackedVersion"], status["desiredVersion"]);
    assert_eq!(
        lab.node_status("node-2").unwrap()["failedClosed"],
        serde_json::json!([])
    );

    let probes = [(80, Tcp), (8080, Tcp), (3306, Tcp), (6379, Tcp)];
    let _s = support::serve_all(&lab, &probes);
    let m = lab.measured(&lab.all_flows(&probes)).expect("probes run");
    // Frontend neither receives nor sends; backend still reaches mysql and redis.
    assert_eq!(
        allowed(&m),
        vec![
            "microservices/backend->microservices/mysql:3306/Tcp",
            "microservices/backend->microservices/redis:6379/Tcp",
        ],
        "{}",
        lab.logs("agent-node-1")
    );
    assert!(lab.logs("agent-node-1").contains("endpoint failed closed"));
}
