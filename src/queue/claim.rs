//! Claiming units of work and recovering the leases of workers that died.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgExecutor, PgPool, Row};
use uuid::Uuid;

use super::finish::DeadLetterRecord;
use super::{DbClock, DeadReason, Error, Fence, Job, Unit};

/// Units claimed per claim statement unless told otherwise (`pdq run --claim-batch`).
pub const DEFAULT_CLAIM_BATCH: u32 = 64;

/// Jobs of one participant coalesced into one unit (one PATCH) at most, unless told otherwise.
pub const DEFAULT_MAX_COALESCE: u32 = 100;

/// How long a claim holds before another worker may take the unit over, unless told otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

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
            units: DEFAULT_CLAIM_BATCH,
            max_coalesce: DEFAULT_MAX_COALESCE,
            lease: DEFAULT_LEASE,
            worker_id: "pdq".to_owned(),
        }
    }
}

/// Claims up to `options.units` units, in order of priority, `run_at` and id.
///
/// A unit is the oldest queued job of one participant (only the oldest may start, so a
/// participant's updates apply in insertion order) plus the due jobs queued right behind it.
/// A job the producer scheduled for later (never attempted, `run_at` in the future) does not
/// hold back the due jobs behind it; a job waiting for its retry does.
/// `pdq.inflight` guarantees that no two workers hold units of the same participant.
///
/// The unit's head is found again by participant (the oldest due job: any older due job would
/// have been the candidate) rather than by joining back to the candidates, which made the claim
/// several times slower under concurrent claimers.
///
/// A claimed row the worker cannot decode (a value out of the range it can represent) is
/// dead-lettered as `malformed_row` with the decode error instead of failing the claim.
pub async fn claim(pool: &PgPool, options: &ClaimOptions) -> Result<Vec<Unit>, Error> {
    let mut conn = pool.acquire().await?;
    claim_on(&mut conn, pool, options).await
}

/// [`claim`] on a connection the caller holds (so a caller that gives up on a silent
/// connection can throw that connection away); `pool` serves the rare dead-lettering of a
/// malformed row.
pub async fn claim_on(
    conn: &mut PgConnection,
    pool: &PgPool,
    options: &ClaimOptions,
) -> Result<Vec<Unit>, Error> {
    let started = Instant::now();
    let mut tx = super::index_only_transaction(&mut *conn).await?;
    let ids: Vec<i64> = sqlx::query_scalar(CLAIM_SQL)
        .bind(i64::from(options.units))
        .bind(options.lease.as_secs_f64())
        .bind(&options.worker_id)
        .bind(i64::from(options.max_coalesce.max(1)))
        .fetch_all(&mut *tx)
        .await?;
    let rows: Vec<PgRow> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query(READ_CLAIMED_SQL)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
    };
    tx.commit().await?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut malformed = Vec::new();
    for row in &rows {
        match decode(row) {
            Ok(decoded) => claimed.push(decoded),
            Err(error) => malformed.push(MalformedRow {
                id: row.try_get("id")?,
                lease: row.try_get("lease_token")?,
                error,
            }),
        }
    }
    for row in &claimed {
        log_sequence_reset(&row.job, &row.reset_keys);
    }
    let units = group_into_units(claimed, started + options.lease);
    dead_letter_malformed(pool, &malformed, &units).await?;
    Ok(units)
}

const CLAIM_SQL: &str = "
with candidates as materialized (
    select j.id, j.participant_key
    from pdq.jobs j
    where j.state = 'pending' and j.run_at <= now()
      and not exists (select 1 from pdq.jobs o
                      where o.participant_key = j.participant_key and o.id < j.id
                        and (o.state = 'running' or o.run_at <= now()
                             or o.first_attempt_at is not null))
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
        select h.id from pdq.jobs h
        where h.participant_key = l.participant_key and h.state = 'pending'
          and h.run_at <= now()
        order by h.id
        limit 1
    ) c
    cross join lateral (
        select f.id from pdq.jobs f
        where f.participant_key = l.participant_key and f.id >= c.id and f.state = 'pending'
          and f.run_at <= now()
          and f.id < coalesce((select min(b.id) from pdq.jobs b
                               where b.participant_key = l.participant_key and b.id > c.id
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
returning j.id";

/// The claimed jobs, read in a statement of their own: its snapshot is taken after the claim,
/// so it sees every unit that finished while the claim waited for it. (Taking a participant
/// whose `pdq.inflight` row a finishing unit was deleting waits for that unit to commit, but the
/// claim statement itself still sees the world from before: the values that unit had just
/// recorded, or the maybe-sent mark of its retry, would be missing.)
const READ_CLAIMED_SQL: &str = "
select j.id, j.conversation_id, j.external_tag, j.participant_id, j.participant_purpose,
    j.participant_external_contact_id, j.participant_name, j.attributes, j.priority, j.run_at,
    j.expires_at, j.idempotency_key, j.max_attempts, j.created_at, j.attempts,
    j.first_attempt_at, j.participant_key, coalesce(j.seq, j.id) as seq,
    array(select a.key
          from jsonb_object_keys(j.attributes) as k(key)
          join pdq.applied_keys a on a.target = j.participant_key and a.key = k.key
          where a.seq > coalesce(j.seq, j.id)
            and not pdq.sequence_went_back(j.seq, j.id, j.created_at, a.applied_at)
          order by a.key) as superseded,
    array(select a.key
          from jsonb_object_keys(j.attributes) as k(key)
          join pdq.applied_keys a on a.target = j.participant_key and a.key = k.key
          where a.seq > coalesce(j.seq, j.id)
            and pdq.sequence_went_back(j.seq, j.id, j.created_at, a.applied_at)
          order by a.key) as reset_keys,
    (exists (select 1 from pdq.jobs n
             where n.participant_key = j.participant_key and n.maybe_sent
               and (coalesce(n.seq, n.id) > coalesce(j.seq, j.id) or n.quiet_until > now())
               and n.lease_token is distinct from j.lease_token)
     or exists (select 1 from pdq.jobs n
                where n.resolved_key = j.participant_key and n.maybe_sent
                  and (coalesce(n.seq, n.id) > coalesce(j.seq, j.id) or n.quiet_until > now())
                  and n.lease_token is distinct from j.lease_token)
     or exists (select 1 from pdq.uncertain_values u
                where u.target = j.participant_key and u.seq > coalesce(j.seq, j.id)
                  and j.attributes ? u.key)) as behind_attempted,
    j.maybe_sent, j.lease_token, now() as db_now
from pdq.jobs j
where j.id = any($1)";

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    job: Job,
    /// Keys a value with a higher id landed for before this job was inserted (see
    /// [`log_sequence_reset`]): sent, not left out.
    reset_keys: Vec<String>,
    lease_token: Uuid,
    db_now: DateTime<Utc>,
}

/// Decodes one claimed row. The chrono decoder panics (instead of failing) on a timestamp it
/// cannot represent, so the panic is caught and reported as the row's defect.
fn decode(row: &PgRow) -> Result<ClaimedRow, String> {
    let decoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ClaimedRow::from_row(row)));
    match decoded {
        Ok(Ok(decoded)) => Ok(decoded),
        Ok(Err(error)) => Err(error.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a value out of range".to_owned());
            let column = TIME_COLUMNS.iter().find(|column| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    row.try_get::<Option<DateTime<Utc>>, _>(**column)
                }))
                .is_err()
            });
            Err(match column {
                Some(column) => format!("{column} is out of the range pdq can represent ({what})"),
                None => what,
            })
        }
    }
}

/// A job is judged by its place (`seq`, its id): a key for which a value with a higher place
/// already landed is left out. A job the producer inserted after that value landed, or after
/// the last healthy check of the id sequence with an id that check had seen handed out
/// (`pdq.sequence_went_back`), cannot be older than it: the id sequence went backwards (a
/// restore, a failover to a logical replica, which carries no sequence positions). Such keys
/// are sent (the newest insert wins) and the reset is logged as an error, never dropped
/// silently.
fn log_sequence_reset(job: &Job, reset_keys: &[String]) {
    if reset_keys.is_empty() {
        return;
    }
    tracing::error!(
        job.id = job.id,
        keys = ?reset_keys,
        "job {} was inserted after values with higher job ids landed for {} ({}): the job id \
         sequence went backwards (a restore or a failover to a logical replica?); sending it",
        job.id,
        job.participant_key,
        reset_keys.join(", ")
    );
}

/// The timestamp columns a claimed row carries.
const TIME_COLUMNS: [&str; 4] = ["run_at", "expires_at", "created_at", "first_attempt_at"];

struct MalformedRow {
    id: i64,
    lease: Uuid,
    error: String,
}

fn group_into_units(mut rows: Vec<ClaimedRow>, deadline: Instant) -> Vec<Unit> {
    rows.sort_by_key(|row| (row.lease_token, row.job.id));
    let mut units: Vec<Unit> = Vec::new();
    for row in rows {
        match units.last_mut() {
            Some(unit) if unit.lease == row.lease_token => unit.jobs.push(row.job),
            _ => units.push(Unit {
                lease: row.lease_token,
                deadline,
                clock: DbClock::new(row.db_now),
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

/// Dead-letters the claimed rows that could not be decoded. A malformed row that shares its
/// unit with decodable jobs leaves that unit to them; a unit of malformed rows only is released.
async fn dead_letter_malformed(
    pool: &PgPool,
    malformed: &[MalformedRow],
    units: &[Unit],
) -> Result<(), Error> {
    for row in malformed {
        let release_unit = !units.iter().any(|unit| unit.lease == row.lease);
        let fence = Fence {
            lease: row.lease,
            job_ids: vec![row.id],
        };
        // The times as Postgres writes them: the dead letter stores a time past the year 9999
        // as the last second of 9999, so its story stays readable; the note keeps the original.
        let times: Option<(String, Option<String>)> =
            sqlx::query_as("select run_at::text, expires_at::text from pdq.jobs where id = $1")
                .bind(row.id)
                .fetch_optional(pool)
                .await?;
        let (run_at, expires_at) = times.unzip();
        let note = serde_json::json!({
            "at": chrono::Utc::now(),
            "failure": DeadReason::MalformedRow.as_str(),
            "message": format!("the worker cannot read this row: {}", row.error),
            "run_at": run_at,
            "expires_at": expires_at.flatten(),
        });
        let record = DeadLetterRecord::new(DeadReason::MalformedRow, note.to_string());
        tracing::error!(
            job.id = row.id,
            outcome = "dead_lettered",
            "dead-lettered job {} as malformed_row: the worker cannot read it ({})",
            row.id,
            row.error
        );
        match super::finish::dead_letter(pool, &fence, None, &record, release_unit).await {
            Ok(_) | Err(Error::LeaseLost) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Puts the jobs of every expired lease back to pending, so a killed worker's units run again.
/// The attempt the dead worker spent stays counted, and the jobs count as maybe sent (the worker
/// may have sent their PATCH before it froze or died). Returns how many jobs were recovered.
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
                 maybe_sent = true,
                 last_error = jsonb_build_object(
                     'at', now(), 'failure', 'lease_expired', 'worker', locked_by,
                     'message', 'the lease of ' || coalesce(locked_by, 'a worker')
                         || ' expired before the job finished; it runs again')
             where state = 'running' and locked_until < now()
               and not exists (select 1 from pdq.inflight i
                               where i.lease_token = pdq.jobs.lease_token
                                 and i.locked_until >= now())
             returning id, attributes, coalesce(seq, id) as seq,
                 coalesce(resolved_key, participant_key) as target
         ), uncertain as (
             insert into pdq.uncertain_values as u (target, key, seq, value)
             select distinct on (r.target, kv.key) r.target, kv.key, r.seq, kv.value
             from recovered r cross join lateral jsonb_each_text(r.attributes) as kv(key, value)
             where r.target like 'c:%/p:%'
             order by r.target, kv.key, r.seq desc
             on conflict (target, key) do update
                 set seq = excluded.seq, value = excluded.value, noted_at = excluded.noted_at
                 where excluded.seq > u.seq
         )
         select count(*) from recovered",
    )
    .fetch_one(db)
    .await?;
    Ok(recovered as u64)
}
