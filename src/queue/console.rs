//! The operator console's reads and writes: keyset-paginated lists of jobs and dead letters,
//! searches, per-minute chart series and the confirmations of requeue, purge and cancel.
//!
//! Every list pages by a key (never OFFSET) over an index, so a page costs the same at a
//! million jobs as at ten.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::dlq::DeadLetter;
use super::jobs::{JobRecord, JobState};
use super::Error;

/// Rows on one page of a console list.
pub const PAGE_SIZE: i64 = 50;

/// What the jobs page searches for; empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct JobSearch {
    /// The job with this id.
    pub id: Option<i64>,
    /// The job with this idempotency key.
    pub idempotency_key: Option<String>,
    /// Jobs for this conversation (as inserted or as resolved).
    pub conversation_id: Option<Uuid>,
    /// Jobs with this external tag.
    pub external_tag: Option<String>,
    /// Jobs in this state.
    pub state: Option<JobState>,
    /// Only ids below this one (the previous page's last id).
    pub before: Option<i64>,
    /// Rows per page.
    pub limit: i64,
}

/// One page of a list and the key of the next one.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T, K> {
    /// The rows, newest first.
    pub rows: Vec<T>,
    /// The key to ask for the next page with, when there is one.
    pub next: Option<K>,
}

/// Searches job records, newest id first, one page at a time.
///
/// Ids, idempotency keys, conversations and tags are found through an index on each of the
/// queue, applied, dead-letter and cancelled tables; a state alone walks the ids backwards.
pub async fn search_jobs(pool: &PgPool, search: &JobSearch) -> Result<Page<JobRecord, i64>, Error> {
    let limit = search.limit.clamp(1, 500);
    let mut query: QueryBuilder<'_, Postgres> =
        QueryBuilder::new("select r.* from pdq.job_records r where true");
    let narrowed = search.id.is_some()
        || search.idempotency_key.is_some()
        || search.conversation_id.is_some()
        || search.external_tag.is_some();
    if let Some(id) = search.id {
        query.push(" and r.id = ").push_bind(id);
    }
    if let Some(key) = &search.idempotency_key {
        query
            .push(" and r.idempotency_key = ")
            .push_bind(key.clone());
    }
    if let Some(cid) = search.conversation_id {
        query.push(" and r.id in (select id from pdq.jobs where conversation_id = ");
        query.push_bind(cid);
        query.push(" union all select id from pdq.finished_jobs where conversation_id = ");
        query.push_bind(cid);
        query.push(" union all select id from pdq.finished_jobs where resolved_conversation_id = ");
        query.push_bind(cid);
        query.push(" union all select id from pdq.dead_letters where conversation_id = ");
        query.push_bind(cid);
        query.push(" union all select id from pdq.dead_letters where resolved_conversation_id = ");
        query.push_bind(cid);
        query.push(" union all select id from pdq.cancelled_jobs where conversation_id = ");
        query.push_bind(cid);
        query.push(") and (r.conversation_id = ");
        query.push_bind(cid);
        query.push(" or r.resolved_conversation_id = ");
        query.push_bind(cid);
        query.push(")");
    }
    if let Some(tag) = &search.external_tag {
        query.push(" and r.external_tag = ").push_bind(tag.clone());
    }
    if !narrowed {
        // Nothing but (maybe) a state: the newest ids of each table, walked backwards through
        // its id index, then the records of those ids only.
        push_newest_ids(&mut query, search.state, search.before, limit);
    }
    if let Some(state) = search.state {
        query.push(" and r.state = ").push_bind(state.as_str());
    }
    if let Some(before) = search.before {
        query.push(" and r.id < ").push_bind(before);
    }
    query
        .push(" order by r.id desc limit ")
        .push_bind(limit + 1);
    let mut tx = pool.begin().await?;
    sqlx::query("select set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)")
        .execute(&mut *tx)
        .await?;
    let mut rows: Vec<JobRecord> = query.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let next = page_end(&mut rows, limit).map(|last| last.id);
    Ok(Page { rows, next })
}

/// `and r.id = any(…)`: the `limit + 1` newest ids below `before` over the tables that can hold
/// a record in `state`, each read backwards through its id index.
fn push_newest_ids(
    query: &mut QueryBuilder<'_, Postgres>,
    state: Option<JobState>,
    before: Option<i64>,
    limit: i64,
) {
    let before = before.unwrap_or(i64::MAX);
    let tables: &[(&str, &str)] = match state {
        None => &[
            ("pdq.jobs", ""),
            ("pdq.finished_jobs", ""),
            ("pdq.dead_letters", ""),
            ("pdq.cancelled_jobs", ""),
        ],
        Some(JobState::Pending) => &[("pdq.jobs", " and state = 'pending'")],
        // Few jobs run at once: find them through the lease index, then order them.
        Some(JobState::Running) => &[(
            "(select id from pdq.jobs where state = 'running' and locked_until is not null) t",
            "",
        )],
        Some(JobState::Applied) => &[("pdq.finished_jobs", "")],
        Some(JobState::DeadLettered) => &[("pdq.dead_letters", "")],
        Some(JobState::Cancelled) => &[("pdq.cancelled_jobs", "")],
    };
    // An array, not `in (…)`: the ids are found once, then each table is probed by id (a
    // semi-join would walk the whole queue in id order).
    query.push(" and r.id = any(array(select id from (");
    for (i, (table, condition)) in tables.iter().enumerate() {
        if i > 0 {
            query.push(" union all ");
        }
        query.push(format!("(select id from {table} where id < "));
        query.push_bind(before);
        query.push(*condition);
        query.push(" order by id desc limit ").push_bind(limit + 1);
        query.push(")");
    }
    query
        .push(") ids order by id desc limit ")
        .push_bind(limit + 1);
    query.push("))");
}

/// The key of a dead-letter page: the last row's `dead_at` and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeadLetterKey {
    /// When the last row was dead-lettered.
    pub dead_at: DateTime<Utc>,
    /// Its job id.
    pub id: i64,
}

/// Which dead letters the console lists: those waiting (not requeued), newest first.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterSearch {
    /// Only this reason.
    pub reason: Option<String>,
    /// Dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only jobs for this conversation (as inserted or as resolved).
    pub conversation_id: Option<Uuid>,
    /// Only rows after this key (the previous page's last row).
    pub after: Option<DeadLetterKey>,
    /// Rows per page.
    pub limit: i64,
}

/// Whether a dead letter waiting to be requeued carries `reason` (one this binary may not
/// know, written by a newer pdq).
pub async fn has_waiting_reason(pool: &PgPool, reason: &str) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from pdq.dead_letters where reason = $1 and requeued_at is null)",
    )
    .bind(reason)
    .fetch_one(pool)
    .await?)
}

/// Lists dead letters not yet requeued, newest first, one page at a time.
pub async fn search_dead_letters(
    pool: &PgPool,
    search: &DeadLetterSearch,
) -> Result<Page<DeadLetter, DeadLetterKey>, Error> {
    let limit = search.limit.clamp(1, 500);
    let mut query: QueryBuilder<'_, Postgres> =
        QueryBuilder::new("select * from pdq.dead_letters where requeued_at is null");
    if let Some(reason) = &search.reason {
        query.push(" and reason = ").push_bind(reason.clone());
    }
    if let Some(since) = search.since {
        query.push(" and dead_at >= ").push_bind(since);
    }
    if let Some(until) = search.until {
        query.push(" and dead_at < ").push_bind(until);
    }
    if let Some(cid) = search.conversation_id {
        query.push(" and (conversation_id = ").push_bind(cid);
        query
            .push(" or resolved_conversation_id = ")
            .push_bind(cid)
            .push(")");
    }
    if let Some(after) = search.after {
        query
            .push(" and (dead_at, id) < (")
            .push_bind(after.dead_at);
        query.push(", ").push_bind(after.id).push(")");
    }
    query.push(" order by dead_at desc, id desc limit ");
    query.push_bind(limit + 1);
    // A conversation has few dead letters: find them by conversation and sort them. Otherwise
    // walk the time index backwards from the page's key.
    let mut tx = match search.conversation_id {
        Some(_) => pool.begin().await?,
        None => planned(pool).await?,
    };
    let mut rows: Vec<DeadLetter> = query.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let next = page_end(&mut rows, limit).map(|last| DeadLetterKey {
        dead_at: last.dead_at,
        id: last.id,
    });
    Ok(Page { rows, next })
}

/// Drops the probe row past `limit`; returns the last row kept when there is a next page.
fn page_end<T>(rows: &mut Vec<T>, limit: i64) -> Option<&T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    more.then(|| rows.last()).flatten()
}

/// A read transaction whose plans walk indexes even before the tables have statistics (a
/// freshly loaded table would otherwise be sorted whole for one page).
async fn planned(pool: &PgPool) -> Result<sqlx::Transaction<'static, Postgres>, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "select set_config('enable_seqscan', 'off', true),
                set_config('enable_sort', 'off', true),
                set_config('jit', 'off', true)",
    )
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Dead letters by id (the waiting ones: not yet requeued), for a confirmation page.
pub async fn dead_letters_by_ids(pool: &PgPool, ids: &[i64]) -> Result<Vec<DeadLetter>, Error> {
    Ok(sqlx::query_as(
        "select * from pdq.dead_letters where id = any($1) and requeued_at is null
         order by dead_at desc, id desc",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// A key that a requeue without force would not send, because a newer job of the same
/// participant already wrote it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct DroppedKey {
    /// The dead letter.
    pub dead_letter_id: i64,
    /// The attribute key.
    pub key: String,
    /// The `seq` of the newer value already applied.
    pub newer_seq: i64,
}

/// `pdq.requeue_would_drop(ids)`: the keys a requeue would leave out.
pub async fn requeue_would_drop(pool: &PgPool, ids: &[i64]) -> Result<Vec<DroppedKey>, Error> {
    Ok(sqlx::query_as("select * from pdq.requeue_would_drop($1)")
        .bind(ids)
        .fetch_all(pool)
        .await?)
}

/// The span a chart covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ChartRange {
    /// The last hour, one point a minute.
    Hour,
    /// The last day, one point every 15 minutes.
    Day,
}

impl ChartRange {
    /// Seconds per point.
    pub fn bucket_secs(self) -> i64 {
        match self {
            ChartRange::Hour => 60,
            ChartRange::Day => 900,
        }
    }

    /// How many points.
    pub fn buckets(self) -> usize {
        match self {
            ChartRange::Hour => 60,
            ChartRange::Day => 96,
        }
    }

    /// The query-string value (`hour`, `day`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChartRange::Hour => "hour",
            ChartRange::Day => "day",
        }
    }
}

/// Per-bucket series for the overview's charts, oldest bucket first.
#[derive(Debug, Clone, Serialize)]
pub struct ChartSeries {
    /// The start of the first bucket (database clock).
    pub start: DateTime<Utc>,
    /// Seconds per bucket.
    pub bucket_secs: i64,
    /// Jobs applied.
    pub applied: Vec<f64>,
    /// Jobs dead-lettered, per reason (reasons seen in the range, most frequent first).
    pub dead_by_reason: Vec<(String, Vec<f64>)>,
    /// PATCH requests for live jobs (a coalesced PATCH counts once), applied or dead-lettered.
    pub live_requests: Vec<f64>,
    /// The same for backfill jobs.
    pub backfill_requests: Vec<f64>,
    /// The longest a due live job had waited in the bucket, as the workers sampled it (s):
    /// unlike a pickup latency it counts the jobs still waiting.
    pub oldest_due_live_secs: Vec<f64>,
    /// The same for backfill jobs.
    pub oldest_due_backfill_secs: Vec<f64>,
    /// 429 responses the workers received (from their heartbeats).
    pub rate_limited: Vec<f64>,
    /// Pauses the workers' limiters took after a 429 or a spent window.
    pub pauses: Vec<f64>,
    /// Workers that reported being paused in the bucket.
    pub paused_workers: Vec<f64>,
}

#[derive(sqlx::FromRow)]
struct FinishedBucket {
    bucket: i32,
    applied: i64,
    live: f64,
    backfill: f64,
}

#[derive(sqlx::FromRow)]
struct DeadBucket {
    bucket: i32,
    reason: String,
    dead: i64,
    live: i64,
    backfill: i64,
}

#[derive(sqlx::FromRow)]
struct SampleBucket {
    bucket: i32,
    rate_limited: i64,
    pauses: i64,
    paused: i64,
    oldest_live: Option<f64>,
    oldest_backfill: Option<f64>,
}

/// Reads the chart series for `range` from the archive tables and the workers' samples.
pub async fn chart_series(pool: &PgPool, range: ChartRange) -> Result<ChartSeries, Error> {
    let secs = range.bucket_secs();
    let n = range.buckets();
    let mut tx = planned(pool).await?;
    // Buckets are aligned on the clock; the last one is the one in progress.
    let start: DateTime<Utc> = sqlx::query_scalar(
        "select to_timestamp(floor(extract(epoch from now()) / $1) * $1) - ($1 * ($2 - 1))
                * interval '1 second'",
    )
    .bind(secs as f64)
    .bind(n as f64)
    .fetch_one(&mut *tx)
    .await?;
    let finished: Vec<FinishedBucket> = sqlx::query_as(
        "select floor(extract(epoch from finished_at - $1) / $2)::int as bucket,
                count(*) as applied,
                coalesce(sum(1.0 / greatest(coalesced_with, 1))
                         filter (where priority = 'live'), 0)::float8 as live,
                coalesce(sum(1.0 / greatest(coalesced_with, 1))
                         filter (where priority = 'backfill'), 0)::float8 as backfill
         from pdq.finished_jobs where finished_at >= $1
         group by 1",
    )
    .bind(start)
    .bind(secs as f64)
    .fetch_all(&mut *tx)
    .await?;
    let dead: Vec<DeadBucket> = sqlx::query_as(
        "select floor(extract(epoch from dead_at - $1) / $2)::int as bucket, reason,
                count(*) as dead,
                count(*) filter (where priority = 'live') as live,
                count(*) filter (where priority = 'backfill') as backfill
         from pdq.dead_letters where dead_at >= $1
         group by 1, 2",
    )
    .bind(start)
    .bind(secs as f64)
    .fetch_all(&mut *tx)
    .await?;
    // Counter increases per worker between consecutive samples, summed per bucket.
    let samples: Vec<SampleBucket> = sqlx::query_as(
        "select floor(extract(epoch from minute - $1) / $2)::int as bucket,
                coalesce(sum(greatest(rate_limited, 0)), 0)::int8 as rate_limited,
                coalesce(sum(greatest(pauses, 0)), 0)::int8 as pauses,
                count(distinct worker_id) filter (where paused) as paused,
                max(oldest_due_live_secs) as oldest_live,
                max(oldest_due_backfill_secs) as oldest_backfill
         from (
             select worker_id, minute, paused, oldest_due_live_secs, oldest_due_backfill_secs,
                    rate_limited_total - coalesce(lag(rate_limited_total) over w, 0)
                        as rate_limited,
                    limiter_pauses_total - coalesce(lag(limiter_pauses_total) over w, 0)
                        as pauses
             from pdq.worker_samples
             where minute >= $1 - interval '1 minute'
             window w as (partition by worker_id order by minute)
         ) s
         where minute >= $1
         group by 1",
    )
    .bind(start)
    .bind(secs as f64)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let zeros = || vec![0.0; n];
    let mut series = ChartSeries {
        start,
        bucket_secs: secs,
        applied: zeros(),
        dead_by_reason: Vec::new(),
        live_requests: zeros(),
        backfill_requests: zeros(),
        oldest_due_live_secs: zeros(),
        oldest_due_backfill_secs: zeros(),
        rate_limited: zeros(),
        pauses: zeros(),
        paused_workers: zeros(),
    };
    let slot = |bucket: i32| usize::try_from(bucket).ok().filter(|b| *b < n);
    for row in finished {
        let Some(b) = slot(row.bucket) else { continue };
        series.applied[b] += row.applied as f64;
        series.live_requests[b] += row.live;
        series.backfill_requests[b] += row.backfill;
    }
    let mut reasons: Vec<(String, Vec<f64>)> = Vec::new();
    for row in dead {
        let Some(b) = slot(row.bucket) else { continue };
        series.live_requests[b] += row.live as f64;
        series.backfill_requests[b] += row.backfill as f64;
        let index = match reasons.iter().position(|(r, _)| *r == row.reason) {
            Some(index) => index,
            None => {
                reasons.push((row.reason.clone(), zeros()));
                reasons.len() - 1
            }
        };
        reasons[index].1[b] += row.dead as f64;
    }
    reasons.sort_by(|a, b| {
        let total = |v: &[f64]| v.iter().sum::<f64>();
        total(&b.1)
            .total_cmp(&total(&a.1))
            .then_with(|| a.0.cmp(&b.0))
    });
    series.dead_by_reason = reasons;
    for row in samples {
        let Some(b) = slot(row.bucket) else { continue };
        series.rate_limited[b] += row.rate_limited as f64;
        series.pauses[b] += row.pauses as f64;
        series.paused_workers[b] = series.paused_workers[b].max(row.paused as f64);
        series.oldest_due_live_secs[b] = row.oldest_live.unwrap_or(0.0).max(0.0);
        series.oldest_due_backfill_secs[b] = row.oldest_backfill.unwrap_or(0.0).max(0.0);
    }
    Ok(series)
}

/// Counters a worker keeps in memory, totals since it started, with its last gauge sample of
/// the oldest due job's age per priority.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerCounters {
    /// API requests sent.
    pub api_requests: u64,
    /// 429 responses received.
    pub rate_limited: u64,
    /// Pauses taken after a 429 or a spent rate-limit window.
    pub limiter_pauses: u64,
    /// Seconds the oldest due live job had waited at the last gauge sample (none before one).
    pub oldest_due_live_secs: Option<f64>,
    /// The same for backfill.
    pub oldest_due_backfill_secs: Option<f64>,
}

/// Stores a worker's counters in its heartbeat row; a trigger keeps one sample per minute in
/// `pdq.worker_samples` for the console's charts.
pub async fn record_worker_counters(
    pool: &PgPool,
    worker: Uuid,
    counters: WorkerCounters,
) -> Result<(), Error> {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    sqlx::query(
        "update pdq.workers set api_requests_total = $2, rate_limited_total = $3,
             limiter_pauses_total = $4, oldest_due_live_secs = $5, oldest_due_backfill_secs = $6
         where id = $1",
    )
    .bind(worker)
    .bind(clamp(counters.api_requests))
    .bind(clamp(counters.rate_limited))
    .bind(clamp(counters.limiter_pauses))
    .bind(counters.oldest_due_live_secs)
    .bind(counters.oldest_due_backfill_secs)
    .execute(pool)
    .await?;
    Ok(())
}
