//! The hub's bookkeeping: realization, peers' tables, and which lock an ack takes.

use super::*;
use crate::testing::{batch, SHOP};

#[test]
fn realization_follows_the_applied_index_and_peers_acks() {
    let hub = Hub::new(1, Machine::new(), Limits::default(), Metrics::new());
    let n1: Name = "n1".into();
    // Entry 1 is a new leader's empty entry, 2 changes n1, 3 and 4 change nothing.
    hub.apply(&[(1, None), (2, Some(batch(SHOP))), (3, None)]);
    hub.apply(&[(4, Some(batch("")))]);
    let (version, digest) = hub.lock().desired("n1");
    assert_eq!(version, 2);
    assert_eq!(
        hub.lock_progress().rollout.realized_through(),
        1,
        "n1 has not acked 2"
    );
    // Acked: everything applied is realized, up to the applied index (4), although the
    // engine's last change was at 2.
    hub.ack(&n1, 2, digest, None, None);
    assert_eq!(hub.lock().engine().revision(), 2);
    assert_eq!(hub.lock_progress().rollout.realized_through(), 4);

    // Another replica's table: an ack of a version this one has not applied yet waits
    // until it has, then realizes it here too.
    let other = Hub::new(2, Machine::new(), Limits::default(), Metrics::new());
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
    other.merge_peer(1, changes);
    assert_eq!(other.lock_progress().connected_at("n1"), Some(1));
    // It answered, with one agent, having applied revision 2 (what rebalancing counts).
    let within = std::time::Duration::from_secs(3);
    assert_eq!(other.lock_progress().peers.answering(within), vec![(1, 2)]);
    other.apply(&[(1, None), (2, Some(batch(SHOP)))]);
    assert_eq!(other.lock_progress().rollout.realized_through(), 2);
    assert_eq!(
        other
            .lock_progress()
            .rollout
            .node("n1")
            .unwrap()
            .acked_version,
        2
    );
    // The peer unreachable: n1 no longer counts as connected; its ack stays.
    other.peer_unreachable(1);
    assert_eq!(other.lock_progress().connected_at("n1"), None);
    assert!(other.lock_progress().peers.answering(within).is_empty());
    assert_eq!(other.lock_progress().rollout.realized_through(), 2);

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
    other.merge_peer(1, table(2, vec![acks::to_pb(&ghost, Some(&named))]));
    assert_eq!(other.lock_progress().connected_at("ghost"), Some(1));
    assert!(other.lock_progress().rollout.node("ghost").is_some());
    other.merge_peer(1, table(3, vec![acks::to_pb(&ghost, None)]));
    assert_eq!(other.lock_progress().connected_at("ghost"), None);
    assert!(other.lock_progress().rollout.node("ghost").is_none());
    assert!(
        other.lock_progress().rollout.node("n1").is_some(),
        "a node with a slice stays"
    );
}

#[test]
fn an_ack_waits_for_no_reader_of_the_applied_state() {
    let hub = std::sync::Arc::new(Hub::new(
        1,
        Machine::new(),
        Limits::default(),
        Metrics::new(),
    ));
    hub.apply(&[(1, None), (2, Some(batch(SHOP)))]);
    let (version, digest) = hub.read(|st| st.desired("n1"));
    let (inside_tx, inside) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            // Holds the state's lock until told to let go (or, if the ack waited for it,
            // until the bound: then the ack below could not have finished first).
            hub.read(|_| {
                inside_tx.send(()).unwrap();
                release_rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .is_ok()
            })
        })
    };
    inside.recv().unwrap();
    let outcome = hub.ack(&"n1".into(), version, digest, Some(digest), None);
    release.send(()).unwrap();
    assert!(
        reader.join().unwrap(),
        "the ack finished while the state was being read"
    );
    assert!(matches!(outcome, AckOutcome::Recorded));
    assert_eq!(hub.progress(|p| p.rollout().realized_through()), 2);
}
