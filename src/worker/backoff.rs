//! Retry delays: capped exponential backoff with full jitter, honouring a server's Retry-After.

use std::time::Duration;

use rand::Rng;

use crate::genesys::cap_wait;

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
    /// spread out instead of arriving together. A server-given `retry_after` (capped at
    /// [`MAX_RETRY_AFTER`](crate::genesys::MAX_RETRY_AFTER)) is a floor, plus up to 10 % + 50 ms jitter so waiting workers do not
    /// all return at the same instant. Never panics, whatever the input.
    pub fn delay<R: Rng>(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        match retry_after {
            Some(wait) => {
                let wait = cap_wait(wait);
                wait.saturating_add(jitter(wait / 10 + Duration::from_millis(50), rng))
            }
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
    use crate::genesys::MAX_RETRY_AFTER;

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

    #[test]
    fn an_endless_retry_after_is_capped_without_panicking() {
        let mut rng = SmallRng::seed_from_u64(5);
        let delay = Backoff::default().delay(1, Some(Duration::MAX), &mut rng);
        assert!(delay >= MAX_RETRY_AFTER);
        assert!(delay <= MAX_RETRY_AFTER + MAX_RETRY_AFTER / 10 + Duration::from_millis(50));
    }

    mod header_to_pause {
        use chrono::Utc;
        use proptest::prelude::*;
        use rand::rngs::SmallRng;
        use rand::SeedableRng;

        use crate::genesys::Failure;
        use crate::genesys::{parse_retry_after, MAX_RETRY_AFTER};
        use crate::worker::backoff::Backoff;
        use crate::worker::decide::{decide, Attempt, Decision};
        use crate::worker::pacer::{Budget, Pacer};
        use std::time::Duration;

        fn header() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                any::<u64>().prop_map(|n| n.to_string()),
                "[0-9]{1,40}",
                "[ -~]{0,40}",
                any::<i64>().prop_map(|secs| {
                    let at = chrono::DateTime::from_timestamp(secs.rem_euclid(253_402_300_000), 0)
                        .unwrap_or_default();
                    at.to_rfc2822()
                }),
            ]
        }

        proptest! {
            #[test]
            fn any_retry_after_header_is_capped_and_never_panics(value in header(), seed: u64) {
                let ceiling = MAX_RETRY_AFTER + MAX_RETRY_AFTER / 10 + Duration::from_millis(50);
                let retry_after = parse_retry_after(&value);
                prop_assert!(retry_after.is_none_or(|wait| wait <= MAX_RETRY_AFTER));
                let mut rng = SmallRng::seed_from_u64(seed);
                let delay = Backoff::default().delay(1, retry_after, &mut rng);
                prop_assert!(delay <= ceiling.max(Backoff::default().ceiling(1)));
                let attempt = Attempt {
                    attempts: 1,
                    max_attempts: 5,
                    expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
                    consecutive_forbidden: 0,
                };
                let failure = Failure::RateLimited { retry_after };
                match decide(&failure, attempt, Utc::now(), &Backoff::default(), &mut rng) {
                    Decision::Retry { after, spend_attempt } => {
                        prop_assert!(!spend_attempt);
                        prop_assert!(after <= ceiling);
                    }
                    other => prop_assert!(false, "a rate limit retries: {other:?}"),
                }
                let pacer = Pacer::new(&Budget { shared: false, ..Budget::default() }, None);
                pacer.pause_for(retry_after.unwrap_or(Duration::MAX));
                prop_assert!(pacer.paused_for().is_none_or(|left| left <= MAX_RETRY_AFTER));
            }
        }
    }
}
