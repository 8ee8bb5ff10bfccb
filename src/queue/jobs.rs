//! Looking jobs up wherever they are (queued, running, applied, dead-lettered, cancelled),
//! following requeues, asking what became of one, and cancelling pending jobs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{ApiRefusal, Error, Locators};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum JobState {
    /// Queued: due, scheduled for later, or waiting for a retry.
    Pending,
    /// A worker holds it under a lease and is applying it.
    Running,
    /// The API accepted it.
    Applied,
    /// It failed for good (see the reason); an operator may requeue it.
    DeadLettered,
    /// An operator cancelled it before it ran.
    Cancelled,
}

impl JobState {
    /// The value `pdq.job_records.state` and `pdq.job_status` use.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Applied => "applied",
            JobState::DeadLettered => "dead_lettered",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [
            JobState::Pending,
            JobState::Running,
            JobState::Applied,
            JobState::DeadLettered,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == value)
        .ok_or_else(|| {
            format!(
                "unknown state {value:?}: use pending, running, applied, dead_lettered or cancelled"
            )
        })
    }
}

/// One record of a job (a row of `pdq.job_records`): everything pdq knows about it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct JobRecord {
    /// The job id (ids can repeat across records after an id sequence was reset).
    pub id: i64,
    /// Where the job is.
    pub state: JobState,
    /// The locators, as inserted.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub locators: Locators,
    /// The attributes, as inserted.
    pub attributes: serde_json::Value,
    /// `live` or `backfill`.
    pub priority: String,
    /// The producer's idempotency key.
    pub idempotency_key: Option<String>,
    /// Attempts allowed (not kept for applied jobs).
    pub max_attempts: Option<i32>,
    /// When the producer inserted it.
    pub created_at: DateTime<Utc>,
    /// When it is (or was) due: for a pending job, its next try.
    pub run_at: DateTime<Utc>,
    /// After this time the update is pointless.
    pub expires_at: Option<DateTime<Utc>>,
    /// Attempts made.
    pub attempts: i32,
    /// When the first attempt started.
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt started.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// What went wrong in the last attempt (pending and cancelled jobs), as stored.
    pub last_error: Option<serde_json::Value>,
    /// The worker that holds (or last held) the lease.
    pub locked_by: Option<String>,
    /// When the lease of a running job ends unless renewed.
    pub locked_until: Option<DateTime<Utc>>,
    /// When it was applied, dead-lettered or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
    /// The conversation it resolved to.
    pub resolved_conversation_id: Option<Uuid>,
    /// The participant it resolved to.
    pub resolved_participant_id: Option<Uuid>,
    /// How many jobs were sent in the same PATCH (applied jobs).
    pub coalesced_with: Option<i32>,
    /// Keys not sent because a newer job had already written them (applied jobs).
    pub superseded_keys: Option<Vec<String>>,
    /// Why it was dead-lettered (or `cancelled`).
    pub reason: Option<String>,
    /// The explanation stored with a dead letter (or the cancellation note).
    pub detail: Option<String>,
    /// The API's answer, when there was one.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub api: ApiRefusal,
    /// When an operator requeued this dead letter.
    pub requeued_at: Option<DateTime<Utc>>,
    /// The job the requeue made of it.
    pub requeued_as: Option<i64>,
    /// How many times this dead letter was requeued.
    pub requeue_count: i32,
    /// The dead letter this job was requeued from.
    pub requeued_from: Option<i64>,
    /// The database role that cancelled it.
    pub cancelled_by: Option<String>,
    /// The note given with the cancellation.
    pub note: Option<String>,
    /// For a due pending job: the older job of the same participant it waits for (running or
    /// waiting for a retry).
    #[sqlx(default)]
    pub blocked_by: Option<i64>,
}

/// Which jobs an operator means. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only these ids.
    pub ids: Vec<i64>,
    /// Only the job with this idempotency key.
    pub idempotency_key: Option<String>,
    /// Only jobs for this conversation (as inserted or as resolved).
    pub conversation_id: Option<Uuid>,
    /// Only jobs with this external tag.
    pub external_tag: Option<String>,
    /// Only jobs in these states.
    pub states: Vec<JobState>,
    /// Only due pending jobs that wait for an older job of their participant.
    pub blocked: bool,
    /// At most this many rows, the newest first as [`list`] orders them: `list` shows 100
    /// when unset; [`cancel`] cancels every match when unset.
    pub limit: Option<i64>,
}

impl JobFilter {
    /// Whether anything narrows the selection (cancel needs that, or an explicit "all").
    pub fn is_narrowed(&self) -> bool {
        !self.ids.is_empty()
            || self.idempotency_key.is_some()
            || self.conversation_id.is_some()
            || self.external_tag.is_some()
            || self.blocked
    }

    fn push_where(&self, query: &mut QueryBuilder<'_, Postgres>) {
        query.push(" where true");
        if !self.ids.is_empty() {
            query.push(" and r.id = any(").push_bind(self.ids.clone());
            query.push(")");
        }
        if let Some(key) = &self.idempotency_key {
            query
                .push(" and r.idempotency_key = ")
                .push_bind(key.clone());
        }
        if let Some(cid) = self.conversation_id {
            query.push(" and (r.conversation_id = ").push_bind(cid);
            query
                .push(" or r.resolved_conversation_id = ")
                .push_bind(cid);
            query.push(")");
        }
        if let Some(tag) = &self.external_tag {
            query.push(" and r.external_tag = ").push_bind(tag.clone());
        }
        if !self.states.is_empty() {
            let states: Vec<&str> = self.states.iter().map(|s| s.as_str()).collect();
            query.push(" and r.state = any(").push_bind(states);
            query.push(")");
        }
        if self.blocked {
            query.push(" and r.state = 'pending' and r.run_at <= now() and exists (");
            query.push(BLOCKER_SQL).push(")");
        }
    }
}

/// The oldest job of `r`'s participant that `r` waits for: running, or waiting for a retry.
/// (An older job that is due goes first and takes `r` along in its unit: that is no block.)
const BLOCKER_SQL: &str = "select o.id from pdq.jobs o
     where o.participant_key = r.participant_key and o.id < r.id
       and (o.state = 'running' or (o.first_attempt_at is not null and o.run_at > now()))
     order by o.id limit 1";

/// Lists job records, newest first, with the blocker of each due pending job.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    filter: &JobFilter,
) -> Result<Vec<JobRecord>, Error> {
    let mut query =
        QueryBuilder::new("select r.*, case when r.state = 'pending' and r.run_at <= now() then (");
    query.push(BLOCKER_SQL);
    query.push(") end as blocked_by from (select r.* from pdq.job_records r");
    filter.push_where(&mut query);
    query.push(" order by r.created_at desc, r.id desc limit ");
    query.push_bind(filter.limit.unwrap_or(100));
    query.push(") r order by r.created_at desc, r.id desc, r.finished_at desc nulls first");
    Ok(query.build_query_as().fetch_all(db).await?)
}

/// Every record of job `id`, newest first (a queued job, then by finish time): usually one.
pub async fn records<'e>(db: impl PgExecutor<'e>, id: i64) -> Result<Vec<JobRecord>, Error> {
    list(
        db,
        &JobFilter {
            ids: vec![id],
            ..JobFilter::default()
        },
    )
    .await
    .map(newest_first)
}

/// Every record with this idempotency key, newest first.
pub async fn records_by_key<'e>(
    db: impl PgExecutor<'e>,
    key: &str,
) -> Result<Vec<JobRecord>, Error> {
    list(
        db,
        &JobFilter {
            idempotency_key: Some(key.to_owned()),
            ..JobFilter::default()
        },
    )
    .await
    .map(newest_first)
}

fn newest_first(mut records: Vec<JobRecord>) -> Vec<JobRecord> {
    records.sort_by_key(|r| std::cmp::Reverse(r.finished_at.unwrap_or(DateTime::<Utc>::MAX_UTC)));
    records
}

/// The requeue history `record` belongs to, oldest first: the dead letters it was requeued
/// from and the jobs it was requeued as (at most 20 steps each way). Just `record` when it was
/// never requeued.
pub async fn requeue_chain(
    pool: &sqlx::PgPool,
    record: &JobRecord,
) -> Result<Vec<JobRecord>, Error> {
    let mut chain = vec![record.clone()];
    while chain.len() <= 20 {
        let first = &chain[0];
        let before: Option<JobRecord> = sqlx::query_as(
            "select r.* from pdq.job_records r
             where r.state = 'dead_lettered' and r.requeued_as = $1 and r.requeued_at <= $2
             order by r.requeued_at desc limit 1",
        )
        .bind(first.id)
        .bind(first.created_at)
        .fetch_optional(pool)
        .await?;
        match before {
            Some(before) => chain.insert(0, before),
            None => break,
        }
    }
    for _ in 0..20 {
        let last = chain.last().expect("never empty");
        let (Some(next_id), Some(at)) = (last.requeued_as, last.requeued_at) else {
            break;
        };
        let next: Option<JobRecord> = sqlx::query_as(
            "select r.* from pdq.job_records r where r.id = $1 and r.created_at >= $2
             order by r.finished_at desc nulls first limit 1",
        )
        .bind(next_id)
        .bind(at)
        .fetch_optional(pool)
        .await?;
        match next {
            Some(next) => chain.push(next),
            None => break,
        }
    }
    Ok(chain)
}

/// What `pdq.job_status` says about a job: the answer an upstream system gets.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct JobStatus {
    /// The job asked about (by id, or the job of the idempotency key).
    pub job_id: i64,
    /// Its idempotency key (for a requeued job, the key of the job it came from).
    pub idempotency_key: Option<String>,
    /// Where the update is now.
    pub state: JobState,
    /// The job that holds the update now: `job_id`, or what requeues made of it.
    pub current_job_id: i64,
    /// How many requeues were followed.
    pub requeues: i32,
    /// When the producer enqueued it.
    pub created_at: DateTime<Utc>,
    /// Pending or running: when it is due (a retry's time).
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts made.
    pub attempts: i32,
    /// When the last attempt started.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When it was applied, dead-lettered or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
    /// Dead-lettered: the reason; cancelled: `cancelled`; pending after a failed attempt:
    /// what failed.
    pub reason: Option<String>,
    /// The explanation, as text.
    pub detail: Option<String>,
    /// The API's HTTP status of the failure, if any.
    pub http_status: Option<i32>,
    /// The `ININ-Correlation-Id` of the failing response, if any.
    pub correlation_id: Option<String>,
    /// The conversation (resolved when known).
    pub conversation_id: Option<Uuid>,
    /// The participant (resolved when known).
    pub participant_id: Option<Uuid>,
}

/// `pdq.job_status(id)`: `None` when pdq does not know the id.
pub async fn job_status<'e>(db: impl PgExecutor<'e>, id: i64) -> Result<Option<JobStatus>, Error> {
    Ok(sqlx::query_as("select * from pdq.job_status($1::bigint)")
        .bind(id)
        .fetch_optional(db)
        .await?)
}

/// `pdq.job_status(idempotency_key)`: `None` when pdq does not know the key.
pub async fn job_status_by_key<'e>(
    db: impl PgExecutor<'e>,
    key: &str,
) -> Result<Option<JobStatus>, Error> {
    Ok(sqlx::query_as("select * from pdq.job_status($1::text)")
        .bind(key)
        .fetch_optional(db)
        .await?)
}

/// A job that `cancel` removed from the queue.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct CancelledJob {
    /// The job id.
    pub job_id: i64,
    /// Its idempotency key.
    pub idempotency_key: Option<String>,
}

/// Cancels the pending jobs that match `filter` (running jobs are never cancelled: they can
/// only finish or be retried), recording each in `pdq.cancelled_jobs` with the session's role
/// and `note`. Returns the cancelled jobs, by id.
pub async fn cancel<'e>(
    db: impl PgExecutor<'e>,
    filter: &JobFilter,
    note: Option<&str>,
) -> Result<Vec<CancelledJob>, Error> {
    let pending = JobFilter {
        states: vec![JobState::Pending],
        ..filter.clone()
    };
    let mut query = QueryBuilder::new("select * from pdq.cancel_jobs(note => ");
    query.push_bind(note.map(str::to_owned));
    query.push(", ids => array(select r.id from pdq.job_records r");
    pending.push_where(&mut query);
    if let Some(limit) = pending.limit {
        query.push(" order by r.created_at desc, r.id desc limit ");
        query.push_bind(limit);
    }
    query.push("))");
    Ok(query.build_query_as().fetch_all(db).await?)
}

/// How many pending jobs match `filter`, whatever its limit: what [`cancel`] would cancel
/// without a limit.
pub async fn count_cancellable<'e>(
    db: impl PgExecutor<'e>,
    filter: &JobFilter,
) -> Result<i64, Error> {
    let pending = JobFilter {
        states: vec![JobState::Pending],
        ..filter.clone()
    };
    let mut query = QueryBuilder::new("select count(*) from pdq.job_records r");
    pending.push_where(&mut query);
    Ok(query.build_query_scalar().fetch_one(db).await?)
}

/// Whether `pdq_outcomes` notifications are on (`pdq.settings.notify_outcomes`).
pub async fn notify_outcomes<'e>(db: impl PgExecutor<'e>) -> Result<bool, Error> {
    Ok(
        sqlx::query_scalar("select notify_outcomes from pdq.settings")
            .fetch_one(db)
            .await?,
    )
}

/// Turns `pdq_outcomes` notifications on or off for every worker.
pub async fn set_notify_outcomes<'e>(db: impl PgExecutor<'e>, on: bool) -> Result<(), Error> {
    sqlx::query("update pdq.settings set notify_outcomes = $1")
        .bind(on)
        .execute(db)
        .await?;
    Ok(())
}
