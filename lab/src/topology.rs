//! Nodes and pods wired the way a routed CNI (Calico-like) leaves them, in network namespaces:
//!
//! * a bridge in the root namespace (`pl<ID>br`, 172.31.ID.1/24) stands for the node network;
//!   the controller listens on its address;
//! * each node is a namespace with an uplink `eth0` on the bridge (172.31.ID.(10+i)), IP
//!   forwarding on, a /32 route to every other node's pods through that node;
//! * each pod is a namespace with `eth0` holding its /32 and a default route through
//!   169.254.1.1, a link-local gateway the host side answers for by proxy ARP; the node's
//!   side of the veth (`pl<ID>n<i>p<k>`) has the /32 route to the pod, which is how the agent
//!   finds it;
//! * `outside` is a namespace on the bridge (172.31.ID.200) that routes to every pod through
//!   its node: a client from outside the cluster.
//!
//! Everything is removed on drop (and leftovers with the same ID at build).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use palisade_agent::ebpf::bpffs;

use crate::netns::{ip, ip_in, list, sysctl_in};
use crate::LabError;

/// A pod to wire: its name (namespace/name), node and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub uplink: Ipv4Addr,
    /// Index in the topology (from 1), as in interface names.
    pub index: usize,
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub spec: PodSpec,
    pub netns: String,
    /// The node side of the pod's veth.
    pub host_if: String,
}

pub struct Topology {
    pub id: u8,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub outside: Pod,
    /// A bpffs mounted for the agents (each uses a directory of its own under it).
    pub bpffs: PathBuf,
    pod_counter: usize,
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

impl Topology {
    /// Wire `pods` on the nodes they name, plus `extra_nodes` without pods. `id` (1..=254)
    /// keeps concurrent labs apart.
    pub fn build(id: u8, pods: &[PodSpec], extra_nodes: &[&str]) -> Result<Topology, LabError> {
        let prefix = format!("pl{id}-");
        Topology::cleanup(id);
        let bridge = format!("pl{id}br");
        let gateway = Ipv4Addr::new(172, 31, id, 1);
        let bpffs = PathBuf::from(format!("/run/palisade-lab/{id}/bpf"));
        let mut t = Topology {
            id,
            bridge: bridge.clone(),
            gateway,
            nodes: Vec::new(),
            pods: Vec::new(),
            outside: Pod {
                spec: PodSpec {
                    name: "outside".into(),
                    node: String::new(),
                    ip: Ipv4Addr::new(172, 31, id, 200),
                },
                netns: format!("{prefix}outside"),
                host_if: String::new(),
            },
            bpffs,
            pod_counter: 0,
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        bpffs::ensure(&t.bpffs).map_err(LabError::Command)?;

        let mut names: Vec<String> = pods.iter().map(|p| p.node.clone()).collect();
        names.extend(extra_nodes.iter().map(|s| s.to_string()));
        names.sort();
        names.dedup();
        for (i, name) in names.iter().enumerate() {
            let node = Node {
                name: name.clone(),
                netns: format!("{prefix}{}", sanitize(name)),
                uplink: Ipv4Addr::new(172, 31, id, 10 + i as u8 + 1),
                index: i + 1,
            };
            t.add_host(&node.netns, &format!("pl{id}u{}", node.index), node.uplink)?;
            for key in ["net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding"] {
                sysctl_in(&node.netns, key, "1")?;
            }
            t.nodes.push(node);
        }
        let outside = t.outside.clone();
        t.add_host(&outside.netns, &format!("pl{id}x"), outside.spec.ip)?;
        for p in pods {
            t.add_pod(p.clone())?;
        }
        Ok(t)
    }

    /// A namespace with an uplink on the bridge at `addr`, default route to the bridge.
    fn add_host(&self, ns: &str, root_if: &str, addr: Ipv4Addr) -> Result<(), LabError> {
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", root_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["link", "set", root_if, "master", &self.bridge, "up"])?;
        ip_in(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip_in(ns, &["link", "set", "eth0", "up"])?;
        ip_in(ns, &["link", "set", "lo", "up"])?;
        ip_in(
            ns,
            &["route", "add", "default", "via", &self.gateway.to_string()],
        )?;
        for key in [
            "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/default/rp_filter",
        ] {
            sysctl_in(ns, key, "0")?;
        }
        Ok(())
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        if name == "outside" {
            return Some(&self.outside);
        }
        self.pods.iter().find(|p| p.spec.name == name)
    }

    /// Wire one more pod (as a CNI does when a pod starts): its namespace, veth, addresses and
    /// routes, here and on every other node and outside.
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<(), LabError> {
        let node = self.node(&spec.node).cloned().ok_or_else(|| {
            LabError::Topology(format!("pod {} on unknown node {}", spec.name, spec.node))
        })?;
        self.pod_counter += 1;
        let netns = format!("pl{}-p-{}", self.id, sanitize(&spec.name));
        let host_if = format!("pl{}n{}p{}", self.id, node.index, self.pod_counter);
        let addr = spec.ip.to_string();
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["link", "set", &host_if, "netns", &node.netns])?;
        ip_in(
            &netns,
            &["addr", "add", &format!("{addr}/32"), "dev", "eth0"],
        )?;
        ip_in(&netns, &["link", "set", "eth0", "up"])?;
        ip_in(&netns, &["link", "set", "lo", "up"])?;
        ip_in(
            &netns,
            &[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        )?;
        ip_in(
            &netns,
            &[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ],
        )?;
        sysctl_in(
            &node.netns,
            &format!("net/ipv4/conf/{host_if}/proxy_arp"),
            "1",
        )?;
        // Answer at once (the default delays proxy ARP answers up to 0.8 s), as Calico does.
        sysctl_in(
            &node.netns,
            &format!("net/ipv4/neigh/{host_if}/proxy_delay"),
            "0",
        )?;
        ip_in(&node.netns, &["link", "set", &host_if, "up"])?;
        ip_in(
            &node.netns,
            &[
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                &host_if,
                "scope",
                "link",
            ],
        )?;
        let via = node.uplink.to_string();
        for other in self.nodes.iter().filter(|n| n.name != node.name) {
            ip_in(
                &other.netns,
                &["route", "add", &format!("{addr}/32"), "via", &via],
            )?;
        }
        ip_in(
            &self.outside.netns,
            &["route", "add", &format!("{addr}/32"), "via", &via],
        )?;
        self.pods.push(Pod {
            spec,
            netns,
            host_if,
        });
        Ok(())
    }

    /// Give a pod an IPv6 address too (dual stack, on its node only): `addr`/128 on its
    /// `eth0` with a default route through fe80::1, which the node's side of the veth holds;
    /// the node routes `addr` to the veth and forwards IPv6. Neighbour discovery does the rest.
    pub fn add_ipv6(&self, pod: &str, addr: std::net::Ipv6Addr) -> Result<(), LabError> {
        let p = self
            .pod(pod)
            .cloned()
            .ok_or_else(|| LabError::Topology(format!("no pod {pod}")))?;
        let node = self
            .node(&p.spec.node)
            .cloned()
            .ok_or_else(|| LabError::Topology(format!("no node {}", p.spec.node)))?;
        for (ns, iface) in [(&p.netns, "eth0"), (&node.netns, p.host_if.as_str())] {
            sysctl_in(ns, &format!("net/ipv6/conf/{iface}/disable_ipv6"), "0")?;
        }
        sysctl_in(&node.netns, "net/ipv6/conf/all/forwarding", "1")?;
        let a = addr.to_string();
        ip_in(
            &p.netns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        ip_in(
            &node.netns,
            &[
                "-6",
                "addr",
                "add",
                "fe80::1/64",
                "dev",
                &p.host_if,
                "nodad",
            ],
        )?;
        ip_in(
            &p.netns,
            &[
                "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ],
        )?;
        ip_in(
            &node.netns,
            &["-6", "route", "add", &format!("{a}/128"), "dev", &p.host_if],
        )?;
        Ok(())
    }

    /// Remove a pod as a CNI does when it stops: its namespace (and so its veth and the
    /// node's route through it) and the routes to it elsewhere.
    pub fn delete_pod(&mut self, name: &str) -> Result<(), LabError> {
        let i = self
            .pods
            .iter()
            .position(|p| p.spec.name == name)
            .ok_or_else(|| LabError::Topology(format!("no pod {name}")))?;
        let pod = self.pods.remove(i);
        ip(&["netns", "delete", &pod.netns])?;
        let addr = format!("{}/32", pod.spec.ip);
        for other in self.nodes.iter().filter(|n| n.name != pod.spec.node) {
            let _ = ip_in(&other.netns, &["route", "del", &addr]);
        }
        let _ = ip_in(&self.outside.netns, &["route", "del", &addr]);
        Ok(())
    }

    /// Remove whatever a lab with this ID left behind.
    pub fn cleanup(id: u8) {
        let prefix = format!("pl{id}-");
        for ns in list().into_iter().filter(|n| n.starts_with(&prefix)) {
            let _ = ip(&["netns", "delete", &ns]);
        }
        let _ = ip(&["link", "delete", &format!("pl{id}br")]);
        let dir = PathBuf::from(format!("/run/palisade-lab/{id}"));
        bpffs::unmount(&dir.join("bpf"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Pods by name, and `outside`.
    pub fn endpoints(&self) -> BTreeMap<String, Ipv4Addr> {
        let mut m: BTreeMap<String, Ipv4Addr> = self
            .pods
            .iter()
            .map(|p| (p.spec.name.clone(), p.spec.ip))
            .collect();
        m.insert("outside".into(), self.outside.spec.ip);
        m
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Topology::cleanup(self.id);
    }
}
