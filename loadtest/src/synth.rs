//! A synthetic multi-tenant cluster, deterministic for a seed.
//!
//! Tenants own a few namespaces each (labelled `tenant`, `env`); pods carry `app`, `tier` and
//! named container ports whose numbers differ between apps. Every namespace gets the policy
//! mix of a real multi-tenant cluster:
//! default deny (ingress and egress), allow-same-namespace, allow-from the shared ingress
//! namespace, pod-to-pod with ports, DNS egress to kube-system, egress to an ipBlock with
//! `except`, a named port, and a `matchExpressions` namespace selector over the tenant's
//! namespaces. Shared namespaces: `kube-system` (DNS) and `ingress-nginx` (role=ingress).

use std::net::Ipv4Addr;

use palisade_policy::model::{
    Command, Labels, NamedPort, Namespace, NetworkPolicy, ObjKey, Operator, Peer, Pod, PolicyRule,
    PortRef, PortSpec, Protocol, Requirement, Selector,
};
use palisade_policy::net::Prefix;

/// splitmix64: small, fast, deterministic.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[derive(Clone, Debug)]
pub struct Shape {
    pub nodes: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub seed: u64,
}

pub const APPS_PER_NAMESPACE: usize = 5;
pub const NAMESPACES_PER_TENANT: usize = 4;
const SYSTEM_PODS: usize = 20;
const TIERS: [&str; 3] = ["web", "api", "db"];

fn sel(kv: &[(&str, &str)]) -> Selector {
    Selector::from_labels(kv.iter().copied())
}

fn tcp(port: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        port: PortRef::Range(port, port),
    }
}

pub fn ns_name(i: usize) -> String {
    format!("ns-{i:05}")
}

pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn tenant_of(ns: usize) -> usize {
    ns / NAMESPACES_PER_TENANT
}

pub fn namespace(i: usize, tenant: usize) -> Namespace {
    let mut ns = Namespace::implicit(&ns_name(i));
    ns.labels.insert("tenant".into(), format!("t{tenant}"));
    ns.labels
        .insert("env".into(), ["prod", "staging", "dev"][i % 3].into());
    ns
}

/// The `k`-th pod, in namespace `ns`, app `app`, on a random node.
pub fn pod(ns: &str, name: String, app: usize, node: usize, ip: Ipv4Addr) -> Pod {
    let mut labels = Labels::new();
    labels.insert("app".into(), format!("app{app}"));
    labels.insert("tier".into(), TIERS[app % TIERS.len()].into());
    labels.insert("pod-template-hash".into(), format!("{:x}", app * 7919));
    Pod {
        key: ObjKey::new(ns, &name),
        labels,
        node: Some(node_name(node).into()),
        ip: Some(ip),
        host_network: false,
        finished: false,
        named_ports: vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: if app.is_multiple_of(2) { 8080 } else { 80 },
            },
            NamedPort {
                name: "metrics".into(),
                protocol: Protocol::Tcp,
                port: 9090,
            },
        ],
    }
}

/// Address of the `i`-th pod: 10.0.0.0/8 upward, skipping nothing (a /8 holds 16M pods).
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32 + 1 + i as u32)
}

/// The policies of namespace `i` (as many as `count`, cycling through the mix).
pub fn policies(i: usize, count: usize) -> Vec<NetworkPolicy> {
    let ns = ns_name(i);
    let tenant = tenant_of(i);
    let key = |name: &str| ObjKey::new(&ns, name);
    let rule = |peers: Option<Vec<Peer>>, ports: Option<Vec<PortSpec>>| PolicyRule { peers, ports };
    let pods = |s: Selector| Peer::Pods {
        namespaces: None,
        pods: s,
    };
    let mix: Vec<NetworkPolicy> = vec![
        NetworkPolicy {
            key: key("default-deny"),
            pod_selector: Selector::everything(),
            ingress: Some(vec![]),
            egress: Some(vec![]),
            ignored: Default::default(),
        },
        NetworkPolicy {
            key: key("allow-same-namespace"),
            pod_selector: Selector::everything(),
            ingress: Some(vec![rule(Some(vec![pods(Selector::everything())]), None)]),
            egress: None,
            ignored: Default::default(),
        },
        NetworkPolicy {
            key: key("allow-from-ingress"),
            pod_selector: sel(&[("tier", "web")]),
            ingress: Some(vec![rule(
                Some(vec![Peer::Pods {
                    namespaces: Some(sel(&[("role", "ingress")])),
                    pods: Selector::everything(),
                }]),
                Some(vec![tcp(80), tcp(443)]),
            )]),
            egress: None,
            ignored: Default::default(),
        },
        NetworkPolicy {
            key: key("api-from-web"),
            pod_selector: sel(&[("tier", "api")]),
            ingress: Some(vec![rule(
                Some(vec![pods(sel(&[("tier", "web")]))]),
                Some(vec![tcp(8080), tcp(8443)]),
            )]),
            egress: Some(vec![rule(
                Some(vec![pods(sel(&[("tier", "db")]))]),
                Some(vec![tcp(5432)]),
            )]),
            ignored: Default::default(),
        },
        NetworkPolicy {
            key: key("allow-dns"),
            pod_selector: Selector::everything(),
            ingress: None,
            egress: Some(vec![rule(
                Some(vec![Peer::Pods {
                    namespaces: Some(sel(&[("kubernetes.io/metadata.name", "kube-system")])),
                    pods: sel(&[("k8s-app", "kube-dns")]),
                }]),
                Some(vec![
                    PortSpec {
                        protocol: Protocol::Udp,
                        port: PortRef::Range(53, 53),
                    },
                    tcp(53),
                ]),
            )]),
            ignored: Default::default(),
        },
        NetworkPolicy {
            key: key("egress-external"),
            pod_selector: sel(&[("tier", "api")]),
            ingress: None,
            egress: Some(vec![rule(
                Some(vec![Peer::IpBlock {
                    cidr: Prefix::new(Ipv4Addr::new(172, 16, (tenant % 256) as u8, 0), 24),
                    except: vec![Prefix::new(
                        Ipv4Addr::new(172, 16, (tenant % 256) as u8, 128),
                        28,
                    )],
                }]),
                Some(vec![tcp(443)]),
            )]),
            ignored: Default::default(),
        },
        NetworkPolicy {
            key: key("metrics-named-port"),
            pod_selector: Selector::everything(),
            ingress: Some(vec![rule(
                Some(vec![Peer::Pods {
                    namespaces: Some(sel(&[("kubernetes.io/metadata.name", "monitoring")])),
                    pods: Selector::everything(),
                }]),
                Some(vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: PortRef::Named("metrics".into()),
                }]),
            )]),
            egress: None,
            ignored: Default::default(),
        },
        NetworkPolicy {
            key: key("tenant-web"),
            pod_selector: sel(&[("tier", "web")]),
            ingress: Some(vec![rule(
                Some(vec![Peer::Pods {
                    namespaces: Some(Selector::new([Requirement {
                        key: "tenant".into(),
                        op: Operator::In([format!("t{tenant}")].into()),
                    }])),
                    pods: Selector::new([Requirement {
                        key: "tier".into(),
                        op: Operator::NotIn(["db".to_string()].into()),
                    }]),
                }]),
                Some(vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: PortRef::Named("http".into()),
                }]),
            )]),
            egress: None,
            ignored: Default::default(),
        },
    ];
    mix.into_iter()
        .cycle()
        .take(count)
        .enumerate()
        .map(|(n, mut p)| {
            if n >= 8 {
                p.key.name = format!("{}-{}", p.key.name, n / 8).into();
            }
            p
        })
        .collect()
}

/// The whole cluster as commands: namespaces, policies, then pods (the order a controller
/// replaying its log would see them does not matter for the result).
pub fn commands(shape: &Shape) -> impl Iterator<Item = Command> + '_ {
    let mut rng = Rng::new(shape.seed);
    let tenants = shape.namespaces.div_ceil(NAMESPACES_PER_TENANT);
    let system = ["kube-system", "ingress-nginx", "monitoring"]
        .into_iter()
        .map(|n| {
            let mut ns = Namespace::implicit(n);
            if n == "ingress-nginx" {
                ns.labels.insert("role".into(), "ingress".into());
            }
            Command::UpsertNamespace(ns)
        });
    let namespaces = (0..shape.namespaces)
        .map(move |i| Command::UpsertNamespace(namespace(i, i % tenants.max(1))));
    let per_ns = shape.policies / shape.namespaces.max(1);
    let extra = shape.policies % shape.namespaces.max(1);
    let policies = (0..shape.namespaces).flat_map(move |i| {
        policies(i, per_ns + usize::from(i < extra))
            .into_iter()
            .map(Command::UpsertPolicy)
    });
    let system_pods = (0..SYSTEM_PODS * 3).map(move |k| {
        let ns = ["kube-system", "ingress-nginx", "monitoring"][k / SYSTEM_PODS];
        let mut p = pod(
            ns,
            format!("sys-{k}"),
            0,
            k % shape.nodes.max(1),
            Ipv4Addr::from(0x0b00_0000u32 + k as u32),
        );
        if ns == "kube-system" {
            p.labels.insert("k8s-app".into(), "kube-dns".into());
        }
        Command::UpsertPod(p)
    });
    let pods = (0..shape.pods).map(move |k| {
        let ns = k % shape.namespaces.max(1);
        let app = (k / shape.namespaces.max(1)) % APPS_PER_NAMESPACE;
        let node = rng.below(shape.nodes);
        Command::UpsertPod(pod(&ns_name(ns), format!("pod-{k}"), app, node, pod_ip(k)))
    });
    system
        .chain(namespaces)
        .chain(policies)
        .chain(system_pods)
        .chain(pods)
}
