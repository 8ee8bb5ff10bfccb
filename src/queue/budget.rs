//! The API request budget shared by every worker process on the database.
//!
//! `pdq.rate_budgets.next_slot` is a GCRA schedule: reserving `n` requests moves it `n`
//! intervals ahead, and the caller may send them at the slots it got. A 429 moves the whole
//! schedule past the server's `Retry-After`, so every process pauses, not only the one that saw it.
//! A pause records its reason, is never longer than [`MAX_PAUSE`], and an operator can lift it
//! ([`resume`], `pdq budget resume`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::Error;
use crate::genesys::MAX_RETRY_AFTER;

/// The longest shared pause one call can set (the cap on `Retry-After`): a longer one would
/// stop every worker, across restarts, on one bad header.
pub const MAX_PAUSE: Duration = MAX_RETRY_AFTER;

/// Why the shared budget is paused (`pdq.rate_budgets.pause_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// A 429 with (or without) `Retry-After`.
    RateLimited,
    /// The `inin-ratelimit-*` headers said the window is used up.
    WindowSpent,
    /// Genesys Cloud or the way to it is down.
    Outage,
    /// An operator paused it.
    Operator,
}

impl PauseReason {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::RateLimited => "rate_limited",
            PauseReason::WindowSpent => "window_spent",
            PauseReason::Outage => "outage",
            PauseReason::Operator => "operator",
        }
    }
}

/// One shared budget as operators see it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct BudgetState {
    /// The schedule's name (one per OAuth client).
    pub name: String,
    /// The pause in force, if any (`None` once it has passed).
    pub paused_until: Option<DateTime<Utc>>,
    /// Why it is (or last was) paused.
    pub pause_reason: Option<String>,
    /// The earliest time the next request may go out.
    pub next_slot: DateTime<Utc>,
    /// Who lifted the last pause by hand.
    pub resumed_by: Option<String>,
    /// When the last pause was lifted by hand.
    pub resumed_at: Option<DateTime<Utc>>,
}

/// The furthest ahead of now the shared schedule is taken to run: a reservation never waits
/// longer than this, whatever the row says (pdq itself never schedules further: a pause lasts
/// at most [`MAX_PAUSE`], and the reservations in flight add seconds).
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(2 * MAX_RETRY_AFTER.as_secs());

/// A stored time as the workers can read it, whatever the row holds: `infinity` and times
/// past the year 9999 read as the last second of 9999, `-infinity` and times before the year 1
/// as its first second (sqlx, like most clients, cannot decode an infinite time, nor one past
/// the year 262143).
macro_rules! readable {
    ($column:literal) => {
        concat!(
            "case when ",
            $column,
            " is null then null",
            " when ",
            $column,
            " >= '10000-01-01 00:00:00+00' then '9999-12-31 23:59:59+00'::timestamptz",
            " when ",
            $column,
            " < '0001-01-01 00:00:00+00' then '0001-01-01 00:00:00+00'::timestamptz",
            " else ",
            $column,
            " end"
        )
    };
}

const STATE_COLUMNS: &str = concat!(
    "name, case when paused_until > now() then ",
    readable!("paused_until"),
    " end as paused_until, pause_reason, ",
    readable!("next_slot"),
    " as next_slot, resumed_by, ",
    readable!("resumed_at"),
    " as resumed_at"
);

/// Reserves `n` request slots `interval` apart; returns when each may be used.
pub async fn reserve(
    pool: &PgPool,
    name: &str,
    n: u32,
    interval: Duration,
) -> Result<Vec<Instant>, Error> {
    let span = interval.as_secs_f64() * f64::from(n);
    // A schedule or pause further ahead than pdq ever sets (an operator's UPDATE, a clock that
    // jumped) is cut to the most it can be, and the row keeps the cut value.
    let (first, db_now): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "insert into pdq.rate_budgets as b (name, next_slot) values ($1, now() + $2 * interval '1 second')
         on conflict (name) do update
             set next_slot = greatest(least(b.next_slot, now() + $3 * interval '1 second'), now(),
                                      least(b.paused_until, now() + $4 * interval '1 second'))
                             + $2 * interval '1 second',
                 paused_until = least(b.paused_until, now() + $4 * interval '1 second'),
                 updated_at = now()
         returning b.next_slot - $2 * interval '1 second', now()",
    )
    .bind(name)
    .bind(span)
    .bind(MAX_SCHEDULE_AHEAD.as_secs_f64())
    .bind(MAX_PAUSE.as_secs_f64())
    .fetch_one(pool)
    .await?;
    let now = Instant::now();
    let wait = (first - db_now).to_std().unwrap_or_default();
    let start = now
        .checked_add(wait)
        .or_else(|| now.checked_add(MAX_PAUSE))
        .unwrap_or(now);
    Ok((0..n)
        .map(|i| {
            interval
                .checked_mul(i)
                .and_then(|offset| start.checked_add(offset))
                .unwrap_or(start)
        })
        .collect())
}

/// Pauses the shared schedule for `duration` (at most [`MAX_PAUSE`]) from now, for `reason`.
/// A pause never shortens one already in force; the reason of the later end is kept.
pub async fn pause(
    pool: &PgPool,
    name: &str,
    duration: Duration,
    reason: PauseReason,
) -> Result<(), Error> {
    sqlx::query(
        "insert into pdq.rate_budgets as b (name, next_slot, paused_until, pause_reason)
         values ($1, now() + $2 * interval '1 second', now() + $2 * interval '1 second', $3)
         on conflict (name) do update
             set paused_until = greatest(least(b.paused_until, excluded.paused_until + $4 * interval '1 second'),
                                         excluded.paused_until),
                 pause_reason = case when excluded.paused_until >= b.paused_until
                                     then excluded.pause_reason else b.pause_reason end,
                 next_slot = greatest(least(b.next_slot, excluded.next_slot + $4 * interval '1 second'),
                                      excluded.next_slot),
                 updated_at = now()",
    )
    .bind(name)
    .bind(duration.min(MAX_PAUSE).as_secs_f64())
    .bind(reason.as_str())
    .bind(MAX_SCHEDULE_AHEAD.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// An operator's resume of budget `name` (every budget when `None`), recorded with `by`: lifts
/// its pause now, and tells the workers that use it to lift their own pauses (a configuration
/// pause too) and try again. Returns the budgets that were paused, as they were before.
///
/// It also repairs a row no worker could use: a schedule further ahead than
/// [`MAX_SCHEDULE_AHEAD`], or any time that is infinite or outside the years 1 to 9999, is set
/// to now (such a row counts as paused). `by` is kept without control characters, at most 256
/// characters.
pub async fn resume(
    pool: &PgPool,
    name: Option<&str>,
    by: &str,
) -> Result<Vec<BudgetState>, Error> {
    let by: String = by
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(256)
        .collect();
    let cleared = sqlx::query_as(concat!(
        "with matched as (
             select name, ",
        readable!("paused_until"),
        " as paused_until, pause_reason, ",
        readable!("next_slot"),
        " as next_slot, resumed_by, ",
        readable!("resumed_at"),
        " as resumed_at,
                    paused_until > now()
                        or not (next_slot between '0001-01-01 00:00:00+00'
                                and now() + $3 * interval '1 second') as was_paused,
                    not (paused_until between '0001-01-01 00:00:00+00' and now()) as pause_off
             from pdq.rate_budgets
             where ($1::text is null or name = $1)
             for update
         ), lifted as (
             update pdq.rate_budgets b
             set paused_until = case when matched.pause_off then now() else b.paused_until end,
                 next_slot = case when matched.was_paused
                                  then case when b.next_slot between '0001-01-01 00:00:00+00'
                                                and now() then b.next_slot else now() end
                                  else b.next_slot end,
                 resumed_by = $2, resumed_at = now(), updated_at = now()
             from matched where b.name = matched.name
         )
         select name, paused_until, pause_reason, next_slot, resumed_by, resumed_at
         from matched where was_paused order by name"
    ))
    .bind(name)
    .bind(by)
    .bind(MAX_SCHEDULE_AHEAD.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(cleared)
}

/// Makes sure budget `name` has its row, so an operator's resume reaches the workers using it
/// even while it has never been paused or paced (an unlimited budget).
pub async fn ensure(pool: &PgPool, name: &str) -> Result<(), Error> {
    sqlx::query(
        "insert into pdq.rate_budgets (name, next_slot) values ($1, now())
         on conflict (name) do nothing",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every shared budget, by name.
pub async fn states(pool: &PgPool) -> Result<Vec<BudgetState>, Error> {
    let rows = sqlx::query_as(&format!(
        "select {STATE_COLUMNS} from pdq.rate_budgets order by name"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// One shared budget, if it exists (a running worker polls it to notice an operator resume).
pub async fn state(pool: &PgPool, name: &str) -> Result<Option<BudgetState>, Error> {
    let row = sqlx::query_as(&format!(
        "select {STATE_COLUMNS} from pdq.rate_budgets where name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}
