//! A flow's explanation ([`FlowReport`]) as text: the same for `evaluate --from --to`
//! (offline) and `explain` (online), as their JSON is the same document.

use std::fmt::Write as _;

use palisade_policy::report::{Check, FlowReport, Outcome, Part, Side};

fn side(s: &Side) -> String {
    match (&s.pod, &s.node) {
        (Some(p), Some(n)) => format!("{p} ({} on {n})", s.ip),
        (Some(p), None) => format!("{p} ({}, not scheduled)", s.ip),
        _ => format!("{} (not a pod)", s.ip),
    }
}

fn part(p: &Part) -> &'static str {
    if p.matched {
        "match"
    } else {
        "do not match"
    }
}

fn direction(out: &mut String, dir: &str, c: &Check) {
    let head = match &c.node {
        Some(n) => format!("  {dir:<7} (on {n})"),
        None => format!("  {dir:<7} (nowhere)"),
    };
    let endpoint = c.endpoint.as_deref().unwrap_or("?");
    let policies = c.policies.join(", ");
    match c.result {
        Outcome::NotChecked => {
            let _ = writeln!(
                out,
                "{head}: {}",
                c.reason.as_deref().unwrap_or("not checked")
            );
        }
        Outcome::NotIsolated => {
            let _ = writeln!(
                out,
                "{head}: {endpoint} is not isolated for {dir} (no policy selects it for {dir}): allowed"
            );
        }
        Outcome::Allowed => {
            let _ = writeln!(
                out,
                "{head}: {endpoint} is isolated for {dir} by {policies}; allowed by:"
            );
            for r in &c.allowed_by {
                let _ = writeln!(
                    out,
                    "      {} {}: {}; {}",
                    r.policy, r.rule, r.peers, r.ports
                );
            }
        }
        Outcome::Denied => {
            let _ = writeln!(
                out,
                "{head}: {endpoint} is isolated for {dir} by {policies} and no rule of theirs allows this flow: DENIED"
            );
            if c.not_matched.is_empty() {
                let _ = writeln!(
                    out,
                    "      (the isolating policies have no {dir} rules: they deny all {dir})"
                );
            }
            for m in &c.not_matched {
                let _ = writeln!(out, "      {} {}:", m.policy, m.rule);
                let _ = writeln!(out, "        peers {}: {}", part(&m.peers), m.peers.why);
                let _ = writeln!(out, "        ports {}: {}", part(&m.ports), m.ports.why);
            }
        }
    }
}

pub fn text(r: &FlowReport) -> String {
    let mut out = String::new();
    let verdict = if r.allowed { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(
        out,
        "{} -> {}  {}/{}: {verdict}",
        side(&r.from),
        side(&r.to),
        r.protocol,
        r.port
    );
    if r.self_traffic {
        let _ = writeln!(out, "  traffic from a pod to itself is always allowed");
        return out;
    }
    direction(&mut out, "egress", &r.egress);
    direction(&mut out, "ingress", &r.ingress);
    out
}
