//! The durable queue: the only module that speaks SQL.
//!
//! A job moves `pending → running → (finished | pending again | dead)`. Claims take whole
//! *units*: the oldest pending job of a participant together with the due jobs queued behind it,
//! under a lease that a second worker can never hold at the same time (`pdq.inflight`). Every
//! finishing operation is fenced by the unit's [`Fence`] (lease token and job ids), so a worker
//! whose lease expired cannot overwrite the newer attempt.

pub mod budget;
pub mod checks;
mod claim;
pub mod console;
pub mod dlq;
mod enqueue;
mod error;
mod finish;
pub mod gauges;
mod ids;
pub mod jobs;
pub mod lease;
mod locators;
mod model;
mod refusal;
mod retention;
pub mod roles;
mod stats;
pub mod workers;

pub use dlq::{DeadLetter, DeadLetterFilter};
pub use enqueue::{
    enqueue, enqueue_many, NewJob, DEFAULT_MAX_ATTEMPTS, MAX_ATTRIBUTE_KEY_CHARS,
    MAX_EXTERNAL_TAG_CHARS, MAX_IDEMPOTENCY_KEY_CHARS, MAX_PARTICIPANT_LOCATOR_CHARS,
};
pub use error::{constraint_meaning, Error};
pub use ids::{advance_job_ids, check_job_ids, take_unreported_resets, IdCheck, IdReset};
pub use locators::Locators;
pub use model::{DbClock, DeadReason, Fence, Job, Priority, Unit};
pub use refusal::ApiRefusal;
pub use retention::{
    prune, Retained, DEFAULT_DEAD_LETTER_RETENTION, DEFAULT_IDEMPOTENCY_KEY_HORIZON,
};
pub use stats::{
    explain_pause, human_duration, pending_count, smoothed, status, status_with,
    BlockedParticipant, BudgetUse, DeadReasonCount, DepthRow, LiveBehind, PriorityDepth,
    QueueStatus, Throughput, Verdict, Windows, DEFAULT_LIVE_BEHIND_SECS, SMOOTHING_MINUTES,
    USED_BY_WORKERS, USED_ESTIMATED,
};

/// Opens a transaction whose plans walk the queue's indexes.
///
/// The claim and finish statements touch a handful of rows through indexes that match their
/// `ORDER BY`. Right after a bulk insert the table has no statistics yet and the planner would
/// sort every pending row instead; these settings keep the plans index-driven at any table size.
/// (JIT is off too: the disabled plan types inflate cost estimates past `jit_above_cost`.)
///
/// These transactions also commit without waiting for the WAL flush: a claim or a finish lost
/// in a crash only means the unit runs again (delivery is at least once, the PATCH idempotent),
/// while the producers' INSERTs, which must never be lost, keep their own durable commits.
async fn index_only_transaction<'c>(
    conn: impl sqlx::Acquire<'c, Database = sqlx::Postgres>,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query(
        "select set_config('enable_seqscan', 'off', true),
                set_config('enable_bitmapscan', 'off', true),
                set_config('enable_sort', 'off', true),
                set_config('enable_hashjoin', 'off', true),
                set_config('enable_mergejoin', 'off', true),
                set_config('jit', 'off', true),
                set_config('synchronous_commit', 'off', true)",
    )
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}
