//! The map layout shared by Palisade's TC programs (`dataplane-ebpf/ebpf`, built for the BPF
//! target) and the node agent (`palisade-agent`, which writes the maps from lowered slices and
//! reads counters and deny events back). Every key and value is `#[repr(C)]` with explicit
//! padding, so both sides agree byte for byte; addresses are kept as the four octets they have
//! on the wire.
//!
//! The policy maps follow `palisade_policy::lower`: an LPM trie from address to identity, an
//! LPM trie of 96-bit rule keys (endpoint, direction, identity, protocol, port), and endpoint
//! isolation flags by address. The remaining maps are the datapath's own state: connection
//! tracking, fragment tracking, the pod interfaces' addresses (anti-spoofing) and endpoints
//! (for frames of other address families), counters and deny events. docs/architecture.md ("The eBPF datapath") explains how a packet uses them.
#![no_std]

/// Map names (the kernel keeps 15 bytes of a name); each map is pinned under the agent's
/// bpffs directory by this name.
pub mod map_names {
    pub const ENDPOINTS: &str = "PAL_ENDPOINTS";
    pub const IDENTITIES: &str = "PAL_IDENTITIES";
    pub const RULES: &str = "PAL_RULES";
    pub const CONNTRACK: &str = "PAL_CT";
    pub const FRAGMENTS: &str = "PAL_FRAGS";
    pub const LOCAL: &str = "PAL_LOCAL";
    pub const IFACES: &str = "PAL_IFACES";
    pub const COUNTERS: &str = "PAL_COUNTERS";
    pub const EVENTS: &str = "PAL_EVENTS";
    pub const STATS: &str = "PAL_STATS";
}

/// Program names: `from_pod` runs at TC ingress of a pod's host-side veth (what the pod
/// sends: its egress), `to_pod` at TC egress (what the pod receives: its ingress).
pub mod program_names {
    pub const FROM_POD: &str = "from_pod";
    pub const TO_POD: &str = "to_pod";
}

/// Default map capacities, in entries. The agent can size them at load time
/// (`--max-endpoints` and friends); the sizes are reported to the controller in Hello.
pub mod defaults {
    pub const ENDPOINTS: u32 = 4096;
    pub const IDENTITIES: u32 = 65536;
    pub const RULES: u32 = 262144;
    pub const CONNTRACK: u32 = 262144;
    pub const FRAGMENTS: u32 = 8192;
    pub const LOCAL: u32 = 4096;
    pub const IFACES: u32 = 4096;
    pub const COUNTERS: u32 = 4096;
    /// Bytes of the deny-event ring buffer (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 20;
}

/// Direction codes, in rule keys, conntrack keys and events (same values as
/// `palisade_policy::lower`).
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// The wildcard identity ("any peer") and the identity of an address in no set.
pub const IDENTITY_ANY: u32 = 0;
pub const IDENTITY_WORLD: u32 = 1;

/// Bytes of a rule key's data: endpoint (4), direction (1), identity (4, big-endian),
/// protocol (1), port (2, big-endian).
pub const RULE_KEY_BYTES: usize = 12;
/// Bits of a full rule key.
pub const RULE_KEY_BITS: u32 = 96;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Endpoint flags: isolation per direction, and "failed closed" (the slice did not fit the
/// maps, so the endpoint is isolated with no rules; deny events say so).
pub const ENDPOINT_INGRESS_ISOLATED: u32 = 1;
pub const ENDPOINT_EGRESS_ISOLATED: u32 = 2;
pub const ENDPOINT_FAIL_CLOSED: u32 = 4;

/// Addresses of one pod interface held in [`IfaceEndpoint`].
pub const IFACE_ADDRS: usize = 4;

/// The endpoints a pod interface belongs to (`PAL_IFACES`, keyed by interface index): the
/// IPv4 addresses routed to it, keys of their `PAL_ENDPOINTS` entries. A frame that is not
/// IPv4 (IPv6, a VLAN tag, ...) carries no address Palisade enforces yet, so it is judged by
/// these endpoints' isolation: dropped where any of them is isolated in that direction
/// ([`DENY_FAMILY`]), except ARP and link-local IPv6 neighbour discovery, which addressing
/// needs. An interface with more addresses than fit (`count` > [`IFACE_ADDRS`]) is treated as
/// isolated both ways.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceEndpoint {
    pub addrs: [[u8; 4]; IFACE_ADDRS],
    pub count: u32,
}

/// One local endpoint's policy state, keyed by its address.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointState {
    pub flags: u32,
}

/// An address that a pod interface may send from: the node's /32 route to `addr` names the
/// interface `ifindex`. Packets leaving a pod interface from any other address are dropped.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalKey {
    pub ifindex: u32,
    pub addr: [u8; 4],
}

/// A connection as seen at one check point: its first packet's addresses and ports (ports in
/// host order; ICMP echo uses the identifier as the source port of a request and as the
/// destination port of a reply), and which check (ingress or egress of the local endpoint)
/// allowed it.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// Conntrack flag: a FIN or RST was seen, so the entry expires soon.
pub const CT_CLOSING: u32 = 1;

#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns` when the connection was last seen (refreshed at most once a second).
    pub last_seen_ns: u64,
    pub flags: u32,
    pub _pad: u32,
}

/// Idle timeouts of conntrack entries.
pub const CT_TIMEOUT_TCP_NS: u64 = 3600 * 1_000_000_000;
pub const CT_TIMEOUT_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_TIMEOUT_OTHER_NS: u64 = 120 * 1_000_000_000;
/// A conntrack entry's timestamp is rewritten only when older than this.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// The first fragment of a fragmented datagram, by IPv4 identification, so later fragments
/// (which carry no ports) get the ports of their first.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: u16,
    pub protocol: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Packets allowed and denied for one local endpoint (per CPU), keyed by its address.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ingress_allowed: u64,
    pub ingress_denied: u64,
    pub egress_allowed: u64,
    pub egress_denied: u64,
}

/// Why a packet was dropped.
pub const DENY_POLICY: u8 = 1;
pub const DENY_FAIL_CLOSED: u8 = 2;
pub const DENY_SPOOFED: u8 = 3;
/// A frame of an address family not enforced yet (IPv6 other than neighbour discovery, any
/// non-IP ethertype other than ARP) to or from an endpoint isolated in that direction.
pub const DENY_FAMILY: u8 = 4;

/// One dropped packet, written to the deny-event ring buffer.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    pub timestamp_ns: u64,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// The check that denied it: [`DIR_INGRESS`] or [`DIR_EGRESS`] of `endpoint`.
    pub direction: u8,
    pub reason: u8,
    pub _pad: u8,
    pub ifindex: u32,
    pub endpoint: [u8; 4],
}

/// Indexes of the per-CPU statistics array.
pub mod stats {
    /// Frames that are not IPv4 and passed: ARP, IPv6 neighbour discovery, and other frames
    /// of endpoints not isolated in that direction (the others are dropped and counted per
    /// endpoint as denied, with a [`DENY_FAMILY`](super::DENY_FAMILY) event).
    pub const NOT_IPV4: u32 = 0;
    /// Deny events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 1;
    /// Packets passed as replies of a tracked connection.
    pub const REPLIES: u32 = 2;
    /// ICMP errors passed because they belong to a tracked connection.
    pub const RELATED: u32 = 3;
    /// Packets that could not be parsed (truncated headers): dropped.
    pub const MALFORMED: u32 = 4;
    pub const COUNT: u32 = 5;
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain `#[repr(C)]` data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for EndpointState {}
    unsafe impl aya::Pod for LocalKey {}
    unsafe impl aya::Pod for IfaceEndpoint {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for DenyEvent {}
}
