//! Finishing claimed units: success, retry, release, dead letter, lease renewal and pruning.
//! Every operation is fenced by the unit's [`Fence`]: its job ids and lease token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::{DeadReason, Error, Fence};

/// A unit that was applied, with the ids the worker resolved it to.
#[derive(Debug, Clone)]
pub struct Success {
    /// The unit's jobs and lease.
    pub fence: Fence,
    /// The conversation the update went to.
    pub conversation_id: Option<Uuid>,
    /// The participant the update went to.
    pub participant_id: Option<Uuid>,
}

/// Archives the jobs of many applied units in one statement and releases their participants.
/// Returns the leases that were no longer held (their jobs were left untouched).
pub async fn succeed_batch(pool: &PgPool, done: &[Success]) -> Result<Vec<Uuid>, Error> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let jobs: usize = done.iter().map(|s| s.fence.job_ids.len()).sum();
    let (mut ids, mut leases) = (Vec::with_capacity(jobs), Vec::with_capacity(jobs));
    let (mut cids, mut pids) = (Vec::with_capacity(jobs), Vec::with_capacity(jobs));
    for success in done {
        for &id in &success.fence.job_ids {
            ids.push(id);
            leases.push(success.fence.lease);
            cids.push(success.conversation_id);
            pids.push(success.participant_id);
        }
    }
    let units: Vec<Uuid> = done.iter().map(|s| s.fence.lease).collect();
    let mut tx = super::index_only_transaction(pool).await?;
    let finished: Vec<Uuid> = sqlx::query_scalar(
        "with done as (
             delete from pdq.jobs j
             using unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::uuid[]) as s(id, lease, cid, pid)
             where j.id = s.id and j.lease_token = s.lease and j.state = 'running'
             returning j.*, s.cid as resolved_cid, s.pid as resolved_pid
         ), released as (
             delete from pdq.inflight where lease_token = any($5)
         ), archived as (
             insert into pdq.finished_jobs (id, conversation_id, external_tag, participant_id,
                 participant_purpose, participant_external_contact_id, participant_name,
                 attributes, priority, idempotency_key, created_at, run_at, attempts,
                 first_attempt_at, resolved_conversation_id, resolved_participant_id,
                 coalesced_with, locked_by)
             select id, conversation_id, external_tag, participant_id, participant_purpose,
                 participant_external_contact_id, participant_name, attributes, priority,
                 idempotency_key, created_at, run_at, attempts, first_attempt_at,
                 coalesce(resolved_cid, conversation_id), coalesce(resolved_pid, participant_id),
                 count(*) over (partition by lease_token), locked_by
             from done
         )
         select distinct lease_token from done",
    )
    .bind(&ids)
    .bind(&leases)
    .bind(&cids)
    .bind(&pids)
    .bind(&units)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(units
        .into_iter()
        .filter(|l| !finished.contains(l))
        .collect())
}

/// Puts a unit back to pending at `run_at`, recording `last_error`. With `spend_attempt` false
/// (a rate-limit wait, a shutdown) the attempt the claim counted is given back.
pub async fn retry<'e>(
    db: impl PgExecutor<'e>,
    fence: &Fence,
    run_at: DateTime<Utc>,
    last_error: &serde_json::Value,
    spend_attempt: bool,
) -> Result<(), Error> {
    let changed: i64 = sqlx::query_scalar(
        "with retried as (
             update pdq.jobs
             set state = 'pending', run_at = $3, lease_token = null, locked_until = null,
                 locked_by = null, last_error = $4,
                 attempts = attempts - case when $5 then 0 else 1 end
             where id = any($2) and lease_token = $1 and state = 'running'
             returning id
         ), released as (
             delete from pdq.inflight where lease_token = $1
         )
         select count(*) from retried",
    )
    .bind(fence.lease)
    .bind(&fence.job_ids)
    .bind(run_at)
    .bind(last_error)
    .bind(spend_attempt)
    .fetch_one(db)
    .await?;
    fenced(changed)
}

/// Gives a unit back at once without spending an attempt (graceful shutdown).
pub async fn release<'e>(db: impl PgExecutor<'e>, fence: &Fence) -> Result<(), Error> {
    let note = serde_json::json!({ "reason": "released", "at": Utc::now() });
    retry(db, fence, Utc::now(), &note, false).await
}

/// Everything recorded with a dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    /// The reason category.
    pub reason: DeadReason,
    /// A human explanation.
    pub detail: String,
    /// The API's HTTP status, when there was a response.
    pub http_status: Option<u16>,
    /// The API's error `code`.
    pub error_code: Option<String>,
    /// The API's error `message`.
    pub error_message: Option<String>,
    /// The API's error `contextId`.
    pub context_id: Option<String>,
    /// The `ININ-Correlation-Id` response header.
    pub correlation_id: Option<String>,
    /// The API's whole error body.
    pub error_body: Option<serde_json::Value>,
    /// The conversation the job resolved to, if it got that far.
    pub resolved_conversation_id: Option<Uuid>,
    /// The participant the job resolved to, if it got that far.
    pub resolved_participant_id: Option<Uuid>,
}

impl DeadLetterRecord {
    /// A record with a reason and an explanation and no API response.
    pub fn new(reason: DeadReason, detail: impl Into<String>) -> Self {
        DeadLetterRecord {
            reason,
            detail: detail.into(),
            http_status: None,
            error_code: None,
            error_message: None,
            context_id: None,
            correlation_id: None,
            error_body: None,
            resolved_conversation_id: None,
            resolved_participant_id: None,
        }
    }
}

/// Moves the jobs of a unit to `pdq.dead_letters`: all of them when `only` is `None`, otherwise
/// those of them named in `only`. `release_unit` ends the unit (set it when no job of the unit
/// is left running). Returns how many jobs were dead-lettered.
pub async fn dead_letter<'e>(
    db: impl PgExecutor<'e>,
    fence: &Fence,
    only: Option<&[i64]>,
    record: &DeadLetterRecord,
    release_unit: bool,
) -> Result<u64, Error> {
    let moved: i64 = sqlx::query_scalar(
        "with dead as (
             delete from pdq.jobs
             where id = any($2) and lease_token = $1 and state = 'running'
             returning *
         ), moved as (
             insert into pdq.dead_letters (id, conversation_id, external_tag, participant_id,
                 participant_purpose, participant_external_contact_id, participant_name,
                 attributes, priority, run_at, expires_at, idempotency_key, max_attempts,
                 created_at, attempts, first_attempt_at, last_attempt_at, reason, detail,
                 http_status, error_code, error_message, context_id, correlation_id, error_body,
                 resolved_conversation_id, resolved_participant_id, locked_by)
             select id, conversation_id, external_tag, participant_id, participant_purpose,
                 participant_external_contact_id, participant_name, attributes, priority, run_at,
                 expires_at, idempotency_key, max_attempts, created_at, attempts,
                 first_attempt_at, last_attempt_at, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 locked_by
             from dead
         ), released as (
             delete from pdq.inflight where lease_token = $1 and $13
         )
         select count(*) from dead",
    )
    .bind(fence.lease)
    .bind(match only {
        Some(ids) => ids
            .iter()
            .copied()
            .filter(|id| fence.job_ids.contains(id))
            .collect(),
        None => fence.job_ids.clone(),
    })
    .bind(record.reason.as_str())
    .bind(&record.detail)
    .bind(record.http_status.map(i32::from))
    .bind(&record.error_code)
    .bind(&record.error_message)
    .bind(&record.context_id)
    .bind(&record.correlation_id)
    .bind(&record.error_body)
    .bind(record.resolved_conversation_id)
    .bind(record.resolved_participant_id)
    .bind(release_unit)
    .fetch_one(db)
    .await?;
    if moved == 0 && only.is_none_or(|ids| !ids.is_empty()) {
        return Err(Error::LeaseLost);
    }
    Ok(moved as u64)
}

/// Extends the leases of units still being worked on; returns the leases that were lost.
///
/// Only `pdq.inflight` holds the renewed lease: the jobs keep their claim-time `locked_until`,
/// and lease recovery consults `pdq.inflight` first. Renewal therefore never locks job rows, so
/// it cannot deadlock with a finish (which deletes jobs, then the unit's `pdq.inflight` row).
pub async fn renew_leases<'e>(
    db: impl PgExecutor<'e>,
    leases: &[Uuid],
    lease: Duration,
) -> Result<Vec<Uuid>, Error> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let held: Vec<Uuid> = sqlx::query_scalar(
        "update pdq.inflight set locked_until = now() + $2 * interval '1 second'
         where lease_token = any($1) and locked_until >= now()
         returning lease_token",
    )
    .bind(leases)
    .bind(lease.as_secs_f64())
    .fetch_all(db)
    .await?;
    Ok(leases
        .iter()
        .filter(|l| !held.contains(l))
        .copied()
        .collect())
}

/// Deletes archived jobs finished more than `retention` ago, at most `limit` rows per call.
pub async fn prune_finished<'e>(
    db: impl PgExecutor<'e>,
    retention: Duration,
    limit: i64,
) -> Result<u64, Error> {
    let result = sqlx::query(
        "delete from pdq.finished_jobs where id in (
             select id from pdq.finished_jobs
             where finished_at < now() - $1 * interval '1 second'
             order by finished_at limit $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(limit)
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

fn fenced(changed: i64) -> Result<(), Error> {
    if changed == 0 {
        Err(Error::LeaseLost)
    } else {
        Ok(())
    }
}
