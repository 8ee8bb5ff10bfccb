//! The worker's settings, their defaults and the timing rules between them.

use std::time::Duration;

use super::{Backoff, Budget};
use crate::queue;

/// Worker settings (from `pdq run`'s flags, or built directly by tests and the demo).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrent executors (API calls in flight).
    pub executors: usize,
    /// Units claimed per claim statement.
    pub claim_batch: u32,
    /// Jobs coalesced into one PATCH at most.
    pub max_coalesce: u32,
    /// Lease on claimed units; renewed while a unit is worked on.
    pub lease: Duration,
    /// Safety-net poll when no notification arrives.
    pub poll_interval: Duration,
    /// How long an external tag may stay unfindable (analytics lag) before `conversation_not_found`.
    pub lookup_window: Duration,
    /// How long a conversation read is reused for other jobs of the same conversation.
    pub conversation_cache_ttl: Duration,
    /// How long failed attempts wait before they are tried again.
    pub backoff: Backoff,
    /// The request budget.
    pub budget: Budget,
    /// How long in-flight units may finish after shutdown is asked for; at least the API
    /// request timeout, so no request is still on the wire when the rest are given back.
    pub shutdown_grace: Duration,
    /// How long applied jobs stay in `pdq.finished_jobs`; which value of a key was applied
    /// (`pdq.applied_keys`) stays at least as long, and longer while a queued job or a dead
    /// letter with an older value can still be sent.
    pub retention: Duration,
    /// How long dead letters (which hold customer data) are kept.
    pub dead_letter_retention: Duration,
    /// How long an idempotency key is remembered (at least `retention`).
    pub idempotency_horizon: Duration,
    /// Bound on one claim (getting a connection, and the statement): a claim that takes
    /// longer is abandoned with its connection; after three bounds without a completed claim
    /// `/healthz` says the claimer is stalled.
    pub claim_timeout: Duration,
    /// Recorded in `locked_by`.
    pub worker_id: String,
    /// Seed for jitter (tests and the demo repeat).
    pub seed: Option<u64>,
}

impl WorkerConfig {
    /// Checks the timing rules that keep a PATCH inside its lease: the API request timeout
    /// must be under half the lease, and the shutdown grace at least the request timeout.
    pub fn check_timing(&self, request_timeout: Duration) -> Result<(), String> {
        if request_timeout >= self.lease / 2 {
            return Err(format!(
                "the API request timeout ({} ms) must be under half the lease ({} s): raise \
                 --lease-secs or lower GENESYS_REQUEST_TIMEOUT_MS",
                request_timeout.as_millis(),
                self.lease.as_secs_f64()
            ));
        }
        if self.idempotency_horizon < self.retention {
            return Err(format!(
                "idempotency keys must be remembered ({} days) at least as long as applied jobs are kept ({} days)",
                self.idempotency_horizon.as_secs() / 86_400,
                self.retention.as_secs() / 86_400
            ));
        }
        if self.shutdown_grace < request_timeout {
            return Err(format!(
                "the shutdown grace ({} s) must be at least the API request timeout ({} ms)",
                self.shutdown_grace.as_secs_f64(),
                request_timeout.as_millis()
            ));
        }
        Ok(())
    }
}

/// Concurrent executors (API calls in flight) unless told otherwise.
pub const DEFAULT_EXECUTORS: usize = 16;

/// How long an external tag may stay unfindable before `conversation_not_found`, unless told
/// otherwise: analytics usually catches up with live data well within a minute.
pub const DEFAULT_LOOKUP_WINDOW: Duration = Duration::from_secs(60);

/// How long in-flight units may finish after shutdown is asked for, unless told otherwise:
/// above the API request timeout and under the 30 s a container runtime waits before SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// How long one claim may take unless told otherwise (a claim takes milliseconds).
pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long applied jobs stay in `pdq.finished_jobs`, unless told otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            executors: DEFAULT_EXECUTORS,
            claim_batch: queue::lease::DEFAULT_CLAIM_BATCH,
            max_coalesce: queue::lease::DEFAULT_MAX_COALESCE,
            lease: queue::lease::DEFAULT_LEASE,
            poll_interval: Duration::from_secs(1),
            lookup_window: DEFAULT_LOOKUP_WINDOW,
            conversation_cache_ttl: Duration::from_secs(2),
            backoff: Backoff::default(),
            budget: Budget::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            retention: DEFAULT_RETENTION,
            dead_letter_retention: queue::DEFAULT_DEAD_LETTER_RETENTION,
            idempotency_horizon: queue::DEFAULT_IDEMPOTENCY_KEY_HORIZON,
            claim_timeout: DEFAULT_CLAIM_TIMEOUT,
            worker_id: format!("pdq-{}", std::process::id()),
            seed: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_rules_keep_a_patch_inside_its_lease_and_the_grace() {
        let config = WorkerConfig::default();
        assert!(config.check_timing(Duration::from_secs(20)).is_ok());
        let too_slow = config.check_timing(Duration::from_secs(30)).unwrap_err();
        assert!(too_slow.contains("half the lease"), "{too_slow}");
        let short_grace = WorkerConfig {
            shutdown_grace: Duration::from_secs(5),
            ..WorkerConfig::default()
        };
        let refused = short_grace
            .check_timing(Duration::from_secs(10))
            .unwrap_err();
        assert!(refused.contains("shutdown grace"), "{refused}");
    }
}
