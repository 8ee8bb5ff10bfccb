//! Retry delays: capped exponential backoff with full jitter, honouring a server's Retry-After.

use std::time::Duration;

use rand::Rng;

/// How retry delays grow.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay ceiling for the first retry.
    pub base: Duration,
    /// No retry waits longer than this (Retry-After excepted).
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The ceiling for retry number `attempt` (1-based): `base · 2^(attempt−1)`, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exponent).min(self.cap)
    }

    /// A delay drawn uniformly from `[0, ceiling]` ("full jitter"), so retries after an outage
    /// spread out instead of arriving together. A server-given `retry_after` is a floor, plus
    /// up to 10 % jitter so waiting workers do not all return at the same instant.
    pub fn delay<R: Rng>(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        match retry_after {
            Some(wait) => wait + jitter(wait / 10 + Duration::from_millis(50), rng),
            None => jitter(self.ceiling(attempt), rng),
        }
    }
}

/// A uniformly random duration in `[0, upper]`.
pub fn jitter<R: Rng>(upper: Duration, rng: &mut R) -> Duration {
    if upper.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.gen_range(0..=upper.as_nanos().min(u64::MAX as u128) as u64))
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn ceilings_double_and_stop_at_the_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
        };
        let ceilings: Vec<u64> = (1..=6).map(|a| backoff.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.ceiling(1_000), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let backoff = Backoff::default();
        let mut rng = SmallRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(4, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= backoff.ceiling(4)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 150, "jitter spreads retries");
    }

    #[test]
    fn retry_after_is_a_floor_with_a_little_jitter() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            let delay = Backoff::default().delay(1, Some(Duration::from_secs(42)), &mut rng);
            assert!(delay >= Duration::from_secs(42));
            assert!(delay <= Duration::from_millis(42_000 + 4_200 + 50));
        }
    }
}
