//! The agent's Prometheus metrics, read at each scrape so they are never stale: what the
//! agent holds and how its sync went (from its [`Status`]), with every dataplane; and with
//! the eBPF dataplane the datapath's counters too (packets per endpoint, program statistics).
//! Rendered as OpenMetrics text by `prometheus_client` ([`CONTENT_TYPE`]).

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::client::{Phase, Status};
use crate::ebpf::counters::CounterReader;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry holding the agent's collector (metric names start `palisade_agent_`).
pub fn registry(status: watch::Receiver<Status>, counters: Option<CounterReader>) -> Registry {
    let mut registry = Registry::with_prefix("palisade_agent");
    registry.register_collector(Box::new(AgentCollector {
        status,
        counters: counters.map(Mutex::new),
    }));
    registry
}

/// The OpenMetrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

struct AgentCollector {
    status: watch::Receiver<Status>,
    counters: Option<Mutex<CounterReader>>,
}

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCollector")
            .field("ebpf", &self.counters.is_some())
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    endpoint: String,
    direction: &'static str,
    verdict: &'static str,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for AgentCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.status.borrow().clone();
        {
            let g = ConstGauge::new(1i64);
            let mut m = e.encode_descriptor(
                "build_info",
                "The agent's version (always 1)",
                None,
                g.metric_type(),
            )?;
            g.encode(m.encode_family(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })?)?;
        }
        gauge(
            &mut e,
            "applied_version",
            "Version of the node's slice the dataplane holds (0: none yet)",
            s.version as i64,
        )?;
        {
            let g = ConstGauge::new(0i64);
            let mut m = e.encode_descriptor(
                "phase",
                "1 for the sync phase the agent is in (connecting, syncing, synced, backoff, stopped)",
                None,
                g.metric_type(),
            )?;
            for phase in Phase::ALL {
                ConstGauge::new(i64::from(s.phase == phase)).encode(m.encode_family(
                    &PhaseLabel {
                        phase: phase.as_str(),
                    },
                )?)?;
            }
        }
        for (name, help, v) in [
            (
                "sessions",
                "Sync sessions the controller accepted",
                s.connects,
            ),
            (
                "moves",
                "Moves to another controller replica after a failure",
                s.moves,
            ),
            (
                "snapshots_applied",
                "Full slices received and applied",
                s.snapshots,
            ),
            ("updates_applied", "Deltas received and applied", s.updates),
            ("keepalives", "Keepalives received", s.keepalives),
            ("acks", "Versions acknowledged", s.acks),
            (
                "nacks",
                "Versions that could not be applied (the last valid state stays)",
                s.nacks,
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        let Some(reader) = &self.counters else {
            return Ok(());
        };
        let reader = reader.lock().expect("counter reader lock poisoned");
        {
            let c = ConstCounter::new(0u64);
            let mut m = e.encode_descriptor(
                "packets",
                "Packets the TC programs passed or dropped, per local endpoint and direction",
                None,
                c.metric_type(),
            )?;
            for (ip, c) in reader.endpoints() {
                for (direction, verdict, n) in [
                    ("ingress", "allowed", c.ingress_allowed),
                    ("ingress", "denied", c.ingress_denied),
                    ("egress", "allowed", c.egress_allowed),
                    ("egress", "denied", c.egress_denied),
                ] {
                    let labels = PacketLabels {
                        endpoint: ip.to_string(),
                        direction,
                        verdict,
                    };
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, n) in reader.stats() {
            counter(&mut e, name, help, n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_status_as_it_is_now() {
        let (tx, rx) = watch::channel(Status::default());
        let registry = registry(rx, None);
        let text = render(&registry);
        assert!(
            text.contains("palisade_agent_applied_version 0\n"),
            "{text}"
        );
        assert!(
            text.contains("palisade_agent_build_info{version=\""),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        tx.send_modify(|s| {
            s.version = 7;
            s.phase = Phase::Synced;
            s.acks = 3;
        });
        let text = render(&registry);
        assert!(
            text.contains("palisade_agent_applied_version 7\n"),
            "{text}"
        );
        assert!(
            text.contains("palisade_agent_phase{phase=\"synced\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("palisade_agent_acks_total 3\n"), "{text}");
    }
}
