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

/// Deletes dead letters that died more than `retention` ago, at most `limit` per call; never a
/// younger one. Returns how many were deleted.
pub async fn prune_dead_letters<'e>(
    db: impl PgExecutor<'e>,
    retention: Duration,
    limit: i64,
) -> Result<u64, Error> {
    prune(
        db,
        "select pdq.prune_dead_letters($1 * interval '1 second', $2)",
        retention,
        limit,
    )
    .await
}

/// Forgets idempotency keys recorded more than `horizon` ago, at most `limit` per call; the key
/// of a job still queued is kept. Returns how many keys were forgotten.
pub async fn prune_idempotency_keys<'e>(
    db: impl PgExecutor<'e>,
    horizon: Duration,
    limit: i64,
) -> Result<u64, Error> {
    prune(
        db,
        "select pdq.prune_idempotency_keys($1 * interval '1 second', $2)",
        horizon,
        limit,
    )
    .await
}

/// Deletes archived jobs finished more than `retention` ago, at most `limit` rows per call.
pub async fn prune_finished<'e>(
    db: impl PgExecutor<'e>,
    retention: Duration,
    limit: i64,
) -> Result<u64, Error> {
    prune(
        db,
        "with gone as (
             delete from pdq.finished_jobs where id in (
                 select id from pdq.finished_jobs
                 where finished_at < now() - $1 * interval '1 second'
                 order by finished_at limit $2)
             returning 1)
         select count(*) from gone",
        retention,
        limit,
    )
    .await
}

/// Forgets which value of a key was applied when that happened more than `retention` ago, at
/// most `limit` rows per call. Jobs older than that are not expected to arrive any more.
pub async fn prune_applied_keys<'e>(
    db: impl PgExecutor<'e>,
    retention: Duration,
    limit: i64,
) -> Result<u64, Error> {
    prune(
        db,
        "with gone as (
             delete from pdq.applied_keys where (target, key) in (
                 select target, key from pdq.applied_keys
                 where applied_at < now() - $1 * interval '1 second'
                 order by applied_at limit $2)
             returning 1)
         select count(*) from gone",
        retention,
        limit,
    )
    .await
}

async fn prune<'e>(
    db: impl PgExecutor<'e>,
    statement: &'static str,
    older_than: Duration,
    limit: i64,
) -> Result<u64, Error> {
    let pruned: i64 = sqlx::query_scalar(statement)
        .bind(older_than.as_secs_f64())
        .bind(i32::try_from(limit.max(0)).unwrap_or(i32::MAX))
        .fetch_one(db)
        .await?;
    Ok(pruned as u64)
}
