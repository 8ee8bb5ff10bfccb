//! Injected faults: latency, 5xx, connection resets, hangs, 429 storms. Seeded, so runs repeat.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// What to inject into `/api/v2` requests (and `/oauth/token` with `include_oauth`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Added latency in milliseconds.
    pub latency_ms: u64,
    /// Extra latency drawn uniformly from `[0, latency_jitter_ms]`.
    pub latency_jitter_ms: u64,
    /// Share of requests (0–1) answered with a server error.
    pub error_rate: f64,
    /// The server errors to pick from.
    pub error_statuses: Vec<u16>,
    /// Share of requests whose connection is closed without a response.
    pub reset_rate: f64,
    /// Share of requests never answered (until `hang_ms` passes).
    pub hang_rate: f64,
    /// How long a hung request hangs.
    pub hang_ms: u64,
    /// Answer every API request 429 for this many seconds from when the faults are set.
    pub storm_secs: u64,
    /// The `Retry-After` during a storm.
    pub storm_retry_after_secs: u64,
    /// Apply faults to `/oauth/token` too.
    pub include_oauth: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            latency_jitter_ms: 0,
            error_rate: 0.0,
            error_statuses: vec![500, 502, 503, 504],
            reset_rate: 0.0,
            hang_rate: 0.0,
            hang_ms: 300_000,
            storm_secs: 0,
            storm_retry_after_secs: 5,
            include_oauth: false,
        }
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Nothing: serve it.
    None,
    /// Answer with this server error.
    Error(u16),
    /// Close the connection without answering.
    Reset,
    /// Never answer (within the hang time).
    Hang,
}

impl Faults {
    /// True when some fault is configured (the fast path skips the dice otherwise).
    pub fn any(&self) -> bool {
        self.latency_ms > 0
            || self.latency_jitter_ms > 0
            || self.error_rate > 0.0
            || self.reset_rate > 0.0
            || self.hang_rate > 0.0
    }

    /// Rolls the dice for one request; returns the latency to add and the fault.
    pub fn roll<R: Rng>(&self, rng: &mut R) -> (u64, Injected) {
        let latency = self.latency_ms
            + if self.latency_jitter_ms > 0 {
                rng.gen_range(0..=self.latency_jitter_ms)
            } else {
                0
            };
        let draw: f64 = rng.gen();
        let injected = if draw < self.reset_rate {
            Injected::Reset
        } else if draw < self.reset_rate + self.hang_rate {
            Injected::Hang
        } else if draw < self.reset_rate + self.hang_rate + self.error_rate
            && !self.error_statuses.is_empty()
        {
            Injected::Error(self.error_statuses[rng.gen_range(0..self.error_statuses.len())])
        } else {
            Injected::None
        };
        (latency, injected)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn shares_are_honoured_and_seeded_runs_repeat() {
        let faults = Faults {
            error_rate: 0.1,
            reset_rate: 0.05,
            hang_rate: 0.02,
            ..Faults::default()
        };
        let roll = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..10_000)
                .map(|_| faults.roll(&mut rng).1)
                .collect::<Vec<_>>()
        };
        let first = roll(9);
        assert_eq!(first, roll(9), "same seed, same faults");
        let count = |f: fn(&Injected) -> bool| first.iter().filter(|i| f(i)).count();
        let errors = count(|i| matches!(i, Injected::Error(_)));
        let resets = count(|i| *i == Injected::Reset);
        let hangs = count(|i| *i == Injected::Hang);
        assert!((800..1_200).contains(&errors), "{errors}");
        assert!((380..620).contains(&resets), "{resets}");
        assert!((120..280).contains(&hangs), "{hangs}");
    }
}
