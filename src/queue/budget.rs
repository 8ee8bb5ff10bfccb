//! The API request budget shared by every worker process on the database.
//!
//! `pdq.rate_budgets.next_slot` is a GCRA schedule: reserving `n` requests moves it `n`
//! intervals ahead, and the caller may send them at the slots it got. A 429 moves the whole
//! schedule past the server's `Retry-After`, so every process pauses, not only the one that saw it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Error;

/// Reserves `n` request slots `interval` apart; returns when each may be used.
pub async fn reserve(
    pool: &PgPool,
    name: &str,
    n: u32,
    interval: Duration,
) -> Result<Vec<Instant>, Error> {
    let span = interval.as_secs_f64() * f64::from(n);
    let (first, db_now): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "insert into pdq.rate_budgets as b (name, next_slot) values ($1, now() + $2 * interval '1 second')
         on conflict (name) do update
             set next_slot = greatest(b.next_slot, now(), b.paused_until) + $2 * interval '1 second',
                 updated_at = now()
         returning b.next_slot - $2 * interval '1 second', now()",
    )
    .bind(name)
    .bind(span)
    .fetch_one(pool)
    .await?;
    let start = Instant::now() + (first - db_now).to_std().unwrap_or_default();
    Ok((0..n).map(|i| start + interval * i).collect())
}

/// Pauses the shared schedule for `duration` from now (after a 429).
pub async fn pause(pool: &PgPool, name: &str, duration: Duration) -> Result<(), Error> {
    sqlx::query(
        "insert into pdq.rate_budgets as b (name, next_slot, paused_until)
         values ($1, now() + $2 * interval '1 second', now() + $2 * interval '1 second')
         on conflict (name) do update
             set paused_until = greatest(b.paused_until, excluded.paused_until),
                 next_slot = greatest(b.next_slot, excluded.next_slot), updated_at = now()",
    )
    .bind(name)
    .bind(duration.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}
