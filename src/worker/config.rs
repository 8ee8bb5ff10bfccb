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
    /// How the claimer learns of new jobs besides its poll.
    pub wakeup: Wakeup,
    /// How often the claimer looks for due jobs when no notification arrives (in
    /// [`Wakeup::Poll`] mode, its only way of finding new jobs).
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
    /// Bound on every statement of the worker: `pdq run` sets it as the server-side
    /// `statement_timeout` of the worker's connections, and the worker abandons any other
    /// database call not answered within [`WorkerConfig::call_bound`]. No statement of the
    /// worker legitimately comes near it (each takes milliseconds, batches are bounded).
    pub statement_timeout: Duration,
    /// A due live job that has waited longer than this makes live "behind": readiness fails
    /// and `pdq_live_behind` is 1.
    pub live_behind: Duration,
    /// Recorded in `locked_by`.
    pub worker_id: String,
    /// Seed for jitter (tests and the demo repeat).
    pub seed: Option<u64>,
}

/// How the claimer learns of new jobs besides its poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wakeup {
    /// `LISTEN pdq_jobs` (on the worker's pool, or the listener's own pool, see
    /// [`Worker::listen_through`](super::Worker::listen_through)); the poll is a safety net.
    #[default]
    Listen,
    /// No listener: only the poll finds new jobs (through a transaction pooler, where
    /// `LISTEN` cannot work and no direct connection is available).
    Poll,
}

/// What a database call may take beyond the statement timeout before the worker abandons it
/// (getting a connection, the network).
pub const CALL_MARGIN: Duration = Duration::from_secs(5);

impl WorkerConfig {
    /// How long the worker waits for any database call but a claim: the statement timeout
    /// plus [`CALL_MARGIN`].
    pub fn call_bound(&self) -> Duration {
        self.statement_timeout + CALL_MARGIN
    }

    /// How long the claimer (the worker's main loop) may go without a round before `/livez`
    /// answers 503: a claim bound and a poll, three times over, plus one database call, and
    /// never under [`DEFAULT_LIVENESS_BOUND`](crate::metrics::DEFAULT_LIVENESS_BOUND).
    pub fn liveness_bound(&self) -> Duration {
        ((self.claim_timeout + self.poll_interval) * 3 + self.call_bound())
            .max(crate::metrics::DEFAULT_LIVENESS_BOUND)
    }

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

/// The statement timeout unless told otherwise: far above any statement of the worker.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The poll interval unless told otherwise: with a listener, a safety net.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The poll interval in [`Wakeup::Poll`] mode unless told otherwise: the poll is the only
/// way to find new jobs, so a short one.
pub const DEFAULT_POLL_ONLY_INTERVAL: Duration = Duration::from_millis(100);

/// A due live job older than this makes live "behind", unless told otherwise.
pub const DEFAULT_LIVE_BEHIND: Duration = Duration::from_secs(60);

/// How long applied jobs stay in `pdq.finished_jobs`, unless told otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            executors: DEFAULT_EXECUTORS,
            claim_batch: queue::lease::DEFAULT_CLAIM_BATCH,
            max_coalesce: queue::lease::DEFAULT_MAX_COALESCE,
            lease: queue::lease::DEFAULT_LEASE,
            wakeup: Wakeup::Listen,
            poll_interval: DEFAULT_POLL_INTERVAL,
            lookup_window: DEFAULT_LOOKUP_WINDOW,
            conversation_cache_ttl: Duration::from_secs(2),
            backoff: Backoff::default(),
            budget: Budget::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            retention: DEFAULT_RETENTION,
            dead_letter_retention: queue::DEFAULT_DEAD_LETTER_RETENTION,
            idempotency_horizon: queue::DEFAULT_IDEMPOTENCY_KEY_HORIZON,
            claim_timeout: DEFAULT_CLAIM_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            live_behind: DEFAULT_LIVE_BEHIND,
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
