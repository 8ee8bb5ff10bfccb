//! Retention of what pdq keeps after a job is done: applied jobs, the newest applied value of
//! each key, dead letters and idempotency keys.
//!
//! Dead letters and idempotency keys prune through `SECURITY DEFINER` functions, so the worker
//! role needs no DELETE right on either table.

use std::time::Duration;

use sqlx::PgExecutor;

use super::Error;

/// How long dead letters (which hold customer data) are kept by default: 30 days.
pub const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// How long an idempotency key is remembered by default: 30 days. Keep it at least as long as
/// the retention of applied jobs; a repeated key is a no-op within this horizon.
pub const DEFAULT_IDEMPOTENCY_KEY_HORIZON: Duration = Duration::from_secs(30 * 86_400);

/// What pdq keeps after a job is done, and prunes once it is old enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// Applied jobs in `pdq.finished_jobs`, by when they finished.
    FinishedJobs,
    /// The newest applied value of each participant's key (`pdq.applied_keys`), by when it
    /// landed, and only once nothing older can still be sent: a row stays while a queued job
    /// (scheduled far ahead, waiting for a retry) or a dead letter not yet requeued has a lower
    /// `seq`, since that older value would otherwise overwrite the newer one. Cancelled jobs
    /// never come back and do not count.
    AppliedKeys,
    /// Dead letters, by when they died; never a younger one.
    DeadLetters,
    /// Idempotency keys, by when they were recorded; the key of a job still queued is kept.
    IdempotencyKeys,
}

impl Retained {
    /// The statement that deletes at most `$2` rows older than `$1` seconds and counts them.
    /// Dead letters and idempotency keys go through `SECURITY DEFINER` functions.
    fn statement(self) -> &'static str {
        match self {
            Retained::FinishedJobs => {
                "with gone as (
                     delete from pdq.finished_jobs where id in (
                         select id from pdq.finished_jobs
                         where finished_at < now() - $1 * interval '1 second'
                         order by finished_at limit $2)
                     returning 1)
                 select count(*) from gone"
            }
            Retained::AppliedKeys => {
                "with oldest_to_come as (
                     select least(
                         (select min(id) from pdq.jobs),
                         (select min(seq) from pdq.jobs where seq is not null),
                         (select min(coalesce(seq, id)) from pdq.dead_letters
                          where requeued_at is null)) as seq
                 ), gone as (
                     delete from pdq.applied_keys where (target, key) in (
                         select target, key from pdq.applied_keys
                         where applied_at < now() - $1 * interval '1 second'
                           and seq < coalesce((select seq from oldest_to_come),
                                              9223372036854775807)
                         order by applied_at limit $2)
                     returning 1
                 ), uncertain_gone as (
                     delete from pdq.uncertain_values where (target, key) in (
                         select target, key from pdq.uncertain_values
                         where noted_at < now() - $1 * interval '1 second'
                           and seq < coalesce((select seq from oldest_to_come),
                                              9223372036854775807)
                         order by noted_at limit $2))
                 select count(*) from gone"
            }
            Retained::DeadLetters => "select pdq.prune_dead_letters($1 * interval '1 second', $2)",
            Retained::IdempotencyKeys => {
                "select pdq.prune_idempotency_keys($1 * interval '1 second', $2)"
            }
        }
    }
}

/// Deletes at most `limit` rows of `what` older than `older_than`, oldest first. Returns how
/// many were deleted.
pub async fn prune<'e>(
    db: impl PgExecutor<'e>,
    what: Retained,
    older_than: Duration,
    limit: i64,
) -> Result<u64, Error> {
    let pruned: i64 = sqlx::query_scalar(what.statement())
        .bind(older_than.as_secs_f64())
        .bind(i32::try_from(limit.max(0)).unwrap_or(i32::MAX))
        .fetch_one(db)
        .await?;
    Ok(pruned as u64)
}
