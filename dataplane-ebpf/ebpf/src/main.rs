//! Palisade's TC programs. `from_pod` runs at TC ingress of a pod's host-side veth (what the
//! pod sends: its egress), `to_pod` at TC egress (what the pod receives: its ingress). Both run
//! the same check with a constant number of map lookups, whatever the number of rules:
//!
//! 1. Frames that are not IPv4 carry no address enforced yet: ARP and IPv6 neighbour
//!    discovery (link-local only) pass (addressing needs them); anything else (IPv6,
//!    VLAN-tagged frames, ...) passes only if none of the interface's endpoints (`PAL_IFACES`)
//!    is isolated in that direction, and is dropped otherwise (`DENY_FAMILY`), so an isolated
//!    pod is never reachable, nor reaches out, around its IPv4 policy.
//! 2. `from_pod` drops packets whose source is not an address the node routes to this
//!    interface (`PAL_LOCAL`): a pod cannot borrow another pod's policy by spoofing.
//! 3. The packet's connection is looked up in conntrack (`PAL_CT`) at this check point, as a
//!    reply (the reversed tuple at the opposite check of the same endpoint) or forward.
//! 4. Policy: a reply passes if its connection's first packet would pass now (the opposite
//!    direction's check of this endpoint); anything else passes if this direction's check does.
//!    A check passes when the endpoint (`PAL_ENDPOINTS`) is not isolated in that direction, or
//!    a rule (`PAL_RULES`, LPM over endpoint|direction|identity|protocol|port) allows the
//!    peer's identity (`PAL_IDENTITIES`, LPM over the address) or the wildcard identity.
//! 5. Allowed connections are tracked so their replies pass; denied packets are counted
//!    (`PAL_COUNTERS`) and reported (`PAL_EVENTS`).
//!
//! Since the policy is consulted on every packet, a policy change applies to established
//! connections at their next packet, exactly as to new ones. ICMP: echo requests are checked
//! as protocol ICMP (only rules for every protocol allow them) and tracked, so their replies
//! pass; errors (unreachable, time exceeded, parameter problem, source quench) pass when the
//! packet they quote belongs to a tracked connection that is still allowed; anything else is
//! checked as a new ICMP packet. Non-first fragments take the ports of their first fragment.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use palisade_ebpf_common::{
    defaults, stats, Counters, CtEntry, CtKey, DenyEvent, EndpointState, FragKey, FragPorts,
    IfaceEndpoint, LocalKey, CT_CLOSING, CT_REFRESH_NS, CT_TIMEOUT_CLOSING_NS, CT_TIMEOUT_OTHER_NS,
    CT_TIMEOUT_TCP_NS, DENY_FAIL_CLOSED, DENY_FAMILY, DENY_POLICY, DENY_SPOOFED, DIR_EGRESS,
    DIR_INGRESS, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_FAIL_CLOSED, ENDPOINT_INGRESS_ISOLATED,
    IDENTITY_ANY, IDENTITY_WORLD, IFACE_ADDRS, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    RULE_KEY_BITS, RULE_KEY_BYTES,
};

#[map(name = "PAL_ENDPOINTS")]
static ENDPOINTS: HashMap<[u8; 4], EndpointState> = HashMap::pinned(defaults::ENDPOINTS, 0);
#[map(name = "PAL_IDENTITIES")]
static IDENTITIES: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(defaults::IDENTITIES, 0);
#[map(name = "PAL_RULES")]
static RULES: LpmTrie<[u8; RULE_KEY_BYTES], u32> = LpmTrie::pinned(defaults::RULES, 0);
#[map(name = "PAL_CT")]
static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(defaults::CONNTRACK, 0);
#[map(name = "PAL_FRAGS")]
static FRAGMENTS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(defaults::FRAGMENTS, 0);
#[map(name = "PAL_LOCAL")]
static LOCAL: HashMap<LocalKey, u32> = HashMap::pinned(defaults::LOCAL, 0);
#[map(name = "PAL_IFACES")]
static IFACES: HashMap<u32, IfaceEndpoint> = HashMap::pinned(defaults::IFACES, 0);
#[map(name = "PAL_COUNTERS")]
static COUNTERS: LruPerCpuHashMap<[u8; 4], Counters> =
    LruPerCpuHashMap::pinned(defaults::COUNTERS, 0);
#[map(name = "PAL_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(defaults::EVENTS_BYTES, 0);
#[map(name = "PAL_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV6_HLEN: usize = 40;
const NEXTHDR_ICMPV6: u8 = 58;
/// ICMPv6 router solicitation .. redirect: neighbour discovery (RFC 4861).
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;
const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_UNREACHABLE: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    check(&ctx, DIR_EGRESS).unwrap_or_else(|()| malformed())
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    check(&ctx, DIR_INGRESS).unwrap_or_else(|()| malformed())
}

#[inline(always)]
fn malformed() -> i32 {
    bump(stats::MALFORMED);
    DROP
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}

/// A packet's addresses, ports and protocol (ports in host order).
#[derive(Copy, Clone, PartialEq, Eq)]
struct Tuple {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    protocol: u8,
}

impl Tuple {
    #[inline(always)]
    fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            protocol: self.protocol,
        }
    }

    #[inline(always)]
    fn ct_key(&self, direction: u8) -> CtKey {
        CtKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            protocol: self.protocol,
            direction,
            _pad: [0; 2],
        }
    }
}

/// What the transport header says about the packet.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Kind {
    /// Can open a tracked connection (TCP, UDP, SCTP, ICMP echo, other protocols).
    Flow,
    /// An ICMP error quoting a packet of the connection `Tuple` (as that packet was sent).
    Related(Tuple),
    /// Checked as it is, never tracked (ICMP other than echo and errors).
    Untracked,
}

#[inline(always)]
fn opposite(direction: u8) -> u8 {
    if direction == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    }
}

#[inline(always)]
fn check(ctx: &TcContext, direction: u8) -> Result<i32, ()> {
    let ethertype: [u8; 2] = ctx.load(12).map_err(|_| ())?;
    let ethertype = u16::from_be_bytes(ethertype);
    if ethertype != ETH_P_IP {
        return Ok(other_family(ctx, direction, ethertype));
    }
    let ip: [u8; 20] = ctx.load(ETH_HLEN).map_err(|_| ())?;
    if ip[0] >> 4 != 4 {
        return Err(());
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(());
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let protocol = ip[9];
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let first_fragment = frag & 0x1fff == 0;
    let more_fragments = frag & 0x2000 != 0;
    let ip_id = u16::from_be_bytes([ip[4], ip[5]]);
    let l4 = ETH_HLEN + ihl;
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };

    let local = if direction == DIR_EGRESS { src } else { dst };
    if direction == DIR_EGRESS && unsafe { LOCAL.get(&LocalKey { ifindex, addr: src }) }.is_none() {
        let t = Tuple {
            src,
            dst,
            sport: 0,
            dport: 0,
            protocol,
        };
        return Ok(deny(&t, direction, local, ifindex, DENY_SPOOFED));
    }
    if src == dst {
        return Ok(PASS);
    }

    let mut tuple = Tuple {
        src,
        dst,
        sport: 0,
        dport: 0,
        protocol,
    };
    let mut kind = Kind::Flow;
    let mut tcp_flags = 0u8;
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let frag_key = FragKey {
                src,
                dst,
                id: ip_id,
                protocol,
                _pad: 0,
            };
            if first_fragment {
                let ports: [u8; 4] = ctx.load(l4).map_err(|_| ())?;
                tuple.sport = u16::from_be_bytes([ports[0], ports[1]]);
                tuple.dport = u16::from_be_bytes([ports[2], ports[3]]);
                if protocol == PROTO_TCP {
                    tcp_flags = ctx.load(l4 + 13).map_err(|_| ())?;
                }
                if more_fragments {
                    let ports = FragPorts {
                        sport: tuple.sport,
                        dport: tuple.dport,
                    };
                    let _ = FRAGMENTS.insert(&frag_key, &ports, 0);
                }
            } else if let Some(p) = unsafe { FRAGMENTS.get(&frag_key) } {
                tuple.sport = p.sport;
                tuple.dport = p.dport;
            }
        }
        PROTO_ICMP if first_fragment => {
            let icmp: [u8; 8] = ctx.load(l4).map_err(|_| ())?;
            let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
            match icmp[0] {
                ICMP_ECHO_REQUEST => tuple.sport = ident,
                ICMP_ECHO_REPLY => tuple.dport = ident,
                ICMP_UNREACHABLE
                | ICMP_SOURCE_QUENCH
                | ICMP_TIME_EXCEEDED
                | ICMP_PARAMETER_PROBLEM => {
                    kind = match quoted(ctx, l4 + 8) {
                        Some(q) => Kind::Related(q),
                        None => Kind::Untracked,
                    }
                }
                _ => kind = Kind::Untracked,
            }
        }
        _ => {}
    }

    let flags = match unsafe { ENDPOINTS.get(&local) } {
        Some(e) => e.flags,
        None => 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };

    // The check that decides, and the tuple it is asked about (as the connection's first
    // packet was sent).
    let (check_dir, asked) = match kind {
        Kind::Related(quoted_tuple) => {
            // An error travels back towards whoever sent the quoted packet: it belongs to the
            // connection the quoted packet opened at the opposite check of this endpoint.
            let opened_at = opposite(direction);
            let consistent = if direction == DIR_INGRESS {
                quoted_tuple.src == local
            } else {
                quoted_tuple.dst == local
            };
            if consistent && live(&quoted_tuple.ct_key(opened_at), now, 0) {
                bump(stats::RELATED);
                (opened_at, quoted_tuple)
            } else {
                (direction, icmp_only(&tuple))
            }
        }
        Kind::Untracked => (direction, icmp_only(&tuple)),
        Kind::Flow => {
            let reply_key = tuple.reversed().ct_key(opposite(direction));
            if live(&reply_key, now, tcp_flags) {
                bump(stats::REPLIES);
                (opposite(direction), tuple.reversed())
            } else {
                (direction, tuple)
            }
        }
    };
    let peer = if check_dir == DIR_EGRESS {
        asked.dst
    } else {
        asked.src
    };
    let allowed = allows(local, flags, check_dir, peer, asked.protocol, asked.dport);
    if !allowed {
        let reason = if flags & ENDPOINT_FAIL_CLOSED != 0 {
            DENY_FAIL_CLOSED
        } else {
            DENY_POLICY
        };
        return Ok(deny(&tuple, direction, local, ifindex, reason));
    }
    if kind == Kind::Flow && check_dir == direction {
        track(&tuple.ct_key(direction), now, tcp_flags);
    }
    count(local, direction, true);
    Ok(PASS)
}

/// A frame that is not IPv4: ARP and link-local neighbour discovery pass; anything else
/// passes only when none of the interface's endpoints is isolated in `direction`.
#[inline(always)]
fn other_family(ctx: &TcContext, direction: u8, ethertype: u16) -> i32 {
    let mut next_header = 0u8;
    if ethertype == ETH_P_ARP {
        bump(stats::NOT_IPV4);
        return PASS;
    }
    if ethertype == ETH_P_IPV6 && neighbour_discovery(ctx, &mut next_header) {
        bump(stats::NOT_IPV4);
        return PASS;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let wanted = if direction == DIR_INGRESS {
        ENDPOINT_INGRESS_ISOLATED
    } else {
        ENDPOINT_EGRESS_ISOLATED
    };
    // An interface the agent has not described, or with more addresses than fit: nothing is
    // known to be allowed.
    let (isolated, local) = match unsafe { IFACES.get(&ifindex) } {
        None => (true, [0; 4]),
        Some(e) => {
            let (addrs, count) = (e.addrs, e.count);
            if count == 0 || count as usize > IFACE_ADDRS {
                (true, addrs[0])
            } else {
                let mut isolated = false;
                let mut local = addrs[0];
                for (i, a) in addrs.iter().enumerate() {
                    if (i as u32) < count && !isolated {
                        if let Some(ep) = unsafe { ENDPOINTS.get(a) } {
                            if ep.flags & wanted != 0 {
                                isolated = true;
                                local = *a;
                            }
                        }
                    }
                }
                (isolated, local)
            }
        }
    };
    if !isolated {
        bump(stats::NOT_IPV4);
        return PASS;
    }
    let t = Tuple {
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: ethertype,
        protocol: next_header,
    };
    deny(&t, direction, local, ifindex, DENY_FAMILY)
}

/// Whether an IPv6 frame is neighbour discovery: ICMPv6 133..137, hop limit 255 (never
/// routed), to a link-local or link-scope multicast address (so it cannot leave the link).
/// Sets `next_header` either way.
#[inline(always)]
fn neighbour_discovery(ctx: &TcContext, next_header: &mut u8) -> bool {
    let Ok(ip6) = ctx.load::<[u8; 8]>(ETH_HLEN) else {
        return false;
    };
    *next_header = ip6[6];
    if ip6[6] != NEXTHDR_ICMPV6 || ip6[7] != 255 {
        return false;
    }
    let Ok(dst) = ctx.load::<[u8; 2]>(ETH_HLEN + 24) else {
        return false;
    };
    let link_local = dst[0] == 0xfe && dst[1] & 0xc0 == 0x80;
    let link_multicast = dst[0] == 0xff && dst[1] == 0x02;
    if !link_local && !link_multicast {
        return false;
    }
    match ctx.load::<u8>(ETH_HLEN + IPV6_HLEN) {
        Ok(t) => (ND_FIRST..=ND_LAST).contains(&t),
        Err(_) => false,
    }
}

/// The ports of the packet an ICMP error quotes, at `offset` (its IPv4 header).
#[inline(always)]
fn quoted(ctx: &TcContext, offset: usize) -> Option<Tuple> {
    let ip: [u8; 20] = ctx.load(offset).ok()?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let mut t = Tuple {
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        sport: 0,
        dport: 0,
        protocol: ip[9],
    };
    let l4: [u8; 6] = ctx.load(offset + ihl).ok()?;
    match t.protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            t.sport = u16::from_be_bytes([l4[0], l4[1]]);
            t.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        PROTO_ICMP if l4[0] == ICMP_ECHO_REQUEST => {
            t.sport = u16::from_be_bytes([l4[4], l4[5]]);
        }
        _ => return None,
    }
    Some(t)
}

/// An ICMP packet checked as itself: protocol ICMP, no ports.
#[inline(always)]
fn icmp_only(t: &Tuple) -> Tuple {
    Tuple {
        sport: 0,
        dport: 0,
        protocol: PROTO_ICMP,
        ..*t
    }
}

#[inline(always)]
fn timeout(protocol: u8, flags: u32) -> u64 {
    if flags & CT_CLOSING != 0 {
        CT_TIMEOUT_CLOSING_NS
    } else if protocol == PROTO_TCP || protocol == PROTO_SCTP {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_OTHER_NS
    }
}

/// Whether `key` is a live tracked connection; refreshes it (and marks it closing on a TCP FIN
/// or RST) when it is.
#[inline(always)]
fn live(key: &CtKey, now: u64, tcp_flags: u8) -> bool {
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return false;
    };
    let entry = unsafe { &mut *entry };
    if now.saturating_sub(entry.last_seen_ns) > timeout(key.protocol, entry.flags) {
        return false;
    }
    refresh(entry, now, tcp_flags);
    true
}

#[inline(always)]
fn refresh(entry: &mut CtEntry, now: u64, tcp_flags: u8) {
    if now.saturating_sub(entry.last_seen_ns) > CT_REFRESH_NS {
        entry.last_seen_ns = now;
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 && entry.flags & CT_CLOSING == 0 {
        entry.flags |= CT_CLOSING;
        entry.last_seen_ns = now;
    }
}

#[inline(always)]
fn track(key: &CtKey, now: u64, tcp_flags: u8) {
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        let entry = unsafe { &mut *entry };
        if now.saturating_sub(entry.last_seen_ns) > timeout(key.protocol, entry.flags) {
            // An expired connection reopened: start afresh.
            entry.flags = 0;
            entry.last_seen_ns = now;
        }
        refresh(entry, now, tcp_flags);
        return;
    }
    let closing = if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_CLOSING
    } else {
        0
    };
    let entry = CtEntry {
        last_seen_ns: now,
        flags: closing,
        _pad: 0,
    };
    let _ = CONNTRACK.insert(key, &entry, 0);
}

/// Whether `local`'s check in `direction` lets `peer` reach it with `protocol`/`port`.
#[inline(always)]
fn allows(
    local: [u8; 4],
    flags: u32,
    direction: u8,
    peer: [u8; 4],
    protocol: u8,
    port: u16,
) -> bool {
    let isolated = if direction == DIR_INGRESS {
        flags & ENDPOINT_INGRESS_ISOLATED
    } else {
        flags & ENDPOINT_EGRESS_ISOLATED
    };
    if isolated == 0 {
        return true;
    }
    let identity = match IDENTITIES.get(&Key::new(32, peer)) {
        Some(id) => *id,
        None => IDENTITY_WORLD,
    };
    rule(local, direction, identity, protocol, port)
        || rule(local, direction, IDENTITY_ANY, protocol, port)
}

#[inline(always)]
fn rule(local: [u8; 4], direction: u8, identity: u32, protocol: u8, port: u16) -> bool {
    let id = identity.to_be_bytes();
    let p = port.to_be_bytes();
    let data = [
        local[0], local[1], local[2], local[3], direction, id[0], id[1], id[2], id[3], protocol,
        p[0], p[1],
    ];
    RULES.get(&Key::new(RULE_KEY_BITS, data)).is_some()
}

#[inline(always)]
fn count(local: [u8; 4], direction: u8, allowed: bool) {
    let mut ptr = COUNTERS.get_ptr_mut(&local);
    if ptr.is_none() {
        let _ = COUNTERS.insert(&local, &Counters::default(), 0);
        ptr = COUNTERS.get_ptr_mut(&local);
    }
    let Some(c) = ptr else { return };
    let c = unsafe { &mut *c };
    match (direction == DIR_INGRESS, allowed) {
        (true, true) => c.ingress_allowed += 1,
        (true, false) => c.ingress_denied += 1,
        (false, true) => c.egress_allowed += 1,
        (false, false) => c.egress_denied += 1,
    }
}

#[inline(always)]
fn deny(t: &Tuple, direction: u8, local: [u8; 4], ifindex: u32, reason: u8) -> i32 {
    count(local, direction, false);
    let event = DenyEvent {
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        src: t.src,
        dst: t.dst,
        sport: t.sport,
        dport: t.dport,
        protocol: t.protocol,
        direction,
        reason,
        _pad: 0,
        ifindex,
        endpoint: local,
    };
    if EVENTS.output::<DenyEvent>(&event, 0).is_err() {
        bump(stats::EVENTS_LOST);
    }
    DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
