//! Property tests of the datapath encoding's moving parts:
//! - identity numbers persist across updates, and never change meaning within one;
//! - a make-before-break plan ends at the new image, and every flow that both images allow
//!   stays allowed at every step in between;
//! - a slice that does not fit fails whole endpoints closed, and every other verdict is the
//!   slice's own.

#[path = "support/gen.rs"]
mod gen;

use std::collections::BTreeMap;

use proptest::prelude::*;

use palisade_policy::engine::Engine;
use palisade_policy::eval::{evaluate, Flow};
use palisade_policy::lower::{
    self, fit, lower_with, plan, Capacities, Identities, MapImage, Membership,
};

fn flows() -> Vec<Flow> {
    let ips = gen::probe_ips();
    let mut out = Vec::new();
    for &src in &ips {
        for &dst in &ips {
            for (protocol, port) in gen::probe_ports() {
                out.push(Flow {
                    src,
                    dst,
                    protocol,
                    port,
                });
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn updates_are_make_before_break(
        setup in prop::collection::vec(gen::command(), 0..30),
        commands in prop::collection::vec(gen::command(), 1..6),
    ) {
        let mut engine = Engine::load(1, setup);
        let flows = flows();
        let mut held: BTreeMap<&str, (MapImage, Identities)> = gen::NODES
            .iter()
            .map(|n| (*n, lower_with(&engine.slice(n), &Identities::default())))
            .collect();
        for (i, c) in commands.into_iter().enumerate() {
            engine.apply(2 + i as u64, c);
            for node in gen::NODES {
                let (old, old_ids) = &held[node];
                let slice = engine.slice(node);
                let (new, new_ids) = lower_with(&slice, old_ids);
                prop_assert_eq!(&new, &{ let mut n = lower::lower(&slice); renumber_like(&mut n, &new); n }, "same image up to numbering");
                let ops = plan(old, &new);
                let both: Vec<&Flow> = flows
                    .iter()
                    .filter(|f| lower::evaluate(old, f) && lower::evaluate(&new, f))
                    .collect();
                let mut mid = old.clone();
                for op in &ops {
                    mid.apply(op);
                    for f in &both {
                        prop_assert!(lower::evaluate(&mid, f), "{:?} dropped after {:?} on {}", f, op, node);
                    }
                }
                prop_assert_eq!(&mid, &new);
                prop_assert!(plan(&new, &new).is_empty());
                // A membership keeps its number, and no number means two memberships.
                let old_by_id: BTreeMap<u32, &Membership> = old_ids.iter().map(|(m, id)| (id, m)).collect();
                for (m, id) in new_ids.iter() {
                    if let Some(was) = old_ids.id(m) {
                        prop_assert_eq!(was, id);
                    }
                    if let Some(other) = old_by_id.get(&id) {
                        prop_assert_eq!(*other, m, "number {} changed meaning", id);
                    }
                }
                held.insert(node, (new, new_ids));
            }
        }
    }

    #[test]
    fn identities_read_back_from_maps_are_reused(setup in prop::collection::vec(gen::command(), 0..40)) {
        let engine = Engine::load(1, setup);
        for node in gen::NODES {
            let slice = engine.slice(node);
            let (image, _) = lower_with(&slice, &Identities::default());
            // An agent restarting over maps that already hold the slice changes nothing.
            let inferred = Identities::infer(&slice, &image.identities);
            let (again, _) = lower_with(&slice, &inferred);
            prop_assert!(plan(&image, &again).is_empty());
        }
    }

    #[test]
    fn a_slice_that_does_not_fit_fails_whole_endpoints_closed(
        setup in prop::collection::vec(gen::command(), 20..70),
        rules_cap in 0u64..40,
        identities_cap in 0u64..20,
    ) {
        let engine = Engine::load(1, setup);
        let flows = flows();
        for node in gen::NODES {
            let slice = engine.slice(node);
            let caps = Capacities { endpoints: None, identities: Some(identities_cap), rules: Some(rules_cap) };
            let fitted = fit(&slice, &Identities::default(), &caps).expect("endpoints are unlimited");
            prop_assert!(caps.holds(&fitted.image));
            let whole = lower::lower(&slice);
            if caps.holds(&whole) {
                prop_assert!(fitted.failed_closed.is_empty());
            }
            for f in &flows {
                let local_failed = [f.src, f.dst].iter().any(|ip| fitted.failed_closed.contains(ip));
                let got = lower::evaluate(&fitted.image, f);
                if local_failed && f.src != f.dst {
                    // Failed closed: nothing in, nothing out.
                    prop_assert!(!got, "{:?} passed a failed-closed endpoint on {}", f, node);
                } else {
                    prop_assert_eq!(got, evaluate(&slice, f).is_allow(), "{:?} on {}", f, node);
                }
            }
            for ip in &fitted.failed_closed {
                let flags = fitted.image.endpoints[ip];
                prop_assert!(flags.fail_closed && flags.ingress_isolated && flags.egress_isolated);
            }
        }
    }
}

/// `image` with its identity numbers replaced by those `like` gives the same prefixes, so two
/// numberings of one slice compare equal.
fn renumber_like(image: &mut MapImage, like: &MapImage) {
    let map: BTreeMap<u32, u32> = image
        .identities
        .iter()
        .map(|(p, id)| (*id, like.identities[p]))
        .collect();
    for id in image.identities.values_mut() {
        *id = map[id];
    }
    image.rules = image
        .rules
        .iter()
        .map(|r| {
            let mut r = *r;
            if let Some(n) = map.get(&r.identity) {
                r.identity = *n;
            }
            r
        })
        .collect();
}
