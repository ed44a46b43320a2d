//! The proposal flow, stepped: waiters are plain numbers, the replica a closure.

use palisade_policy::model::Namespace;

use super::*;

fn ns(name: &str) -> Command {
    Command::UpsertNamespace(Namespace::implicit(name))
}

/// A replica that takes every proposal, numbering its entries.
fn taking(
    seq: &mut u64,
) -> impl FnMut(&str, Vec<Command>) -> Result<ProposalId, ProposeError> + '_ {
    move |_, _| {
        *seq += 1;
        Ok(ProposalId {
            replica: 1,
            term: 1,
            seq: *seq,
        })
    }
}

fn id(seq: u64) -> ProposalId {
    ProposalId {
        replica: 1,
        term: 1,
        seq,
    }
}

#[test]
fn a_large_proposal_enters_the_log_a_few_entries_at_a_time_and_is_answered_once() {
    let mut p: Proposals<u32> = Proposals::default();
    let parts: Vec<Vec<Command>> = (0..6).map(|i| vec![ns(&format!("n{i}"))]).collect();
    assert!(p.add("a".into(), parts, 7).is_none());
    let mut seq = 0;
    assert!(p.feed(taking(&mut seq)).is_none());
    assert_eq!(
        p.in_flight(),
        IN_FLIGHT,
        "no more than IN_FLIGHT uncommitted"
    );
    // Earlier entries gather what they refused; only the last one answers.
    let (refused, waiter) = p.committed(&id(1)).unwrap();
    assert!(waiter.is_none());
    refused.lock().unwrap().insert(
        (palisade_policy::k8s::Kind::Namespace, "n0".into()),
        "b".into(),
    );
    for i in 2..=4 {
        assert!(p.committed(&id(i)).unwrap().1.is_none());
    }
    assert!(p.feed(taking(&mut seq)).is_none());
    assert_eq!(p.in_flight(), 2, "the last two parts followed");
    assert!(p.committed(&id(5)).unwrap().1.is_none());
    let (refused, waiter) = p.committed(&id(6)).unwrap();
    assert_eq!(waiter, Some(7));
    assert_eq!(
        refused.lock().unwrap().len(),
        1,
        "the first entry's refusal is in the answer"
    );
}

#[test]
fn an_empty_proposal_is_answered_at_once() {
    let mut p: Proposals<u32> = Proposals::default();
    assert_eq!(p.add("a".into(), vec![], 3), Some(3));
    assert_eq!(p.in_flight(), 0);
}

#[test]
fn losing_leadership_tells_every_waiter_and_a_started_proposal_is_lost_not_refused() {
    let mut p: Proposals<u32> = Proposals::default();
    let big: Vec<Vec<Command>> = (0..6).map(|i| vec![ns(&format!("n{i}"))]).collect();
    p.add("a".into(), big, 1);
    p.add("a".into(), vec![vec![ns("x")]], 2);
    let mut seq = 0;
    p.feed(taking(&mut seq));
    // The replica is no longer the leader when the next part is proposed.
    for i in 1..=2 {
        p.committed(&id(i));
    }
    let stopped = p
        .feed(|_, _| Err(ProposeError::NotLeader { leader: Some(3) }))
        .expect("refused");
    let mut told = stopped.tell;
    told.sort_by_key(|(w, _)| *w);
    assert_eq!(
        told,
        vec![
            (1, ProposeFailed::Lost),
            (2, ProposeFailed::NotLeader { leader: Some(3) })
        ],
        "the big one has entries in the log (their fate is unknown); the small one never got there"
    );
    assert_eq!(stopped.why, ProposeFailed::NotLeader { leader: Some(3) });
    assert_eq!(p.in_flight(), 0);
    assert!(
        p.fail(ProposeFailed::Lost).is_empty(),
        "each waiter is told once"
    );
}

#[test]
fn a_dropped_proposal_refuses_what_waits_and_keeps_what_is_in_flight() {
    let mut p: Proposals<u32> = Proposals::default();
    p.add("a".into(), vec![vec![ns("a")]], 1);
    let mut seq = 0;
    p.feed(taking(&mut seq));
    p.add("a".into(), vec![vec![ns("b")]], 2);
    p.add("a".into(), vec![vec![ns("c")]], 3);
    let stopped = p
        .feed(|_, _| Err(ProposeError::Dropped("transferring leadership".into())))
        .expect("refused");
    assert_eq!(
        stopped.tell,
        vec![(2, ProposeFailed::Lost), (3, ProposeFailed::Lost)]
    );
    assert_eq!(p.in_flight(), 1, "what is in the log may still commit");
    assert_eq!(p.committed(&id(1)).unwrap().1, Some(1));
    // Leadership gone later: whoever still waits is told.
    p.add("a".into(), vec![vec![ns("d")]], 4);
    p.feed(taking(&mut seq));
    assert_eq!(p.fail(ProposeFailed::Lost), vec![(4, ProposeFailed::Lost)]);
}
