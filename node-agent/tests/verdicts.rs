//! The TC programs agree with the core's evaluation (contracts.md §4) on crafted packets
//! run through `BPF_PROG_TEST_RUN`: random slices and packets, replies of allowed connections,
//! and SCTP, which this kernel cannot carry on real sockets. Needs root and BPF.

#[allow(dead_code)]
#[path = "../../policy/tests/support/gen.rs"]
mod gen;

use std::net::Ipv4Addr;

use palisade_agent::ebpf::testrun::{packet, Harness, TCP_ACK, TCP_SYN};
use palisade_policy::engine::Engine;
use palisade_policy::eval::{check, Flow};
use palisade_policy::model::Direction;
use palisade_policy::slice::NodeSlice;
use proptest::prelude::*;

/// What the programs must decide for `flow` in direction `dir`: the slice's check of the
/// local side, passing when that side is no endpoint here or is not isolated.
fn expected(slice: &NodeSlice, flow: &Flow, dir: Direction) -> bool {
    flow.src == flow.dst || check(slice, flow, dir).is_none_or(|v| v.passes())
}

const SPORT: u16 = 40000;

fn forward(flow: &Flow) -> Vec<u8> {
    packet(flow.src, flow.dst, flow.protocol, SPORT, flow.port, TCP_SYN)
}

fn reply(flow: &Flow) -> Vec<u8> {
    let flags = if flow.protocol == 1 { 1 } else { TCP_ACK };
    // ICMP: the echo reply carries the request's identifier.
    let (sport, dport) = if flow.protocol == 1 {
        (SPORT, 0)
    } else {
        (flow.port, SPORT)
    };
    packet(flow.dst, flow.src, flow.protocol, sport, dport, flags)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn programs_agree_with_evaluation_on_random_slices_and_packets(
        commands in prop::collection::vec(gen::command(), 0..40),
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<prop::sample::Index>()), 150),
    ) {
        thread_local! {
            static HARNESS: std::cell::RefCell<Option<Harness>> = const { std::cell::RefCell::new(None) };
        }
        HARNESS.with(|h| -> Result<(), TestCaseError> {
            let mut h = h.borrow_mut();
            let h = h.get_or_insert_with(|| {
                let mut h = Harness::start().unwrap_or_else(|e| panic!("verdict tests need root and BPF: {e}"));
                for ip in gen::probe_ips() {
                    h.local(ip);
                }
                h
            });
            let engine = Engine::load(1, commands);
            let slice = engine.slice(gen::NODES[0]);
            h.install(&slice).unwrap();
            h.clear_conntrack();
            let ips = gen::probe_ips();
            let ports = gen::probe_ports();
            for (s, d, p) in &picks {
                let (protocol, port) = *p.get(&ports);
                let flow = Flow { src: *s.get(&ips), dst: *d.get(&ips), protocol, port };
                // What the destination's interface lets in.
                prop_assert_eq!(
                    Harness::passes(&h.to_pod, &forward(&flow)),
                    expected(&slice, &flow, Direction::Ingress),
                    "ingress {:?}", flow
                );
                h.clear_conntrack();
                // What the source's interface lets out; if it does, the reply comes back in
                // whatever the source's ingress policy says.
                let out = expected(&slice, &flow, Direction::Egress);
                prop_assert_eq!(Harness::passes(&h.from_pod, &forward(&flow)), out, "egress {:?}", flow);
                let back = Flow { src: flow.dst, dst: flow.src, protocol, port: SPORT };
                let reply_in = out || expected(&slice, &back, Direction::Ingress);
                let reply_in = if protocol == 1 { out || expected(&slice, &Flow { port: 0, ..back }, Direction::Ingress) } else { reply_in };
                prop_assert_eq!(Harness::passes(&h.to_pod, &reply(&flow)), reply_in, "reply of {:?}", flow);
                h.clear_conntrack();
            }
            Ok(())
        })?;
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// node-1's slice of the ports seed (examples/ports).
fn ports_node_1() -> NodeSlice {
    let text = include_str!("../../examples/ports/manifests.yaml");
    let commands = palisade_policy::manifest::parse("ports", text, "default")
        .upserts()
        .expect("the example is valid");
    Engine::load(1, commands).slice("node-1")
}

/// The telco seed: SCTP 28 allowed into `telco`, nothing else; verdicts through the real
/// programs, since this kernel has no SCTP sockets.
#[test]
fn sctp_verdicts_through_the_programs() {
    let slice = ports_node_1();
    let mut h = Harness::start().unwrap_or_else(|e| panic!("verdict tests need root and BPF: {e}"));
    h.install(&slice).unwrap();
    let (telco, client) = (ip("10.244.1.61"), ip("10.244.2.61"));
    h.local(telco);
    let sctp = |dport| packet(client, telco, 132, 5000, dport, 0);
    assert!(Harness::passes(&h.to_pod, &sctp(28)), "SCTP 28 is allowed");
    assert!(!Harness::passes(&h.to_pod, &sctp(29)), "SCTP 29 is not");
    assert!(
        !Harness::passes(&h.to_pod, &packet(client, telco, 6, 5000, 28, TCP_SYN)),
        "TCP 28 is not"
    );
    // telco is not isolated for egress: its association out passes and the answer comes back
    // in, though ingress would not allow SCTP 5000 from the peer.
    assert!(Harness::passes(
        &h.from_pod,
        &packet(telco, client, 132, 28, 5000, 0)
    ));
    h.clear_conntrack();
    assert!(Harness::passes(
        &h.from_pod,
        &packet(telco, client, 132, 7000, 6000, 0)
    ));
    assert!(
        Harness::passes(&h.to_pod, &packet(client, telco, 132, 6000, 7000, 0)),
        "the SCTP reply passes"
    );
    assert!(
        !Harness::passes(&h.to_pod, &packet(client, telco, 132, 6000, 7001, 0)),
        "another association does not"
    );
}

/// An Ethernet frame of `ethertype` around `payload`.
fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv6 packet from fd00::1 to `dst`: `next_header`, `hop_limit`, then `l4` (for ICMPv6,
/// its type first).
fn ipv6_to(dst: [u8; 16], next_header: u8, hop_limit: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 6 << 4;
    h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    h[6] = next_header;
    h[7] = hop_limit;
    h[8] = 0xfd;
    h[23] = 1;
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(l4);
    frame(0x86DD, &h)
}

/// The same to fd00::2.
fn ipv6(next_header: u8, hop_limit: u8, l4: &[u8]) -> Vec<u8> {
    ipv6_to(
        "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        next_header,
        hop_limit,
        l4,
    )
}

/// IPv6 and other non-IPv4 frames: to or from an endpoint isolated in that direction they are
/// dropped (neighbour discovery and ARP excepted); elsewhere they pass (contracts.md §8).
#[test]
fn other_address_families_fail_closed_where_the_endpoint_is_isolated() {
    let slice = ports_node_1();
    let mut h = Harness::start().unwrap_or_else(|e| panic!("verdict tests need root and BPF: {e}"));
    h.install(&slice).unwrap();
    let mut tcp = vec![0u8; 20];
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[13] = TCP_SYN;
    let v6_tcp = ipv6(6, 64, &tcp);
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let neighbour_solicitation =
        ipv6_to(v6("ff02::1:ff00:2"), 58, 255, &[135, 0, 0, 0, 0, 0, 0, 0]);
    let router_advertisement = ipv6_to(v6("fe80::1"), 58, 255, &[134, 0, 0, 0, 0, 0, 0, 0]);
    let routed_nd_lookalike = ipv6(58, 64, &[135, 0, 0, 0, 0, 0, 0, 0]);
    // ND-typed, hop limit 255, but to a global address: could leave the link, so not ND.
    let global_nd_lookalike = ipv6(58, 255, &[136, 0, 0, 0, 0, 0, 0, 0]);
    let echo6 = ipv6(58, 64, &[128, 0, 0, 0, 0, 1, 0, 1]);
    let arp = frame(0x0806, &[0u8; 28]);
    let vlan = frame(
        0x8100,
        &packet(ip("10.244.2.61"), ip("10.244.1.61"), 6, 1, 80, TCP_SYN)[12..],
    );

    // telco (10.244.1.61): isolated for ingress only.
    h.interface_endpoints(&[ip("10.244.1.61")]);
    for (what, f) in [
        ("IPv6 TCP", &v6_tcp),
        ("ICMPv6 echo", &echo6),
        ("a VLAN-tagged frame", &vlan),
        ("a routed ND look-alike", &routed_nd_lookalike),
        ("ND to a global address", &global_nd_lookalike),
    ] {
        assert!(
            !Harness::passes(&h.to_pod, f),
            "{what} into an ingress-isolated pod is dropped"
        );
        assert!(
            Harness::passes(&h.from_pod, f),
            "{what} out of a pod not isolated for egress passes"
        );
    }
    for (what, f) in [
        ("neighbour solicitation", &neighbour_solicitation),
        ("router advertisement", &router_advertisement),
        ("ARP", &arp),
    ] {
        assert!(Harness::passes(&h.to_pod, f), "{what} passes");
        assert!(Harness::passes(&h.from_pod, f), "{what} passes");
    }
    // web-a (10.244.1.60): isolated both ways.
    h.interface_endpoints(&[ip("10.244.1.60")]);
    assert!(!Harness::passes(&h.from_pod, &v6_tcp));
    assert!(!Harness::passes(&h.to_pod, &v6_tcp));
    assert!(Harness::passes(&h.from_pod, &neighbour_solicitation));
    // A pod no policy selects: everything passes, as for IPv4.
    h.interface_endpoints(&[ip("10.244.1.99")]);
    assert!(Harness::passes(&h.to_pod, &v6_tcp));
    assert!(Harness::passes(&h.from_pod, &vlan));
    // An interface with several addresses: isolated if any of its endpoints is.
    h.interface_endpoints(&[ip("10.244.1.99"), ip("10.244.1.61")]);
    assert!(!Harness::passes(&h.to_pod, &v6_tcp));
    assert!(Harness::passes(&h.from_pod, &v6_tcp));
    // An interface the agent has not described: nothing but addressing gets through.
    h.interface_endpoints(&[]);
    assert!(!Harness::passes(&h.to_pod, &v6_tcp));
    assert!(Harness::passes(&h.to_pod, &neighbour_solicitation));
    assert!(Harness::passes(&h.to_pod, &arp));
}
