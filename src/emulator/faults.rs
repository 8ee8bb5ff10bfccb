//! Injected faults: latency, 5xx, connection resets, hangs, 429 storms, faults that fire after
//! the request was applied, 403s and login outages. Seeded, so runs repeat.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// What to inject into `/api/v2` requests (and `/oauth/token` with `include_oauth`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
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
    /// Share of requests the server applies only `late_apply_ms` after they arrived, while
    /// their client gets no answer (within the hang time): a request its client gave up on that
    /// the server still carries out, after requests sent later.
    pub late_apply_rate: f64,
    /// How long after its arrival a late request is applied.
    pub late_apply_ms: u64,
    /// Answer every API request 429 for this many seconds from when the faults are set.
    pub storm_secs: u64,
    /// The `Retry-After` during a storm.
    pub storm_retry_after_secs: u64,
    /// Apply faults to `/oauth/token` too.
    pub include_oauth: bool,
    /// Share of requests served (a PATCH is applied) whose connection is then closed without
    /// the response: the client cannot tell whether the request took effect.
    pub apply_then_reset_rate: f64,
    /// Share of requests served (a PATCH is applied) that are then answered with a server
    /// error from `error_statuses` instead of their own response.
    pub apply_then_error_rate: f64,
    /// Answer every authenticated `/api/v2` request (except `/api/v2/tokens/me`, which needs no
    /// permission) 403 `missing.permissions`, as when the client's role lost its permissions.
    pub missing_permissions: bool,
    /// Answer `/oauth/token` 503 for this many seconds from when the faults are set.
    pub login_outage_secs: u64,
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
            late_apply_rate: 0.0,
            late_apply_ms: 1_000,
            storm_secs: 0,
            storm_retry_after_secs: 5,
            include_oauth: false,
            apply_then_reset_rate: 0.0,
            apply_then_error_rate: 0.0,
            missing_permissions: false,
            login_outage_secs: 0,
        }
    }
}

/// Why a fault set in JSON was refused (the admin API answers 400 with it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    /// The body is not a JSON object.
    #[error("the faults must be a JSON object of fields")]
    NotAnObject,
    /// Fields no fault set has (misspelt ones, most often).
    #[error("unknown fault field(s): {}; the fields are: {}", .unknown.join(", "), .known.join(", "))]
    UnknownFields {
        /// The fields refused.
        unknown: Vec<String>,
        /// Every field a fault set has.
        known: Vec<String>,
    },
    /// A known field with a value of the wrong type.
    #[error("invalid faults: {0}")]
    Invalid(String),
}

impl Faults {
    /// Every field a fault set has, in order.
    pub fn field_names() -> Vec<String> {
        match serde_json::to_value(Faults::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// A whole fault set (`PUT`): fields not given take their defaults; every unknown field is
    /// refused and named.
    pub fn from_json(body: &serde_json::Value) -> Result<Faults, FaultsError> {
        Faults::default().merged(body)
    }

    /// These faults with the fields `patch` gives replaced (`PATCH`); every unknown field is
    /// refused and named.
    pub fn merged(&self, patch: &serde_json::Value) -> Result<Faults, FaultsError> {
        let serde_json::Value::Object(fields) = patch else {
            return Err(FaultsError::NotAnObject);
        };
        let known = Faults::field_names();
        let unknown: Vec<String> = fields
            .keys()
            .filter(|key| !known.contains(key))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(FaultsError::UnknownFields { unknown, known });
        }
        let mut merged = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        merged.extend(fields.clone());
        serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|error| FaultsError::Invalid(error.to_string()))
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Nothing: serve it.
    None,
    /// Answer with this server error.
    Error(u16),
    /// Close the connection without answering.
    Reset,
    /// Never answer (within the hang time).
    Hang,
    /// Serve the request, then close the connection without the response.
    ResetAfter,
    /// Serve the request, then answer with this server error instead.
    ErrorAfter(u16),
    /// Give no answer (within the hang time), and serve the request later.
    LateApply,
}

#[cfg(test)]
impl Injected {
    /// True for the faults that fire after the request was served.
    fn after_serving(self) -> bool {
        matches!(self, Injected::ResetAfter | Injected::ErrorAfter(_))
    }
}

impl Faults {
    /// True when some fault is configured (the fast path skips the dice otherwise).
    pub(crate) fn any(&self) -> bool {
        self.latency_ms > 0
            || self.latency_jitter_ms > 0
            || self.error_rate > 0.0
            || self.reset_rate > 0.0
            || self.hang_rate > 0.0
            || self.late_apply_rate > 0.0
            || self.apply_then_reset_rate > 0.0
            || self.apply_then_error_rate > 0.0
    }

    /// Rolls the dice for one request; returns the latency to add and the fault.
    pub(crate) fn roll<R: Rng>(&self, rng: &mut R) -> (u64, Injected) {
        let latency = self.latency_ms
            + if self.latency_jitter_ms > 0 {
                rng.gen_range(0..=self.latency_jitter_ms)
            } else {
                0
            };
        let draw: f64 = rng.gen();
        let mut edge = 0.0;
        let mut hit = |rate: f64| {
            let low = edge;
            edge += rate;
            draw >= low && draw < edge
        };
        let injected = if hit(self.reset_rate) {
            Injected::Reset
        } else if hit(self.hang_rate) {
            Injected::Hang
        } else if hit(self.late_apply_rate) {
            Injected::LateApply
        } else if hit(self.error_rate) {
            self.pick_status(rng)
                .map_or(Injected::None, Injected::Error)
        } else if hit(self.apply_then_reset_rate) {
            Injected::ResetAfter
        } else if hit(self.apply_then_error_rate) {
            self.pick_status(rng)
                .map_or(Injected::None, Injected::ErrorAfter)
        } else {
            Injected::None
        };
        (latency, injected)
    }

    fn pick_status<R: Rng>(&self, rng: &mut R) -> Option<u16> {
        (!self.error_statuses.is_empty())
            .then(|| self.error_statuses[rng.gen_range(0..self.error_statuses.len())])
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

    #[test]
    fn faults_after_serving_take_their_own_shares() {
        let faults = Faults {
            error_rate: 0.1,
            apply_then_reset_rate: 0.2,
            apply_then_error_rate: 0.3,
            error_statuses: vec![503],
            ..Faults::default()
        };
        assert!(faults.any());
        let mut rng = SmallRng::seed_from_u64(4);
        let rolls: Vec<Injected> = (0..10_000).map(|_| faults.roll(&mut rng).1).collect();
        let count = |f: fn(&Injected) -> bool| rolls.iter().filter(|i| f(i)).count();
        let before = count(|i| *i == Injected::Error(503));
        let resets = count(|i| *i == Injected::ResetAfter);
        let errors = count(|i| *i == Injected::ErrorAfter(503));
        assert!((800..1_200).contains(&before), "{before}");
        assert!((1_800..2_200).contains(&resets), "{resets}");
        assert!((2_700..3_300).contains(&errors), "{errors}");
        assert!(Injected::ResetAfter.after_serving() && !Injected::Reset.after_serving());
    }
}
