//! Random schedules of faults, each replayed from its seed: no replica or agent diverges,
//! no agent moves back, and every run converges once the faults heal.
//! `PALISADE_HARNESS_RUNS` sets how many seeds (default 1,000), `PALISADE_HARNESS_SEED` runs
//! one seed alone (to replay a failure).

use palisade_harness::schedule;

#[test]
fn random_schedules_never_diverge_and_converge_once_healed() {
    let (first, runs) = match std::env::var("PALISADE_HARNESS_SEED") {
        Ok(seed) => (seed.parse().expect("a seed"), 1),
        Err(_) => (
            1,
            std::env::var("PALISADE_HARNESS_RUNS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(1_000u64),
        ),
    };
    let (mut proposed, mut crashes, mut cuts, mut settled) = (0, 0, 0, 0);
    for seed in first..first + runs {
        let out = schedule::run(seed, 300).unwrap_or_else(|e| panic!("{e}"));
        proposed += out.proposed;
        crashes += out.crashes;
        cuts += out.cuts;
        settled = settled.max(out.settled_in);
    }
    eprintln!(
        "{runs} schedules: {proposed} proposals taken, {crashes} crashes, {cuts} cuts; slowest to converge after healing: {settled} ticks"
    );
    assert!(
        proposed > 0 && crashes > 0 && cuts > 0,
        "the schedules did something"
    );
}
