//! The one exponential back-off of Palisade's retry loops: the agent reconnecting to a
//! controller, a replica's Raft links and ack exchange, the manifests and Kubernetes sources
//! retrying, a sync stream after divergent acks. Each loop keeps its own count of failures
//! in a row (its state is its own: a pure machine's field, or a loop variable) and asks
//! [`Backoff::delay`] for the wait before attempt `n`; nothing here sleeps or reads a clock.
//!
//! The schedule is `first · 2^n`, capped at `max`, then jittered as chosen: none (the exact
//! ceiling, for loops whose timing tests pin down), `Half` (drawn from the upper half of the
//! ceiling: spread, yet never much shorter) or `Full` (drawn from zero to the ceiling: many
//! clients failing at once, such as thousands of agents losing their replica, spread out).

use std::time::Duration;

/// How a delay is drawn below its ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// The ceiling itself.
    None,
    /// Uniform in the upper half of the ceiling.
    Half,
    /// Uniform from zero to the ceiling.
    Full,
}

/// An exponential back-off schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay (attempt 0).
    pub first: Duration,
    /// No delay is longer.
    pub max: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    /// `first · 2^n` capped at `max` (at least `first`), without jitter.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            jitter: Jitter::None,
        }
    }

    /// The same schedule with `jitter`.
    pub const fn with_jitter(self, jitter: Jitter) -> Backoff {
        Backoff { jitter, ..self }
    }

    /// The longest delay after `attempt` failures in a row (0: the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 times any first delay is past any sensible max: the multiplication saturates.
        self.first
            .saturating_mul(1u32 << attempt.min(31))
            .min(self.max.max(self.first))
    }

    /// The delay after `attempt` failures in a row, jittered (randomly).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_at(attempt, fastrand::f64())
    }

    /// The delay after `attempt` failures in a row for a draw `unit` in `[0, 1)`.
    pub fn delay_at(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let unit = unit.clamp(0.0, 1.0);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Half => ceiling / 2 + (ceiling / 2).mul_f64(unit),
            Jitter::Full => ceiling.mul_f64(unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_first_to_max() {
        let b = Backoff::new(100 * MS, 1600 * MS);
        let delays: Vec<_> = (0..7).map(|n| b.delay(n)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 1600, 1600].map(|m| m * MS)
        );
        // Far past any cap, and a max below first: never shorter than first, never a panic.
        assert_eq!(b.delay(u32::MAX), 1600 * MS);
        assert_eq!(Backoff::new(MS * 500, MS).delay(3), 500 * MS);
        assert_eq!(
            Backoff::new(Duration::MAX, Duration::MAX).delay(40),
            Duration::MAX
        );
    }

    #[test]
    fn jitter_stays_within_its_band_for_any_draw() {
        let half = Backoff::new(100 * MS, 10_000 * MS).with_jitter(Jitter::Half);
        let full = half.with_jitter(Jitter::Full);
        for attempt in 0..20 {
            let ceiling = half.ceiling(attempt);
            for i in 0..=100 {
                let unit = f64::from(i) / 100.0;
                let h = half.delay_at(attempt, unit);
                assert!(h >= ceiling / 2 && h <= ceiling, "{attempt} {unit}: {h:?}");
                let f = full.delay_at(attempt, unit);
                assert!(f <= ceiling, "{attempt} {unit}: {f:?}");
            }
            let drawn = full.delay(attempt);
            assert!(drawn <= ceiling);
        }
        assert_eq!(full.delay_at(3, 0.0), Duration::ZERO);
        assert_eq!(half.delay_at(3, 0.0), 400 * MS);
    }
}
