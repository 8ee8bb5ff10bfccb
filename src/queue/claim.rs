//! Claiming units of work and recovering the leases of workers that died.

use std::time::Duration;

use sqlx::{PgExecutor, PgPool};

use super::{Error, Job, Unit};

/// How much to claim, and for how long.
#[derive(Debug, Clone)]
pub struct ClaimOptions {
    /// At most this many units (participants) per claim.
    pub units: u32,
    /// At most this many jobs coalesced into one unit.
    pub max_coalesce: u32,
    /// How long the claim holds before another worker may take the unit over.
    pub lease: Duration,
    /// Recorded in `locked_by` for operators.
    pub worker_id: String,
}

impl Default for ClaimOptions {
    fn default() -> Self {
        ClaimOptions {
            units: 32,
            max_coalesce: 100,
            lease: Duration::from_secs(60),
            worker_id: "pdq".to_owned(),
        }
    }
}

/// Claims up to `options.units` units, in order of priority, `run_at` and id.
///
/// A unit is the oldest queued job of one participant (only the oldest may start, so a
/// participant's updates apply in insertion order) plus the due jobs queued right behind it.
/// `pdq.inflight` guarantees that no two workers hold units of the same participant.
pub async fn claim(pool: &PgPool, options: &ClaimOptions) -> Result<Vec<Unit>, Error> {
    let mut tx = super::index_only_transaction(pool).await?;
    let rows: Vec<ClaimedRow> = sqlx::query_as(CLAIM_SQL)
        .bind(i64::from(options.units))
        .bind(options.lease.as_secs_f64())
        .bind(&options.worker_id)
        .bind(i64::from(options.max_coalesce.max(1)))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(group_into_units(rows))
}

const CLAIM_SQL: &str = "
with candidates as materialized (
    select j.id, j.participant_key
    from pdq.jobs j
    where j.state = 'pending' and j.run_at <= now()
      and not exists (select 1 from pdq.jobs o
                      where o.participant_key = j.participant_key and o.id < j.id)
    order by j.priority_rank, j.run_at, j.id
    limit $1
    for update skip locked
), locked as (
    insert into pdq.inflight (participant_key, lease_token, locked_until, locked_by)
    select participant_key, gen_random_uuid(), now() + $2 * interval '1 second', $3
    from candidates
    on conflict (participant_key) do nothing
    returning participant_key, lease_token, locked_until
), members as (
    select f.id, l.lease_token, l.locked_until
    from locked l
    cross join lateral (
        select f.id from pdq.jobs f
        where f.participant_key = l.participant_key and f.state = 'pending'
          and f.run_at <= now()
          and f.id < coalesce((select min(b.id) from pdq.jobs b
                               where b.participant_key = l.participant_key
                                 and (b.state <> 'pending' or b.run_at > now())),
                              9223372036854775807)
        order by f.id
        limit $4
    ) f
)
update pdq.jobs j
set state = 'running', lease_token = m.lease_token, locked_until = m.locked_until,
    locked_by = $3, attempts = j.attempts + 1,
    first_attempt_at = coalesce(j.first_attempt_at, now()), last_attempt_at = now()
from members m
where j.id = m.id
returning j.id, j.conversation_id, j.external_tag, j.participant_id, j.participant_purpose,
    j.participant_external_contact_id, j.participant_name, j.attributes, j.priority, j.run_at,
    j.expires_at, j.idempotency_key, j.max_attempts, j.created_at, j.attempts,
    j.first_attempt_at, j.participant_key, j.lease_token, j.locked_until";

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    job: Job,
    lease_token: uuid::Uuid,
    locked_until: chrono::DateTime<chrono::Utc>,
}

fn group_into_units(mut rows: Vec<ClaimedRow>) -> Vec<Unit> {
    rows.sort_by_key(|row| (row.lease_token, row.job.id));
    let mut units: Vec<Unit> = Vec::new();
    for row in rows {
        match units.last_mut() {
            Some(unit) if unit.lease == row.lease_token => unit.jobs.push(row.job),
            _ => units.push(Unit {
                lease: row.lease_token,
                locked_until: row.locked_until,
                jobs: vec![row.job],
            }),
        }
    }
    units.sort_by(|a, b| {
        let key = |u: &Unit| (u.head().priority as u8, u.head().run_at, u.head().id);
        key(a).cmp(&key(b))
    });
    units
}

/// Puts the jobs of every expired lease back to pending, so a killed worker's units run again.
/// The attempt the dead worker spent stays counted. Returns how many jobs were recovered.
///
/// A lease is expired when its `pdq.inflight` row (which renewals extend) has run out, or when
/// that row is gone (it is unlogged, so a Postgres crash empties it) and the jobs' claim-time
/// lease has run out.
pub async fn rescue_expired_leases<'e>(db: impl PgExecutor<'e>) -> Result<u64, Error> {
    let recovered: i64 = sqlx::query_scalar(
        "with released as (
             delete from pdq.inflight where locked_until < now() returning lease_token
         ), recovered as (
             update pdq.jobs
             set state = 'pending', lease_token = null, locked_until = null, locked_by = null,
                 last_error = jsonb_build_object('reason', 'lease_expired', 'at', now(),
                                                 'worker', locked_by)
             where state = 'running' and locked_until < now()
               and not exists (select 1 from pdq.inflight i
                               where i.lease_token = pdq.jobs.lease_token
                                 and i.locked_until >= now())
             returning id
         )
         select count(*) from recovered",
    )
    .fetch_one(db)
    .await?;
    Ok(recovered as u64)
}
