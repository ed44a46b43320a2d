//! The hub's bookkeeping: realization, peers' tables, and that an ack waits for no reader.

use super::fixture::Applied;
use super::*;
use crate::testing::{batch, SHOP};

#[test]
fn realization_follows_the_applied_index_and_peers_acks() {
    let mut applied = Applied::new(1);
    let n1: Name = "n1".into();
    // Entry 1 is a new leader's empty entry, 2 changes n1, 3 and 4 change nothing.
    applied.apply(&[(1, None), (2, Some(batch(SHOP))), (3, None)]);
    applied.apply(&[(4, Some(batch("")))]);
    let hub = &applied.hub;
    let (version, digest) = hub.view().desired("n1");
    assert_eq!(version, 2);
    assert_eq!(
        hub.lock_progress().rollout.realized_through(),
        1,
        "n1 has not acked 2"
    );
    // Acked: everything applied is realized, up to the applied index (4), although the
    // engine's last change was at 2.
    hub.ack(&n1, 2, digest, None, None);
    assert_eq!(applied.state.engine().revision(), 2);
    assert_eq!(hub.lock_progress().rollout.realized_through(), 4);

    // Another replica's table: an ack of a version this one has not applied yet waits
    // until it has, then realizes it here too.
    let mut other = Applied::new(2);
    let record = acks::to_pb(
        &n1,
        Some(&acks::Record {
            version: 2,
            digest: Some(digest),
            connected: true,
            ..acks::Record::default()
        }),
    );
    // Decoded as the exchange decodes what a peer sends.
    let (changes, unreadable) = acks::decode(palisade_proto::v1::AckTable {
        epoch: 9,
        seq: 1,
        full: true,
        nodes: vec![record],
        applied: 2,
    });
    assert!(unreadable.is_empty());
    other.hub.merge_peer(1, changes);
    assert_eq!(other.hub.lock_progress().connected_at("n1"), Some(1));
    // It answered, with one agent, having applied revision 2 (what rebalancing counts).
    let within = std::time::Duration::from_secs(3);
    assert_eq!(
        other.hub.lock_progress().peers.answering(within),
        vec![(1, 2)]
    );
    other.apply(&[(1, None), (2, Some(batch(SHOP)))]);
    assert_eq!(other.hub.lock_progress().rollout.realized_through(), 2);
    assert_eq!(
        other
            .hub
            .lock_progress()
            .rollout
            .node("n1")
            .unwrap()
            .acked_version,
        2
    );
    // The peer unreachable: n1 no longer counts as connected; its ack stays.
    other.hub.peer_unreachable(1);
    assert_eq!(other.hub.lock_progress().connected_at("n1"), None);
    assert!(other.hub.lock_progress().peers.answering(within).is_empty());
    assert_eq!(other.hub.lock_progress().rollout.realized_through(), 2);

    // A node only a peer's stream named (no slice, no ack) goes when the peer forgets it.
    let ghost: Name = "ghost".into();
    let named = acks::Record {
        connected: true,
        ..acks::Record::default()
    };
    let table = |seq, nodes| {
        acks::decode(palisade_proto::v1::AckTable {
            epoch: 9,
            seq,
            full: false,
            nodes,
            applied: 2,
        })
        .0
    };
    other
        .hub
        .merge_peer(1, table(2, vec![acks::to_pb(&ghost, Some(&named))]));
    assert_eq!(other.hub.lock_progress().connected_at("ghost"), Some(1));
    assert!(other.hub.lock_progress().rollout.node("ghost").is_some());
    other
        .hub
        .merge_peer(1, table(3, vec![acks::to_pb(&ghost, None)]));
    assert_eq!(other.hub.lock_progress().connected_at("ghost"), None);
    assert!(other.hub.lock_progress().rollout.node("ghost").is_none());
    assert!(
        other.hub.lock_progress().rollout.node("n1").is_some(),
        "a node with a slice stays"
    );
}

#[test]
fn an_ack_waits_for_no_reader_of_the_applied_state() {
    let mut applied = Applied::new(1);
    applied.apply(&[(1, None), (2, Some(batch(SHOP)))]);
    let Applied { hub, state, reads } = applied;
    let hub = std::sync::Arc::new(hub);
    let (version, digest) = hub.view().desired("n1");
    // The apply thread, answering questions with the state it owns.
    let owner = std::thread::spawn(move || {
        while let Ok(read) = reads.receiver().recv() {
            read(&state);
        }
    });
    let (inside_tx, inside) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            // Holds the apply thread until told to let go (or, if the ack waited for it,
            // until the bound: then the ack below could not have finished first).
            hub.ask_blocking(move |st| {
                inside_tx.send(st.revision()).unwrap();
                release_rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .is_ok()
            })
        })
    };
    assert_eq!(inside.recv().unwrap(), 2);
    let outcome = hub.ack(&"n1".into(), version, digest, None, None);
    assert_eq!(hub.view().revision(), 2, "the view is read meanwhile");
    release.send(()).unwrap();
    assert_eq!(
        reader.join().unwrap().ok(),
        Some(true),
        "the ack finished while the apply thread was answering a reader"
    );
    assert!(matches!(outcome, AckOutcome::Recorded));
    assert_eq!(hub.progress(|p| p.rollout().realized_through()), 2);
    drop(hub);
    owner.join().unwrap();
}

#[test]
fn a_view_is_one_revision_whatever_is_applied_after_it() {
    let mut applied = Applied::new(1);
    applied.apply(&[(1, None), (2, Some(batch(SHOP)))]);
    let before = applied.hub.view();
    let (v2, d2) = before.desired("n1");
    applied.apply(&[(3, Some(batch(&crate::testing::pod("b", "n1", "10.0.0.2"))))]);
    // The view loaded before still reads revision 2, whole: its version, digest and history.
    assert_eq!((before.revision(), before.desired("n1")), (2, (v2, d2)));
    assert!(before.history().catch_up("n1", 3, &d2).is_none());
    // A view loaded now reads 3, and its history takes an agent from 2 to 3.
    let after = applied.hub.view();
    let (v3, d3) = after.desired("n1");
    assert_eq!((after.revision(), v3), (3, 3));
    assert_ne!(d3, d2);
    assert_eq!(after.digest_at("n1", 2), Some(d2));
    assert!(matches!(
        after.history().catch_up("n1", 2, &d2),
        Some(crate::history::Catchup::One(e)) if e.to == 3
    ));
}

#[test]
fn under_the_progress_lock_the_view_and_the_rollout_agree() {
    // An agent acks what a stream planned from the view; its ack is taken under the progress
    // lock, and must find the rollout expecting that version (else it is dropped as unknown
    // and the realized watermark stalls until the node changes again).
    let mut applied = Applied::new(1);
    applied.apply(&[(1, None), (2, Some(batch(SHOP)))]);
    let Applied {
        hub,
        mut state,
        reads: _reads,
    } = applied;
    let hub = std::sync::Arc::new(hub);
    let writer = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for i in 0..300u64 {
                let ip = format!("10.0.{}.{}", 1 + i / 200, 2 + i % 200);
                let pod = crate::testing::pod(&format!("p{i}"), "n1", &ip);
                state.apply(&*hub, &[(3 + i, Some(batch(&pod)))]);
            }
        })
    };
    let mut disagreed = Vec::new();
    while !writer.is_finished() {
        hub.progress(|p| {
            let seen = hub.view().desired("n1").0;
            let told = p.rollout().node("n1").map_or(0, |r| r.desired_version);
            if seen != told {
                disagreed.push((seen, told));
            }
        });
    }
    writer.join().unwrap();
    assert!(
        disagreed.is_empty(),
        "the view showed a version the rollout had not heard of: {:?}",
        &disagreed[..disagreed.len().min(5)]
    );
}
