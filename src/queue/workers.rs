//! `pdq.workers`: one heartbeat row per `pdq run` process, listed by `pdq status`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::Error;

/// A worker whose heartbeat is older than this is shown as gone.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Rows stopped or gone for longer than this are pruned.
pub const FORGET_AFTER: Duration = Duration::from_secs(3_600);

/// What a worker reports in its heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// The row's id, fresh for each process start.
    pub id: Uuid,
    /// The name the worker writes into `locked_by`.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// pdq's version.
    pub version: String,
    /// Concurrent executors.
    pub executors: u32,
    /// `running`, `paused` or `stopping`.
    pub state: WorkerState,
    /// Why it is paused (every condition in force), if it is.
    pub pause_reason: Option<String>,
    /// The shared budget it paces against.
    pub budget_name: Option<String>,
    /// Its request budget per minute (0 = unlimited).
    pub budget_per_minute: u32,
    /// API requests it sent in the last minute, if it can tell.
    pub api_requests_last_minute: Option<u64>,
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Claiming and applying jobs.
    Running,
    /// Not applying jobs until a condition clears.
    Paused,
    /// Shutting down: no new claims, in-flight units finishing.
    Stopping,
}

impl WorkerState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Paused => "paused",
            WorkerState::Stopping => "stopping",
        }
    }
}

/// One worker as operators see it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct WorkerRow {
    /// The heartbeat row's id.
    pub id: Uuid,
    /// The name in `locked_by`.
    pub name: String,
    /// The host.
    pub host: String,
    /// The process id.
    pub pid: i32,
    /// pdq's version.
    pub version: String,
    /// When the process started.
    pub started_at: DateTime<Utc>,
    /// The last heartbeat.
    pub last_seen_at: DateTime<Utc>,
    /// Seconds since the last heartbeat.
    pub last_seen_secs_ago: f64,
    /// Concurrent executors.
    pub executors: i32,
    /// `running`, `paused`, `stopping`, `stopped`, or `gone` (no heartbeat for
    /// [`STALE_AFTER`] and no clean shutdown).
    pub state: String,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// The shared budget it paces against.
    pub budget_name: Option<String>,
    /// Its request budget per minute (0 = unlimited).
    pub budget_per_minute: Option<i32>,
    /// API requests it sent in the last minute, if it can tell.
    pub api_requests_last_minute: Option<i32>,
    /// When it stopped cleanly.
    pub stopped_at: Option<DateTime<Utc>>,
    /// What it wants operators to know without being paused (wake-ups that never arrive).
    #[sqlx(default)]
    pub notice: Option<String>,
}

impl WorkerRow {
    /// True while the worker sends heartbeats and has not stopped.
    pub fn is_alive(&self) -> bool {
        matches!(self.state.as_str(), "running" | "paused" | "stopping")
    }
}

/// Inserts or refreshes the heartbeat row (the database clock sets `last_seen_at`).
pub async fn beat(pool: &PgPool, beat: &Heartbeat) -> Result<(), Error> {
    sqlx::query(
        "insert into pdq.workers as w (id, name, host, pid, version, executors, state,
             pause_reason, budget_name, budget_per_minute, api_requests_last_minute)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         on conflict (id) do update
             set last_seen_at = now(), executors = excluded.executors, state = excluded.state,
                 pause_reason = excluded.pause_reason, budget_name = excluded.budget_name,
                 budget_per_minute = excluded.budget_per_minute,
                 api_requests_last_minute = excluded.api_requests_last_minute, stopped_at = null",
    )
    .bind(beat.id)
    .bind(&beat.name)
    .bind(&beat.host)
    .bind(i32::try_from(beat.pid).unwrap_or(i32::MAX))
    .bind(&beat.version)
    .bind(i32::try_from(beat.executors).unwrap_or(i32::MAX))
    .bind(beat.state.as_str())
    .bind(&beat.pause_reason)
    .bind(&beat.budget_name)
    .bind(i32::try_from(beat.budget_per_minute).unwrap_or(i32::MAX))
    .bind(
        beat.api_requests_last_minute
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Sets (or with `None` clears) the notice of worker `id`'s row.
pub async fn set_notice(pool: &PgPool, id: Uuid, notice: Option<&str>) -> Result<(), Error> {
    sqlx::query("update pdq.workers set notice = $2 where id = $1")
        .bind(id)
        .bind(notice)
        .execute(pool)
        .await?;
    Ok(())
}

/// Marks worker `id` as stopped cleanly.
pub async fn mark_stopped(pool: &PgPool, id: Uuid) -> Result<(), Error> {
    sqlx::query(
        "update pdq.workers set state = 'stopped', pause_reason = null, notice = null,
             stopped_at = now(),
             last_seen_at = now(), api_requests_last_minute = null
         where id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes rows stopped or silent for longer than `older_than`; returns how many.
pub async fn prune(pool: &PgPool, older_than: Duration) -> Result<u64, Error> {
    let done = sqlx::query(
        "delete from pdq.workers where last_seen_at < now() - $1 * interval '1 second'",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Every worker row, alive ones first, then by host and start time; a row without a
/// heartbeat for [`STALE_AFTER`] that did not stop cleanly is reported as `gone`.
pub async fn list(pool: &PgPool) -> Result<Vec<WorkerRow>, Error> {
    let rows = sqlx::query_as(
        "select id, name, host, pid, version, started_at, last_seen_at,
                extract(epoch from now() - last_seen_at)::float8 as last_seen_secs_ago,
                executors,
                case when state <> 'stopped' and last_seen_at < now() - $1 * interval '1 second'
                     then 'gone' else state end as state,
                pause_reason, budget_name, budget_per_minute, api_requests_last_minute,
                stopped_at, notice
         from pdq.workers
         order by (state = 'stopped' or last_seen_at < now() - $1 * interval '1 second'),
                  host, started_at, id",
    )
    .bind(STALE_AFTER.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
