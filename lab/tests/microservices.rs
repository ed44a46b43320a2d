//! The seed's microservices chain on real packets: frontend 80 from outside; frontend ->
//! backend 8080; backend -> mysql 3306 and redis 6379; nothing else, behind default deny.

#[path = "support.rs"]
mod support;

use palisade_lab::probe::Servers;
use palisade_policy::model::Protocol::Tcp;

const NS: &str = include_str!("../../examples/microservices/00-namespace.yaml");
const PODS: &str = include_str!("../../examples/microservices/10-pods.yaml");
const POLICIES: &str = include_str!("../../examples/microservices/20-policies.yaml");

#[test]
fn no_policy_is_all_open_and_the_chain_is_exactly_what_the_seed_allows() {
    let lab = support::lab(&[("00-namespace.yaml", NS), ("10-pods.yaml", PODS)]);
    let probes = [(80, Tcp), (8080, Tcp), (3306, Tcp), (6379, Tcp)];
    let mut servers = Servers::new();
    for p in &lab.topology.pods {
        for (port, proto) in probes {
            servers.serve(&p.netns, port, proto).unwrap();
        }
    }
    let flows = lab.all_flows(&probes);
    let open = support::assert_matches(&lab, &flows);
    assert!(open.values().all(|ok| *ok), "no policy: everything open");

    lab.apply("20-policies.yaml", POLICIES).unwrap();
    let chain = support::assert_matches(&lab, &flows);
    assert_eq!(
        support::allowed(&chain),
        vec![
            "microservices/backend->microservices/mysql:3306/Tcp",
            "microservices/backend->microservices/redis:6379/Tcp",
            "microservices/frontend->microservices/backend:8080/Tcp",
            "outside->microservices/frontend:80/Tcp",
        ]
    );

    // The agents count what they passed and dropped, per endpoint and direction.
    let metrics = lab.agent_metrics("node-2").unwrap();
    let value = |labels: &str| -> u64 {
        let name = format!("palisade_agent_packets_total{{{labels}}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    let mysql = "endpoint=\"10.244.2.10\",direction=\"ingress\"";
    assert!(value(&format!("{mysql},verdict=\"allowed\"")) > 0);
    assert!(value(&format!("{mysql},verdict=\"denied\"")) > 0);
}
