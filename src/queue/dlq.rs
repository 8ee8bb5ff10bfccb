//! Inspecting, requeueing and purging dead letters.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{ApiRefusal, DeadReason, Error, Locators};

/// A dead-lettered job with the reason and the API's answer.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct DeadLetter {
    /// The job id.
    pub id: i64,
    /// The job's locators, as inserted.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub locators: Locators,
    /// The attributes, as inserted.
    pub attributes: serde_json::Value,
    /// `live` or `backfill`.
    pub priority: String,
    /// When the job was inserted.
    pub created_at: DateTime<Utc>,
    /// The attempts made.
    pub attempts: i32,
    /// When the first attempt started.
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt started.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The reason category as stored (`conversation_ended`, `not_found`, …: one of
    /// [`DeadReason`]'s names, or one this binary does not know, written by a newer pdq or by
    /// hand, shown as it is rather than failing the whole list).
    pub reason: String,
    /// A human explanation.
    pub detail: Option<String>,
    /// The API's answer, when there was one.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub api: ApiRefusal,
    /// The conversation the job had resolved to.
    pub resolved_conversation_id: Option<Uuid>,
    /// The participant the job had resolved to.
    pub resolved_participant_id: Option<Uuid>,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
    /// When an operator requeued it (the row stays as history).
    pub requeued_at: Option<DateTime<Utc>>,
    /// How many times it was requeued.
    pub requeue_count: i32,
}

/// Which dead letters an operator means.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only these ids.
    pub ids: Vec<i64>,
    /// Only this reason.
    pub reason: Option<DeadReason>,
    /// Only dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only dead-lettered before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only jobs for this conversation (as inserted or as resolved).
    pub conversation_id: Option<Uuid>,
    /// Include dead letters that were already requeued (history).
    pub include_requeued: bool,
    /// At most this many rows, the newest first as [`list`] orders them: `list` shows 100
    /// when unset; [`requeue`] and [`purge`] act on every match when unset.
    pub limit: Option<i64>,
}

impl DeadLetterFilter {
    fn push_where(&self, query: &mut QueryBuilder<'_, Postgres>) {
        query.push(" where true");
        if !self.ids.is_empty() {
            query
                .push(" and id = any(")
                .push_bind(self.ids.clone())
                .push(")");
        }
        if let Some(reason) = self.reason {
            query.push(" and reason = ").push_bind(reason.as_str());
        }
        if let Some(since) = self.since {
            query.push(" and dead_at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            query.push(" and dead_at < ").push_bind(until);
        }
        if let Some(cid) = self.conversation_id {
            query.push(" and (conversation_id = ").push_bind(cid);
            query
                .push(" or resolved_conversation_id = ")
                .push_bind(cid)
                .push(")");
        }
        if !self.include_requeued {
            query.push(" and requeued_at is null");
        }
    }

    /// The order `list` shows, and the limit when one is set.
    fn push_limit(&self, query: &mut QueryBuilder<'_, Postgres>) {
        if let Some(limit) = self.limit {
            query.push(" order by dead_at desc, id desc limit ");
            query.push_bind(limit);
        }
    }
}

/// Lists dead letters, newest first.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, Error> {
    let mut query = QueryBuilder::new("select * from pdq.dead_letters");
    filter.push_where(&mut query);
    query.push(" order by dead_at desc, id desc limit ");
    query.push_bind(filter.limit.unwrap_or(100));
    Ok(query.build_query_as().fetch_all(db).await?)
}

/// Fetches one dead letter by job id: the latest one when several share the id (a job id
/// sequence that was reset hands out an id again; `list` with that id shows them all).
pub async fn show<'e>(db: impl PgExecutor<'e>, id: i64) -> Result<Option<DeadLetter>, Error> {
    Ok(
        sqlx::query_as(
            "select * from pdq.dead_letters where id = $1 order by dead_at desc limit 1",
        )
        .bind(id)
        .fetch_optional(db)
        .await?,
    )
}

/// Puts matching dead letters back in the queue as new pending jobs; the dead letters stay
/// as history, marked requeued. Returns how many were requeued.
///
/// A requeued job keeps its place in its participant's history: keys that a newer job of the
/// participant already wrote are not sent again with the older value. With `force`, the
/// requeued job's values win as if it had just been inserted.
pub async fn requeue<'e>(
    db: impl PgExecutor<'e>,
    filter: &DeadLetterFilter,
    force: bool,
) -> Result<u64, Error> {
    let mut query = QueryBuilder::new("select pdq.requeue_dead_letters(");
    query.push("force => ");
    query.push_bind(force);
    query.push(", ids => array(select id from pdq.dead_letters");
    let filter = DeadLetterFilter {
        include_requeued: false,
        ..filter.clone()
    };
    filter.push_where(&mut query);
    filter.push_limit(&mut query);
    query.push("))");
    let count: i64 = query
        .build_query_scalar()
        .fetch_one(db)
        .await
        .map_err(Error::on_insert)?;
    Ok(count as u64)
}

/// Deletes matching dead letters for good (at most `filter.limit`, the newest first). Returns
/// how many were deleted.
pub async fn purge<'e>(db: impl PgExecutor<'e>, filter: &DeadLetterFilter) -> Result<u64, Error> {
    let mut query = QueryBuilder::new("delete from pdq.dead_letters");
    if filter.limit.is_some() {
        // Rows, not ids: ids repeat after a reset id sequence, and the limit counts rows.
        query.push(" where ctid = any(array(select ctid from pdq.dead_letters");
        filter.push_where(&mut query);
        filter.push_limit(&mut query);
        query.push("))");
    } else {
        filter.push_where(&mut query);
    }
    Ok(query.build().execute(db).await?.rows_affected())
}

/// How many dead letters match `filter`, whatever its limit: what a purge with it would touch
/// without a limit. [`requeue`] takes only those not requeued yet: count with
/// `include_requeued: false` for it.
pub async fn count<'e>(db: impl PgExecutor<'e>, filter: &DeadLetterFilter) -> Result<i64, Error> {
    let mut query = QueryBuilder::new("select count(*) from pdq.dead_letters");
    filter.push_where(&mut query);
    Ok(query.build_query_scalar().fetch_one(db).await?)
}
