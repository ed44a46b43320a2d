//! The stream's protocol, stepped against a real applied state (fed batches as the apply
//! thread feeds it, read through the view it publishes), with time passed in.

use std::time::{Duration, Instant};

use super::*;
use crate::hub::fixture::Applied;
use crate::testing::{batch, pod, SHOP};
use palisade_policy::model::Name;
use palisade_policy::{Digest, NodeSlice};

/// A state where node n1 changed at revisions 2 (shop, pod a), 3 (pod b) and 4 (pod c).
fn hub() -> Applied {
    let mut hub = Applied::new(1);
    hub.apply(&[(1, None), (2, Some(batch(SHOP)))]);
    hub.apply(&[(3, Some(batch(&pod("b", "n1", "10.0.0.2"))))]);
    hub.apply(&[(4, Some(batch(&pod("c", "n1", "10.0.0.3"))))]);
    hub
}

fn n1() -> Name {
    "n1".into()
}

fn desired(hub: &Applied) -> (u64, Digest) {
    hub.view().desired("n1")
}

fn digest_at(hub: &Applied, v: u64) -> Digest {
    hub.view().digest_at("n1", v).expect("known")
}

/// Plan and record the send, as the shell does.
fn send(s: &mut Session, hub: &Applied, now: Instant) -> Option<(Kind, u64, Sent)> {
    let planned = s.plan(&*hub.view())?;
    let kind = match planned.plan {
        Plan::Snapshot => Kind::Snapshot,
        _ => Kind::Update,
    };
    let sent = s.sent(kind, planned.desired, planned.digest, now);
    Some((kind, planned.desired, sent))
}

#[test]
fn a_new_agent_gets_its_slice_whole_then_each_change_as_recorded() {
    let mut hub = hub();
    let now = Instant::now();
    let mut s = Session::new(n1(), Knowledge::Holds(0, NodeSlice::empty("n1").digest()));
    assert!(s.due(4, now), "the Hello is always answered");
    assert_eq!(
        s.hello_ack(&*hub.view()),
        None,
        "holding nothing acks nothing"
    );
    let (kind, to, sent) = send(&mut s, &hub, now).unwrap();
    assert_eq!((kind, to), (Kind::Snapshot, 4));
    assert_eq!(
        sent,
        Sent {
            resumed: None,
            timed: false
        },
        "a first answer is not a resume and is not timed"
    );
    assert!(!s.due(4, now), "one unanswered update at a time");
    let acked = s.acked(4, now);
    assert_eq!(acked.sent, Some(desired(&hub).1));
    assert_eq!(acked.round_trip, None);
    assert_eq!(s.ack_outcome(&AckOutcome::Recorded, now), None);
    assert!(!s.due(4, now), "in sync");

    hub.apply(&[(5, Some(batch(&pod("d", "n1", "10.0.0.4"))))]);
    assert!(s.due(5, now));
    let planned = s.plan(&*hub.view()).unwrap();
    match &planned.plan {
        Plan::Recorded(e) => assert_eq!((e.from, e.to), (4, 5)),
        other => panic!("expected the recorded update 4→5, got {other:?}"),
    }
    let sent = s.sent(Kind::Update, planned.desired, planned.digest, now);
    assert!(sent.timed, "a change on a stream in sync is timed");
    let later = now + Duration::from_millis(7);
    assert_eq!(s.acked(5, later).round_trip, Some(Duration::from_millis(7)));
}

#[test]
fn an_agent_resuming_at_the_latest_version_is_confirmed_with_nothing_to_apply() {
    let hub = hub();
    let (v, d) = desired(&hub);
    let now = Instant::now();
    let mut s = Session::new(n1(), Knowledge::Holds(v, d));
    assert_eq!(
        s.hello_ack(&*hub.view()),
        Some((v, d)),
        "the Hello is an ack"
    );
    let planned = s.plan(&*hub.view()).unwrap();
    assert!(
        matches!(planned.plan, Plan::Empty { from, to, .. } if from == v && to == v),
        "{planned:?}"
    );
    let sent = s.sent(Kind::Update, planned.desired, planned.digest, now);
    assert_eq!(sent.resumed, Some("current"));
    s.acked(v, now);
    assert!(!s.due(v, now));
    assert!(
        s.plan(&*hub.view()).is_none(),
        "caught up: nothing more to confirm"
    );
}

#[test]
fn an_agent_resuming_behind_gets_the_updates_since_its_version() {
    let hub = hub();
    let now = Instant::now();
    let mut s = Session::new(n1(), Knowledge::Holds(2, digest_at(&hub, 2)));
    let planned = s.plan(&*hub.view()).unwrap();
    match &planned.plan {
        Plan::Chain(entries) => assert_eq!(
            entries.iter().map(|e| (e.from, e.to)).collect::<Vec<_>>(),
            [(2, 3), (3, 4)]
        ),
        other => panic!("expected the chain 2→3→4, got {other:?}"),
    }
    assert_eq!(planned.desired, 4);
    let sent = s.sent(Kind::Update, planned.desired, planned.digest, now);
    assert_eq!(sent.resumed, Some("delta"));

    // One version behind: the one recorded update.
    let mut s = Session::new(n1(), Knowledge::Holds(3, digest_at(&hub, 3)));
    assert!(matches!(
        s.plan(&*hub.view()).unwrap().plan,
        Plan::Recorded(_)
    ));
}

#[test]
fn what_the_history_cannot_vouch_for_gets_a_snapshot_unless_the_content_is_the_same() {
    let hub = hub();
    let (v, d) = desired(&hub);
    // A version the history never held, with another digest: a snapshot.
    let mut s = Session::new(n1(), Knowledge::Holds(99, Digest([7; 32])));
    assert_eq!(s.hello_ack(&*hub.view()), None);
    assert!(matches!(s.plan(&*hub.view()).unwrap().plan, Plan::Snapshot));
    // The same content under another version (a controller restarted): moved to the
    // current version without any policy.
    let mut s = Session::new(n1(), Knowledge::Holds(99, d));
    let planned = s.plan(&*hub.view()).unwrap();
    assert!(
        matches!(planned.plan, Plan::Empty { from: 99, to, .. } if to == v),
        "{planned:?}"
    );
}

#[test]
fn divergent_acks_get_snapshots_with_a_growing_back_off() {
    let hub = hub();
    let (v, d) = desired(&hub);
    let mut now = Instant::now();
    let mut s = Session::new(n1(), Knowledge::Holds(0, NodeSlice::empty("n1").digest()));
    let diverged = AckOutcome::Diverged { expected: d };
    let mut waits = vec![];
    for _ in 0..4 {
        assert!(s.due(v, now));
        let (kind, _, _) = send(&mut s, &hub, now).unwrap();
        assert_eq!(kind, Kind::Snapshot);
        s.acked(v, now);
        waits.push(s.ack_outcome(&diverged, now).unwrap());
        assert_eq!(s.holds(), Knowledge::Unknown);
        if let Some(until) = s.hold_until().filter(|t| *t > now) {
            assert!(!s.due(v, now), "held back");
            now = until;
            s.hold_over();
        }
    }
    assert_eq!(
        waits[0],
        Duration::ZERO,
        "the first divergence is retried at once"
    );
    assert!(
        waits[1] > Duration::ZERO && waits[2] > waits[1] && waits[3] > waits[2],
        "{waits:?}"
    );
    assert_eq!(s.divergences(), 4);
    s.acked(v, now);
    s.ack_outcome(&AckOutcome::Recorded, now);
    assert_eq!(
        s.divergences(),
        0,
        "an ack that agrees starts the count over"
    );
}

#[test]
fn a_refused_snapshot_is_not_sent_again_until_the_node_changes() {
    let mut hub = hub();
    let now = Instant::now();
    let mut s = Session::new(n1(), Knowledge::Holds(0, NodeSlice::empty("n1").digest()));
    send(&mut s, &hub, now).unwrap();
    s.nacked(4);
    assert_eq!(s.holds(), Knowledge::Unknown);
    assert!(!s.due(4, now), "the same snapshot would be refused again");
    hub.apply(&[(5, Some(batch(&pod("d", "n1", "10.0.0.4"))))]);
    assert!(s.due(5, now));
    let (kind, to, _) = send(&mut s, &hub, now).unwrap();
    assert_eq!((kind, to), (Kind::Snapshot, 5));
}

#[test]
fn a_refused_update_is_followed_by_a_snapshot() {
    let hub = hub();
    let now = Instant::now();
    let mut s = Session::new(n1(), Knowledge::Holds(3, digest_at(&hub, 3)));
    let (kind, _, _) = send(&mut s, &hub, now).unwrap();
    assert_eq!(kind, Kind::Update);
    s.nacked(4);
    assert!(
        s.due(4, now),
        "the agent's state is unknown: a snapshot is due"
    );
    assert_eq!(send(&mut s, &hub, now).unwrap().0, Kind::Snapshot);
}

#[test]
fn an_ack_of_an_older_version_leaves_the_update_unanswered() {
    let hub = hub();
    let now = Instant::now();
    let mut s = Session::new(n1(), Knowledge::Holds(3, digest_at(&hub, 3)));
    send(&mut s, &hub, now).unwrap();
    let acked = s.acked(3, now);
    assert_eq!(acked.sent, None, "3 was not what this session sent");
    assert!(!s.due(4, now), "4 is still unanswered");
    assert_eq!(s.ack_outcome(&AckOutcome::Unknown, now), None);
    assert_eq!(s.acked(4, now).sent, Some(desired(&hub).1));
    assert!(!s.due(4, now));
    // An ack nobody can check is not taken: a snapshot follows.
    s.ack_outcome(&AckOutcome::Unverified, now);
    assert!(s.due(4, now));
}
