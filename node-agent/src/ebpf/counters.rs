//! The datapath's counters, read from the pinned maps for the agent's `/metrics`
//! ([`crate::metrics`]): packets
//! allowed and denied per local endpoint and direction (`PAL_COUNTERS`, per CPU, summed here)
//! and the programs' own statistics (`PAL_STATS`).

use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap};
use palisade_ebpf_common::{map_names, stats, Counters};

use super::EbpfError;

pub struct CounterReader {
    counters: PerCpuHashMap<MapData, [u8; 4], Counters>,
    stats: PerCpuArray<MapData, u64>,
}

/// (index, metric name, help) of each program statistic.
const STATS: [(u32, &str, &str); 5] = [
    (
        stats::NOT_IPV4,
        "datapath_not_ipv4",
        "Frames that are not IPv4 (ARP, IPv6): passed",
    ),
    (
        stats::EVENTS_LOST,
        "datapath_deny_events_lost",
        "Deny events lost to a full ring buffer",
    ),
    (
        stats::REPLIES,
        "datapath_replies",
        "Packets passed as replies of tracked connections",
    ),
    (
        stats::RELATED,
        "datapath_icmp_related",
        "ICMP errors passed for tracked connections",
    ),
    (
        stats::MALFORMED,
        "datapath_malformed",
        "Packets dropped as unparsable",
    ),
];

impl CounterReader {
    /// The counters of the dataplane pinned under `bpffs` (the agent's `--bpffs`).
    pub fn open(bpffs: &Path) -> Result<CounterReader, EbpfError> {
        let map = |name: &str| {
            MapData::from_pin(bpffs.join("maps").join(name))
                .map_err(|e| EbpfError::Read(format!("{name}: {e}")))
        };
        let counters = PerCpuHashMap::try_from(Map::PerCpuLruHashMap(map(map_names::COUNTERS)?))
            .map_err(|e| EbpfError::Read(e.to_string()))?;
        let stats = PerCpuArray::try_from(Map::PerCpuArray(map(map_names::STATS)?))
            .map_err(|e| EbpfError::Read(e.to_string()))?;
        Ok(CounterReader { counters, stats })
    }

    /// Per endpoint: the counters summed over CPUs.
    pub fn endpoints(&self) -> Vec<(Ipv4Addr, Counters)> {
        let mut out = Vec::new();
        for k in self.counters.keys().filter_map(Result::ok) {
            let Ok(per_cpu) = self.counters.get(&k, 0) else {
                continue;
            };
            let mut sum = Counters::default();
            for c in per_cpu.iter() {
                sum.ingress_allowed += c.ingress_allowed;
                sum.ingress_denied += c.ingress_denied;
                sum.egress_allowed += c.egress_allowed;
                sum.egress_denied += c.egress_denied;
            }
            out.push((Ipv4Addr::from(k), sum));
        }
        out.sort_by_key(|(ip, _)| *ip);
        out
    }

    /// The programs' statistics: (metric name without `_total`, help, count summed over CPUs).
    pub fn stats(&self) -> Vec<(&'static str, &'static str, u64)> {
        STATS
            .iter()
            .map(|(index, name, help)| {
                let n = self
                    .stats
                    .get(index, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, *help, n)
            })
            .collect()
    }
}
