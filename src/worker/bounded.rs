//! A bound on every call the worker makes to Postgres, and the watch that turns `/healthz`
//! red when no claim completes while the worker wants work.
//!
//! A connection can go silent without a reset (a NAT entry dropped, a failover behind a
//! virtual IP): a call on it would wait forever, and sqlx 0.8 sets no TCP keepalive that
//! would notice. Each claim therefore gets
//! [`WorkerConfig::claim_timeout`](super::WorkerConfig) to acquire a connection and again to
//! run; a claim that takes longer is abandoned together with its connection (detached from
//! the pool, so no one pings it again), and the next one opens a fresh connection. Units a
//! timed-out claim may have taken on the server come back when their lease runs out.
//!
//! Every other call ([`call`]) gets [`WorkerConfig::call_bound`](super::WorkerConfig): the
//! statement timeout plus a margin, so a statement Postgres is still running ends there first
//! with its own error, and only a call nobody answers is abandoned. The abandoned call's
//! connection goes back to the pool, whose release check is bounded too
//! (`db::pool_options`): a silent one is closed, not kept.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Condition, Health};
use crate::queue::lease::ClaimOptions;
use crate::queue::{self, Unit};

/// One claim, bounded: at most `bound` to get a connection and `bound` for the statement.
pub(super) async fn claim(
    pool: &PgPool,
    options: &ClaimOptions,
    bound: Duration,
) -> Result<Vec<Unit>, queue::Error> {
    let mut conn = match tokio::time::timeout(bound, pool.acquire()).await {
        Ok(conn) => conn?,
        Err(_) => return Err(timed_out("no connection", bound)),
    };
    match tokio::time::timeout(bound, queue::lease::claim_on(&mut conn, pool, options)).await {
        Ok(claimed) => claimed,
        Err(_) => {
            // The connection may be dead without knowing it: never give it back to the pool.
            drop(conn.detach());
            Err(timed_out("no answer to the claim", bound))
        }
    }
}

fn timed_out(what: &str, bound: Duration) -> queue::Error {
    queue::Error::Database(silent(what, bound))
}

fn silent(what: &str, bound: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "{what} from Postgres within {} s (a silent connection is dropped)",
            bound.as_secs_f64()
        ),
    ))
}

/// One database call of the worker (besides the claim), abandoned when it has not returned
/// within `bound`: the error then says Postgres did not answer.
pub(super) async fn call<T, E>(
    bound: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    match tokio::time::timeout(bound, call).await {
        Ok(done) => done,
        Err(_) => Err(silent("no answer", bound).into()),
    }
}

/// Whether `error` is a call abandoned by [`call`] or [`claim`] (Postgres did not answer).
pub(super) fn is_silence(error: &queue::Error) -> bool {
    matches!(error, queue::Error::Database(sqlx::Error::Io(io))
        if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The `/healthz` reason after `failures` failed claims in a row; a read-only server is
/// named as such (a standby by mistake).
pub(super) fn failing(failures: u32, error: &queue::Error) -> String {
    match error {
        queue::Error::Database(db) if crate::db::is_read_only_error(db) => format!(
            "the last {failures} claims failed: the database is read-only (a standby?): point \
             pdq at the primary ({error})"
        ),
        _ => format!("the last {failures} claims failed: {error}"),
    }
}

/// Since when the claimer has wanted a claim to succeed and none has.
#[derive(Debug, Default)]
pub(super) struct ClaimWatch {
    wanting_since: Mutex<Option<Instant>>,
}

impl ClaimWatch {
    /// A claim is about to start (the clock starts at the first of a run of attempts).
    pub(super) fn attempting(&self) {
        self.wanting_since
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
    }

    /// A claim returned (with units or without), or the claimer stopped wanting one (paused,
    /// buffer full).
    pub(super) fn settled(&self) {
        *self.wanting_since.lock().unwrap() = None;
    }

    /// How long the claimer has been waiting for a claim to complete, if it is.
    fn waiting(&self, now: Instant) -> Option<Duration> {
        let since = (*self.wanting_since.lock().unwrap())?;
        Some(now.saturating_duration_since(since))
    }
}

/// How often the watch looks.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Sets [`Condition::Stalled`] while the claimer has waited longer than `after` for a claim
/// to complete, and clears it when one does; until `stop`.
pub(super) async fn watch(
    claims: Arc<ClaimWatch>,
    health: Arc<Health>,
    after: Duration,
    stop: CancellationToken,
) {
    loop {
        match claims.waiting(Instant::now()) {
            Some(waited) if waited >= after => health.set(
                Condition::Stalled,
                format!(
                    "no claim has completed for {} s while the worker wants work (is Postgres reachable?)",
                    waited.as_secs()
                ),
            ),
            _ => health.clear(Condition::Stalled),
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_counts_from_the_first_attempt_until_a_claim_completes() {
        let claims = ClaimWatch::default();
        let start = Instant::now();
        assert_eq!(claims.waiting(start), None);
        claims.attempting();
        std::thread::sleep(Duration::from_millis(20));
        claims.attempting();
        let waited = claims.waiting(Instant::now()).unwrap();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        claims.settled();
        assert_eq!(claims.waiting(Instant::now()), None);
    }
}
