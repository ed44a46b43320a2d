//! Property tests of the compiler:
//! - incremental deltas applied to the old slices equal a full recompile, and the set of nodes
//!   reported changed is exactly the set whose slice differs;
//! - every engine delta equals `diff(old, new)`, and its digest equals the new slice's;
//! - cluster verdicts from compiled slices equal a naive reading of the policies;
//! - the lowered map image gives the same verdict as the slice on every probed flow;
//! - apply(diff(a, b), a) == b, and apply order does not matter for the final state;
//! - apply(compose(d1, d2), s) == apply(d2, apply(d1, s)), for arbitrary slices and for the
//!   chains of deltas the engine emits.

#[path = "support/gen.rs"]
mod gen;
#[path = "support/world.rs"]
mod world;

use std::collections::BTreeMap;

use proptest::prelude::*;

use palisade_policy::cluster::ClusterView;
use palisade_policy::delta::{apply, compose, diff, SliceDelta};
use palisade_policy::engine::Engine;
use palisade_policy::eval::{evaluate, Flow};
use palisade_policy::lower;
use palisade_policy::model::{Command, Name};
use palisade_policy::slice::NodeSlice;
use world::World;

fn all_slices(e: &Engine) -> BTreeMap<Name, NodeSlice> {
    gen::NODES
        .iter()
        .map(|n| (Name::from(*n), e.slice(n)))
        .collect()
}

/// Slices without their version (a full recompile assigns its own).
fn content(mut s: NodeSlice) -> NodeSlice {
    s.version = 0;
    s
}

fn check_sequence(setup: Vec<Command>, commands: Vec<Command>) -> Result<(), TestCaseError> {
    let mut world = World::default();
    setup.iter().for_each(|c| world.apply(c));
    let mut engine = Engine::load(1, setup);
    let mut rev = 1;
    for cmd in commands {
        rev += 1;
        let before = all_slices(&engine);
        world.apply(&cmd);
        let updates = engine.apply(rev, cmd.clone());
        let after = all_slices(&engine);
        let changed: Vec<&Name> = updates.iter().map(|u| &u.node).collect();
        let differ: Vec<&Name> = after
            .iter()
            .filter(|(n, s)| content((*s).clone()) != content(before[*n].clone()))
            .map(|(n, _)| n)
            .collect();
        prop_assert_eq!(&changed, &differ, "changed nodes after {:?}", cmd);
        for u in &updates {
            let old = &before[&u.node];
            let new = &after[&u.node];
            prop_assert_eq!(u.from_version, old.version);
            prop_assert_eq!(new.version, rev);
            prop_assert_eq!(&u.delta, &diff(old, new), "delta is canonical");
            let mut replay = old.clone();
            let acc =
                apply(&mut replay, &u.delta).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(content(replay), content(new.clone()));
            prop_assert_eq!(old.accumulator().plus(acc), new.accumulator());
            prop_assert_eq!(u.digest(), new.digest());
            prop_assert_eq!(u.from_digest(), old.digest());
            prop_assert!(!u.delta.is_empty());
        }
        for (n, s) in &after {
            prop_assert_eq!(
                engine
                    .node(n)
                    .map(|x| x.digest)
                    .unwrap_or_else(|| s.digest()),
                s.digest()
            );
        }
    }
    let full = Engine::load(rev, world.commands());
    for (n, s) in all_slices(&engine) {
        prop_assert_eq!(
            content(full.slice(&n)),
            content(s),
            "full recompile of node {}",
            n
        );
    }
    let again = Engine::load(rev, engine.objects());
    for (n, s) in all_slices(&engine) {
        prop_assert_eq!(
            content(again.slice(&n)),
            content(s),
            "reload from objects, node {}",
            n
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full_recompile(
        setup in prop::collection::vec(gen::command(), 0..25),
        commands in prop::collection::vec(gen::command(), 1..25),
    ) {
        check_sequence(setup, commands)?;
    }

    #[test]
    fn a_restored_engine_is_the_original(
        batches in prop::collection::vec(prop::collection::vec(gen::command(), 0..8), 1..8),
        more in prop::collection::vec(gen::command(), 0..8),
    ) {
        // An engine that went through several revisions, some changing no node.
        let mut e = Engine::new();
        for (i, b) in batches.into_iter().enumerate() {
            e.apply_batch(1 + 3 * i as u64, b);
        }
        let revision = e.revision() + 1;
        let mut restored = Engine::restore(revision, e.objects(), &e.node_versions()).unwrap();
        for n in gen::NODES {
            let (a, b) = (e.slice(n), restored.slice(n));
            prop_assert_eq!(a.digest(), b.digest(), "{}", n);
            prop_assert_eq!(&a, &b, "{}", n);
        }
        prop_assert_eq!(restored.node_versions(), e.node_versions());
        // And both go on alike.
        for (i, c) in more.into_iter().enumerate() {
            let r = revision + 1 + i as u64;
            prop_assert_eq!(e.apply(r, c.clone()), restored.apply(r, c));
        }
    }

    #[test]
    fn reapplying_an_object_changes_nothing(setup in prop::collection::vec(gen::command(), 1..30)) {
        let mut engine = Engine::load(1, setup);
        for (i, c) in engine.objects().into_iter().enumerate() {
            let updates = engine.apply(2 + i as u64, c);
            prop_assert!(updates.is_empty(), "{:?}", updates);
        }
    }

    #[test]
    fn verdicts_match_naive_reading(setup in prop::collection::vec(gen::command(), 5..60)) {
        let mut world = World::default();
        setup.iter().for_each(|c| world.apply(c));
        let engine = Engine::load(1, setup);
        let view = ClusterView::new(&engine);
        let mut ips = gen::probe_ips();
        ips.extend(world.peer_ips());
        for &src in &ips {
            for &dst in &ips {
                for (protocol, port) in gen::probe_ports() {
                    let flow = Flow { src, dst, protocol, port };
                    let got = view.explain(&flow).allowed;
                    let want = world.allowed(src, dst, protocol, port);
                    prop_assert_eq!(got, want, "{:?}\n{:#?}", flow, view.explain(&flow));
                    if port == 80 {
                        prop_assert_eq!(palisade_policy::cluster::explain_in(&engine, &flow), view.explain(&flow));
                    }
                }
            }
        }
    }

    #[test]
    fn lowered_maps_agree_with_slice_evaluation(setup in prop::collection::vec(gen::command(), 5..60)) {
        let engine = Engine::load(1, setup);
        let ips = gen::probe_ips();
        for node in gen::NODES {
            let slice = engine.slice(node);
            let image = lower::lower(&slice);
            prop_assert_eq!(&image, &lower::lower(&slice.clone()), "deterministic");
            for &src in &ips {
                for &dst in &ips {
                    for (protocol, port) in gen::probe_ports() {
                        let flow = Flow { src, dst, protocol, port };
                        prop_assert_eq!(lower::evaluate(&image, &flow), evaluate(&slice, &flow).is_allow(), "{:?} on {}", flow, node);
                    }
                }
            }
        }
    }

    #[test]
    fn diff_then_apply_round_trips(
        a in prop::collection::vec(gen::command(), 0..25),
        b in prop::collection::vec(gen::command(), 0..25),
    ) {
        let (ea, eb) = (Engine::load(1, a), Engine::load(1, b));
        for node in gen::NODES {
            let (sa, sb) = (ea.slice(node), eb.slice(node));
            let d = diff(&sa, &sb);
            let mut replay = sa.clone();
            let acc = apply(&mut replay, &d).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&replay.endpoints, &sb.endpoints);
            prop_assert_eq!(&replay.sets, &sb.sets);
            prop_assert_eq!(sa.accumulator().plus(acc).digest(), sb.digest());
            prop_assert_eq!(d.is_empty(), content(sa.clone()) == content(sb.clone()));
        }
    }

    #[test]
    fn command_order_within_a_batch_does_not_matter(
        objects in prop::collection::vec(gen::command(), 1..30),
        seed in any::<u64>(),
    ) {
        // Upserts of distinct objects commute: the last upsert of each object wins either way.
        let mut last: BTreeMap<String, Command> = BTreeMap::new();
        for c in objects {
            let key = match &c {
                Command::UpsertNamespace(n) => format!("ns/{}", n.name),
                Command::UpsertPod(p) => format!("pod/{}", p.key),
                Command::UpsertPolicy(p) => format!("pol/{}", p.key),
                _ => continue,
            };
            last.insert(key, c);
        }
        let forward: Vec<Command> = last.values().cloned().collect();
        let mut shuffled = forward.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let (e1, e2) = (Engine::load(1, forward), Engine::load(1, shuffled));
        for node in gen::NODES {
            prop_assert_eq!(e1.slice(node), e2.slice(node));
            prop_assert_eq!(e1.slice(node).encode(), e2.slice(node).encode());
        }
    }

    #[test]
    fn composed_diffs_apply_like_the_sequence(
        a in prop::collection::vec(gen::command(), 0..25),
        b in prop::collection::vec(gen::command(), 0..25),
        c in prop::collection::vec(gen::command(), 0..25),
    ) {
        let engines = [Engine::load(1, a), Engine::load(1, b), Engine::load(1, c)];
        for node in gen::NODES {
            let [sa, sb, sc] = engines.each_ref().map(|e| e.slice(node));
            let d = compose(&diff(&sa, &sb), &diff(&sb, &sc)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut replay = sa.clone();
            let acc = apply(&mut replay, &d).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&replay.endpoints, &sc.endpoints);
            prop_assert_eq!(&replay.sets, &sc.sets);
            prop_assert_eq!(sa.accumulator().plus(acc).digest(), sc.digest());
        }
    }

    #[test]
    fn composed_engine_updates_reach_the_latest_slice(
        setup in prop::collection::vec(gen::command(), 0..20),
        commands in prop::collection::vec(gen::command(), 1..40),
    ) {
        let mut engine = Engine::load(1, setup);
        let start = all_slices(&engine);
        let mut pending: BTreeMap<Name, SliceDelta> = BTreeMap::new();
        for (i, c) in commands.into_iter().enumerate() {
            for u in engine.apply(2 + i as u64, c) {
                let d = match pending.remove(&u.node) {
                    None => u.delta.clone(),
                    Some(prev) => compose(&prev, &u.delta).map_err(|e| TestCaseError::fail(e.to_string()))?,
                };
                pending.insert(u.node.clone(), d);
            }
        }
        for (node, end) in all_slices(&engine) {
            let mut replay = start[&node].clone();
            if let Some(d) = pending.get(&node) {
                apply(&mut replay, d).map_err(|e| TestCaseError::fail(format!("{node}: {e}")))?;
            }
            prop_assert_eq!(content(replay), content(end), "node {}", node);
        }
    }
}
