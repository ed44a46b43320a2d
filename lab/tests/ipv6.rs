//! Dual stack on real packets: Palisade enforces IPv4, so IPv6 to or from a pod isolated in
//! that direction is dropped (neighbour discovery excepted) and counted, never passed
//! unchecked; pods no policy isolates keep IPv6 (contracts.md §8).

#[path = "support.rs"]
mod support;

use std::net::Ipv6Addr;

use palisade_lab::probe::{probe, Servers};
use palisade_policy::model::Protocol::Tcp;
use support::pod;

const NS: &str = include_str!("../../examples/microservices/00-namespace.yaml");
const PODS: &str = include_str!("../../examples/microservices/10-pods.yaml");
const POLICIES: &str = include_str!("../../examples/microservices/20-policies.yaml");

#[test]
fn ipv6_to_and_from_isolated_pods_is_dropped_and_elsewhere_passes() {
    let free = [
        pod("default", "free-a", "app: a", "node-1", "10.244.1.20", ""),
        pod("default", "free-b", "app: b", "node-1", "10.244.1.21", ""),
    ]
    .join("---\n");
    let lab = support::lab(&[
        ("00-namespace.yaml", NS),
        ("10-pods.yaml", PODS),
        ("11-free.yaml", &free),
        ("20-policies.yaml", POLICIES),
    ]);
    let v6 = |last: u16| Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last);
    let mut servers = Servers::new();
    for (name, addr) in [
        ("microservices/frontend", v6(0x10)),
        ("default/free-a", v6(0x20)),
        ("default/free-b", v6(0x21)),
    ] {
        lab.topology.add_ipv6(name, addr).unwrap();
        let netns = &lab.topology.pod(name).unwrap().netns;
        servers.serve_dual_stack(netns, 80, Tcp).unwrap();
    }
    let ns = |name: &str| lab.topology.pod(name).unwrap().netns.clone();

    // Between pods no policy isolates, IPv6 works: neighbour discovery passes both ways.
    assert!(probe(&ns("default/free-a"), v6(0x21), 80, Tcp));
    // frontend is isolated both ways. Over IPv4 anything may reach its port 80 (an ipBlock
    // of 0.0.0.0/0); over IPv6, which is not enforced yet, nothing may.
    assert!(probe(
        &ns("default/free-a"),
        lab.addr("microservices/frontend"),
        80,
        Tcp
    ));
    assert!(
        !probe(&ns("default/free-a"), v6(0x10), 80, Tcp),
        "IPv6 into an isolated pod"
    );
    assert!(
        !probe(&ns("microservices/frontend"), v6(0x20), 80, Tcp),
        "IPv6 out of one"
    );

    // Counted as denied, per endpoint and direction.
    let metrics = lab.agent_metrics("node-1").unwrap();
    let denied = |dir: &str| -> u64 {
        let name = format!(
            "palisade_agent_packets_total{{endpoint=\"10.244.1.10\",direction=\"{dir}\",verdict=\"denied\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    assert!(denied("ingress") > 0 && denied("egress") > 0);

    // Without the policies frontend is isolated in no direction: its IPv6 is back. (So the
    // drops above were Palisade's, not a broken route.)
    let before = lab.revision().unwrap();
    lab.remove("20-policies.yaml").unwrap();
    lab.realized(before).unwrap();
    assert!(probe(&ns("default/free-a"), v6(0x10), 80, Tcp));
    assert!(probe(&ns("microservices/frontend"), v6(0x20), 80, Tcp));
}
