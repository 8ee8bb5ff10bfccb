//! What operators see in `pdq status`: depth, age, throughput, dead letters and budget pauses.

use serde::Serialize;
use sqlx::PgPool;

use super::budget::BudgetState;
use super::Error;

/// Jobs by state and priority.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct DepthRow {
    /// `pending`, `scheduled` (pending with a future `run_at`) or `running`.
    pub state: String,
    /// `live` or `backfill`.
    pub priority: String,
    /// How many jobs.
    pub jobs: i64,
}

/// Dead letters (not requeued) by reason.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct DeadReasonCount {
    /// The reason category.
    pub reason: String,
    /// How many dead letters.
    pub jobs: i64,
}

/// A snapshot of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// Jobs by state and priority.
    pub depth: Vec<DepthRow>,
    /// Age in seconds of the oldest job that is due and waiting, if any.
    pub oldest_pending_age_secs: Option<f64>,
    /// Jobs applied in the last minute.
    pub applied_last_minute: i64,
    /// Jobs applied in the last hour.
    pub applied_last_hour: i64,
    /// Dead letters by reason.
    pub dead_letters: Vec<DeadReasonCount>,
    /// The shared API budgets: pause in force and its reason, next slot.
    pub budgets: Vec<BudgetState>,
}

/// Reads the queue's status.
pub async fn status(pool: &PgPool) -> Result<QueueStatus, Error> {
    let depth = sqlx::query_as(
        "select case when state = 'pending' and run_at > now() then 'scheduled' else state end
                    as state,
                priority, count(*) as jobs
         from pdq.jobs group by 1, 2 order by 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let oldest_pending_age_secs = sqlx::query_scalar(
        "select extract(epoch from now() - min(run_at))::float8
         from pdq.jobs where state = 'pending' and run_at <= now()",
    )
    .fetch_one(pool)
    .await?;
    let (applied_last_minute, applied_last_hour) = sqlx::query_as(
        "select count(*) filter (where finished_at > now() - interval '1 minute'),
                count(*) filter (where finished_at > now() - interval '1 hour')
         from pdq.finished_jobs where finished_at > now() - interval '1 hour'",
    )
    .fetch_one(pool)
    .await?;
    let dead_letters = sqlx::query_as(
        "select reason, count(*) as jobs from pdq.dead_letters
         where requeued_at is null group by reason order by jobs desc, reason",
    )
    .fetch_all(pool)
    .await?;
    let budgets = super::budget::states(pool).await?;
    Ok(QueueStatus {
        depth,
        oldest_pending_age_secs,
        applied_last_minute,
        applied_last_hour,
        dead_letters,
        budgets,
    })
}

/// Pending jobs (due or scheduled), for the queue-depth gauge.
pub async fn pending_count(pool: &PgPool) -> Result<u64, Error> {
    let count: i64 = sqlx::query_scalar("select count(*) from pdq.jobs where state = 'pending'")
        .fetch_one(pool)
        .await?;
    Ok(count as u64)
}
