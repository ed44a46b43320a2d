//! The lifecycle, stepped.

use super::*;

#[test]
fn a_leader_catches_up_before_it_leads_and_a_follower_waits() {
    let mut l = Lifecycle::default();
    assert_eq!(
        l.step(Event::Status {
            leader: false,
            term: 1
        }),
        Step::Follow
    );
    assert_eq!(
        l.step(Event::Status {
            leader: true,
            term: 2
        }),
        Step::CatchUp { term: 2 }
    );
    assert_eq!(
        l.step(Event::CaughtUp { term: 2, ok: false }),
        Step::Look,
        "not caught up in time: look at the status again"
    );
    assert_eq!(
        l.step(Event::CaughtUp { term: 2, ok: true }),
        Step::Lead { term: 2 }
    );
    assert_eq!(
        l.step(Event::Ended {
            how: Ended::Lost,
            lasted: Duration::from_secs(1)
        }),
        Step::Look
    );
}

#[test]
fn sessions_that_start_over_in_a_row_pause_longer_and_a_long_one_starts_the_count_over() {
    let mut l = Lifecycle::default();
    let restart = |lasted| Event::Ended {
        how: Ended::Restart("a proposal failed".into()),
        lasted,
    };
    let short = Duration::from_secs(2);
    let pauses: Vec<Step> = (0..7).map(|_| l.step(restart(short))).collect();
    assert_eq!(
        pauses,
        [1, 2, 4, 8, 16, 32, 32]
            .map(|s| Step::Pause(Duration::from_secs(s)))
            .to_vec()
    );
    assert_eq!(
        l.step(restart(HEALTHY_AFTER + short)),
        Step::Pause(Duration::from_secs(1)),
        "a session that lasted starts the count over"
    );
    l.step(restart(short));
    l.step(Event::Ended {
        how: Ended::Lost,
        lasted: short,
    });
    assert_eq!(
        l.step(restart(short)),
        Step::Pause(Duration::from_secs(1)),
        "losing leadership starts the count over"
    );
}
