//! The numbers behind the worker's database gauges, read in a few cheap statements.

use serde::Serialize;
use sqlx::PgPool;

use super::Error;

/// Jobs of one priority by what they wait for.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow, Serialize)]
pub struct PriorityGauges {
    /// `live` or `backfill`.
    pub priority: String,
    /// Pending and due now.
    pub due: i64,
    /// Pending with a future `run_at`, never attempted.
    pub scheduled: i64,
    /// Pending with a future `run_at` after a failed attempt.
    pub retrying: i64,
    /// Claimed by a worker.
    pub running: i64,
    /// Seconds the oldest due job has waited (0 when none is due).
    pub oldest_due_age_seconds: f64,
}

/// A snapshot for the gauges of `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Gauges {
    /// Jobs by priority and state.
    pub priorities: Vec<PriorityGauges>,
    /// Dead letters not requeued, by reason.
    pub dead_letters: Vec<(String, i64)>,
    /// Workers whose heartbeat is fresh (`None` while `pdq.workers` does not exist).
    pub workers_alive: Option<i64>,
}

/// A worker heartbeat older than this counts as gone.
pub const HEARTBEAT_FRESH_SECONDS: f64 = 60.0;

/// Reads the gauges.
pub async fn gauges(pool: &PgPool) -> Result<Gauges, Error> {
    let priorities = sqlx::query_as(
        "select priority,
                count(*) filter (where state = 'pending' and run_at <= now()) as due,
                count(*) filter (where state = 'pending' and run_at > now() and attempts = 0)
                    as scheduled,
                count(*) filter (where state = 'pending' and run_at > now() and attempts > 0)
                    as retrying,
                count(*) filter (where state = 'running') as running,
                0::float8 as oldest_due_age_seconds
         from pdq.jobs group by priority order by priority",
    )
    .fetch_all(pool)
    .await?;
    let mut priorities: Vec<PriorityGauges> = priorities;
    for (priority, age) in oldest_due(pool).await? {
        match priorities.iter_mut().find(|p| p.priority == priority) {
            Some(row) => row.oldest_due_age_seconds = age.unwrap_or(0.0),
            None => priorities.push(PriorityGauges {
                priority: priority.to_owned(),
                oldest_due_age_seconds: age.unwrap_or(0.0),
                ..PriorityGauges::default()
            }),
        }
    }
    let dead_letters = sqlx::query_as(
        "select reason, count(*) from pdq.dead_letters
         where requeued_at is null group by reason order by reason",
    )
    .fetch_all(pool)
    .await?;
    Ok(Gauges {
        priorities,
        dead_letters,
        workers_alive: workers_alive(pool).await?,
    })
}

/// Per priority (`live`, then `backfill`), seconds since the `run_at` of the oldest due job
/// (`None` when none is due). One index probe each: the first entry of `jobs_claim_order`
/// (`priority_rank, run_at, id` of pending jobs), whatever the backlog.
pub async fn oldest_due(pool: &PgPool) -> Result<Vec<(&'static str, Option<f64>)>, Error> {
    let (live, backfill): (Option<f64>, Option<f64>) =
        sqlx::query_as(OLDEST_DUE_SQL).fetch_one(pool).await?;
    Ok(vec![("live", live), ("backfill", backfill)])
}

/// The oldest due job's age per priority rank, each an index probe (see [`oldest_due`]).
pub const OLDEST_DUE_SQL: &str = "
select extract(epoch from now() - (select run_at from pdq.jobs
         where state = 'pending' and priority_rank = 0 and run_at <= now()
         order by priority_rank, run_at limit 1))::float8 as live,
       extract(epoch from now() - (select run_at from pdq.jobs
         where state = 'pending' and priority_rank = 1 and run_at <= now()
         order by priority_rank, run_at limit 1))::float8 as backfill";

/// Workers whose heartbeat in `pdq.workers` is fresh; `None` while that table does not exist.
pub async fn workers_alive(pool: &PgPool) -> Result<Option<i64>, Error> {
    let exists: bool = sqlx::query_scalar("select to_regclass('pdq.workers') is not null")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    let alive = sqlx::query_scalar(
        "select count(*) from pdq.workers
         where last_seen_at > now() - make_interval(secs => $1)",
    )
    .bind(HEARTBEAT_FRESH_SECONDS)
    .fetch_one(pool)
    .await?;
    Ok(Some(alive))
}
