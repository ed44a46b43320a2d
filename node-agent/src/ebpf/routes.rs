//! Which interfaces carry local pods: the node's routing table, the way a CNI leaves it. A
//! pod's host-side interface is the one the node's /32 route to the pod's address names
//! (directly connected, no gateway). Interface names are never guessed from, and the node's
//! default-route interface (its uplink, which carries the agent's own gRPC) is never a pod
//! interface, nor is loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Pod interfaces by name, each with the pod addresses routed to it.
pub type PodInterfaces = BTreeMap<String, BTreeSet<Ipv4Addr>>;

/// Pod interfaces in the text of `/proc/net/route` (this network namespace's IPv4 routes).
/// Lines that do not parse are skipped.
pub fn pod_interfaces(proc_net_route: &str) -> PodInterfaces {
    let routes: Vec<Route> = proc_net_route.lines().skip(1).filter_map(parse).collect();
    let uplinks: BTreeSet<&str> = routes
        .iter()
        .filter(|r| r.mask.is_unspecified())
        .map(|r| r.iface.as_str())
        .collect();
    let mut out = PodInterfaces::new();
    for r in &routes {
        let host = r.mask == Ipv4Addr::BROADCAST;
        let direct = r.gateway.is_unspecified();
        if host && direct && r.iface != "lo" && !uplinks.contains(r.iface.as_str()) {
            out.entry(r.iface.clone())
                .or_default()
                .insert(r.destination);
        }
    }
    out
}

struct Route {
    iface: String,
    destination: Ipv4Addr,
    gateway: Ipv4Addr,
    mask: Ipv4Addr,
}

/// One line: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, each address the
/// hex of its four bytes read as a native-endian u32.
fn parse(line: &str) -> Option<Route> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let addr = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    let flags = u32::from_str_radix(f[3], 16).ok()?;
    const RTF_UP: u32 = 1;
    if flags & RTF_UP == 0 {
        return None;
    }
    Some(Route {
        iface: f[0].to_string(),
        destination: addr(f[1])?,
        gateway: addr(f[2])?,
        mask: addr(f[7])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
veth1a\t0200000A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
veth1a\t0900000A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
eth0\t0700000A\t0101A8C0\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0
eth0\t0800000A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
vethdown\t0300000A\t00000000\t0004\t0\t0\t0\tFFFFFFFF\t0\t0\t0
lo\t0100007F\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
garbage
";

    #[test]
    fn a_pod_interface_is_named_by_a_direct_host_route_never_the_uplink() {
        let pods = pod_interfaces(TABLE);
        let want: PodInterfaces = [(
            "veth1a".to_string(),
            ["10.0.0.2".parse().unwrap(), "10.0.0.9".parse().unwrap()].into(),
        )]
        .into();
        // 10.0.0.7 goes through a gateway, 10.0.0.8 is on the uplink, vethdown's route is not
        // up, and loopback is never a pod.
        assert_eq!(pods, want);
    }
}
