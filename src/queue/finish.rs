//! Finishing claimed units: success, retry, release, dead letter, lease renewal and pruning.
//! Every operation is fenced by the unit's [`Fence`]: its job ids and lease token.
//!
//! The statements find jobs by primary key and match the lease token; they never also test
//! `state = 'running'` (a job holds a lease token only while it runs, by the table's
//! `running_jobs_hold_a_lease` rule). That test invites the planner to walk the running-leases
//! index first, which, with statistics taken while every job was pending, turns a finish of
//! n units into n² comparisons.

use std::time::Duration;

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::{ApiRefusal, DeadReason, Error, Fence, Unit};
// Postgres stores no NUL character: what the API sent is kept without them.
use crate::genesys::text::{storable, storable_json};

/// A unit that was applied, with the ids the worker resolved it to.
#[derive(Debug, Clone)]
pub struct Success {
    /// The unit's jobs and lease.
    pub fence: Fence,
    /// The conversation the update went to.
    pub conversation_id: Option<Uuid>,
    /// The participant the update went to.
    pub participant_id: Option<Uuid>,
    /// Each key sent, with the `seq` of the job whose value it carried.
    pub key_versions: Vec<(String, i64)>,
    /// Per job of the fence (same order), the keys it did not send because a newer job of
    /// the participant had already written them.
    pub superseded: Vec<Vec<String>>,
}

impl Success {
    /// The unit applied to `conversation_id` / `participant_id` with every key it merged.
    pub fn of(unit: &Unit, conversation_id: Uuid, participant_id: Uuid) -> Success {
        Success {
            fence: unit.fence(),
            conversation_id: Some(conversation_id),
            participant_id: Some(participant_id),
            key_versions: unit.key_versions(),
            superseded: unit.jobs.iter().map(|job| job.superseded.clone()).collect(),
        }
    }
}

/// The key `pdq.applied_keys` and `pdq.inflight` use for a resolved participant; the same
/// text `pdq.participant_key` gives a job that names both ids.
pub fn target_key(conversation_id: Uuid, participant_id: Uuid) -> String {
    format!("c:{conversation_id}/p:{participant_id}")
}

/// Archives the jobs of many applied units in one statement, records which value of each key
/// the API accepted (`pdq.applied_keys`) and releases their participants. Returns the leases
/// that were no longer held (their jobs were left untouched). The statement's cost is linear
/// in the number of jobs; callers bound how many units they pass at once.
pub async fn succeed_batch(pool: &PgPool, done: &[Success]) -> Result<Vec<Uuid>, Error> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let jobs: usize = done.iter().map(|s| s.fence.job_ids.len()).sum();
    let (mut ids, mut leases) = (Vec::with_capacity(jobs), Vec::with_capacity(jobs));
    let (mut cids, mut pids) = (Vec::with_capacity(jobs), Vec::with_capacity(jobs));
    let (mut together, mut superseded) = (Vec::with_capacity(jobs), Vec::with_capacity(jobs));
    let mut versions: HashMap<(String, String), i64> = HashMap::new();
    for success in done {
        let size = success.fence.job_ids.len() as i32;
        for (i, &id) in success.fence.job_ids.iter().enumerate() {
            ids.push(id);
            leases.push(success.fence.lease);
            cids.push(success.conversation_id);
            pids.push(success.participant_id);
            together.push(size);
            superseded.push(
                success
                    .superseded
                    .get(i)
                    .filter(|keys| !keys.is_empty())
                    .map(|keys| serde_json::json!(keys).to_string()),
            );
        }
        if let (Some(cid), Some(pid)) = (success.conversation_id, success.participant_id) {
            let target = target_key(cid, pid);
            for (key, seq) in &success.key_versions {
                let newest = versions
                    .entry((target.clone(), key.clone()))
                    .or_insert(*seq);
                *newest = (*newest).max(*seq);
            }
        }
    }
    let (mut targets, mut keys, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
    for ((target, key), seq) in versions {
        targets.push(target);
        keys.push(key);
        seqs.push(seq);
    }
    let units: Vec<Uuid> = done.iter().map(|s| s.fence.lease).collect();
    let mut tx = super::index_only_transaction(pool).await?;
    let finished: Vec<Uuid> = sqlx::query_scalar(
        "with done as (
             delete from pdq.jobs j
             using unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int[], $6::text[])
                 as s(id, lease, cid, pid, together, superseded)
             where j.id = s.id and j.lease_token = s.lease
             returning j.*, s.cid as resolved_cid, s.pid as resolved_pid, s.together,
                 s.superseded as superseded_json
         ), released as (
             delete from pdq.inflight where lease_token = any($7)
         ), archived as (
             insert into pdq.finished_jobs (id, conversation_id, external_tag, participant_id,
                 participant_purpose, participant_external_contact_id, participant_name,
                 attributes, priority, idempotency_key, created_at, run_at, attempts,
                 first_attempt_at, resolved_conversation_id, resolved_participant_id,
                 coalesced_with, locked_by, seq, superseded_keys, producer)
             select id, conversation_id, external_tag, participant_id, participant_purpose,
                 participant_external_contact_id, participant_name, attributes, priority,
                 idempotency_key, created_at, run_at, attempts, first_attempt_at,
                 coalesce(resolved_cid, conversation_id), coalesce(resolved_pid, participant_id),
                 together, locked_by, coalesce(seq, id),
                 case when superseded_json is not null then
                     array(select jsonb_array_elements_text(superseded_json::jsonb)) end,
                 producer
             from done
         ), versions as (
             insert into pdq.applied_keys as a (target, key, seq)
             select * from unnest($8::text[], $9::text[], $10::bigint[])
             on conflict (target, key) do update
                 set seq = greatest(a.seq, excluded.seq),
                     applied_at = case when excluded.seq > a.seq then now() else a.applied_at end
         ), confirmed as (
             delete from pdq.uncertain_values u
             using unnest($8::text[], $9::text[], $10::bigint[]) as v(target, key, seq)
             where u.target = v.target and u.key = v.key and u.seq <= v.seq
         )
         select lease_token from done",
    )
    .bind(&ids)
    .bind(&leases)
    .bind(&cids)
    .bind(&pids)
    .bind(&together)
    .bind(&superseded)
    .bind(&units)
    .bind(&targets)
    .bind(&keys)
    .bind(&seqs)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let finished: HashSet<Uuid> = finished.into_iter().collect();
    Ok(units
        .into_iter()
        .filter(|l| !finished.contains(l))
        .collect())
}

/// Tells whether a row can be recorded in `pdq.finished_jobs` at all: inserts a row that no
/// job has (id 0) and rolls it back. When a unit's record fails but this succeeds, the failure
/// is the unit's own (a trigger, a constraint), not the table's (a full disk, a lock).
pub async fn probe_recording(pool: &PgPool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into pdq.finished_jobs (id, attributes, priority, created_at, run_at, attempts)
         values (0, '{}', 'live', now(), now(), 0)",
    )
    .execute(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(())
}

/// Whether a unit may send its PATCH to the participant it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHold {
    /// The unit now holds the resolved participant too; it must not send older values than
    /// the ones the API already accepted (`pdq.applied_keys`).
    Held {
        /// The unit's keys for which a value already landed on the participant, each with
        /// that value's `seq`: a job of the unit whose own value of the key is older leaves it
        /// out (the merged PATCH and each job sent alone in a split alike).
        landed: Vec<(String, i64)>,
        /// The unit's keys for which a value may have landed unseen: a job with an older value
        /// of one sends it only if the API does not hold that value.
        uncertain: Vec<Uncertain>,
    },
    /// Another unit holds that participant (or ran it before a crash), or a newer job of it that
    /// writes one of the unit's keys was attempted and has not finished: try again shortly.
    Busy,
}

/// Takes the resolved participant `target` for a unit that was claimed under another key (an
/// external tag, a purpose): two jobs that name one participant differently never run at the
/// same time, and a unit learns which of its keys a newer value already landed for. Once held,
/// the unit's jobs remember `target` (`pdq.jobs.resolved_key`) until they finish, so a retry
/// of theirs holds back older values for it however those name the participant.
///
/// Only landed values supersede. A newer job of `target` that never sent its PATCH does not: this
/// unit's value goes first, and the newer one follows under the participant hold. A newer job
/// that may have sent it and has not finished (`maybe_sent`: waiting for its retry after an
/// error or no answer, perhaps after its PATCH took effect unseen; rescued from a lost lease),
/// under `target` itself or resolved to it, makes this unit wait
/// ([`TargetHold::Busy`]) until it lands or dies; so does any job of `target` whose PATCH got no
/// answer a moment ago (`quiet_until`: the API may still apply it). A unit claimed under
/// `target` itself calls
/// this too when its claim saw such a job ([`Job::behind_attempted`](super::Job)).
///
/// A key whose job was inserted after the newer value landed (yet has a lower id) is not left
/// out: the job id sequence went backwards (a restore, a failover to a logical replica; see
/// `pdq.sequence_went_back`); the key is sent and the reset logged as an error.
///
/// `keys` are the keys the unit would send, each with the `seq` of its value.
pub async fn hold_target(
    pool: &PgPool,
    lease: Uuid,
    target: &str,
    keys: &[(String, i64)],
) -> Result<TargetHold, Error> {
    let (ours, taken): (bool, bool) = sqlx::query_as(TAKE_TARGET_SQL)
        .bind(lease)
        .bind(target)
        .fetch_one(pool)
        .await?;
    match (ours, taken) {
        (false, _) => return Err(Error::LeaseLost),
        (true, false) => return Ok(TargetHold::Busy),
        (true, true) => {}
    }
    let (names, seqs): (Vec<String>, Vec<i64>) = keys.iter().cloned().unzip();
    let (busy, landed_keys, landed_seqs, reset, uncertain_keys, uncertain_seqs, uncertain_values): CheckRow =
        sqlx::query_as(CHECK_TARGET_SQL)
        .bind(lease)
        .bind(target)
        .bind(&names)
        .bind(&seqs)
        .fetch_one(pool)
        .await?;
    if busy {
        // The target stays taken until the unit's retry releases every participant it holds.
        return Ok(TargetHold::Busy);
    }
    if !reset.is_empty() {
        tracing::error!(
            participant_key = target,
            keys = ?reset,
            "values with higher job ids already landed for {target} ({}) before this unit's \
             jobs were inserted: the job id sequence went backwards (a restore or a failover to \
             a logical replica?); sending these keys",
            reset.join(", ")
        );
    }
    Ok(TargetHold::Held {
        landed: landed_keys.into_iter().zip(landed_seqs).collect(),
        uncertain: uncertain_keys
            .into_iter()
            .zip(uncertain_seqs)
            .zip(uncertain_values)
            .map(|((key, seq), value)| Uncertain { key, seq, value })
            .collect(),
    })
}

/// A value of a key that may have landed on the participant unseen (`pdq.uncertain_values`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncertain {
    /// The key.
    pub key: String,
    /// The `seq` of the job whose value it is.
    pub seq: i64,
    /// The value.
    pub value: String,
}

/// What [`CHECK_TARGET_SQL`] returns: the unit must wait, the landed keys and their `seq`s, the
/// keys whose landed value the sequence reset makes older, and the uncertain values of the
/// unit's keys (keys, `seq`s, values).
type CheckRow = (
    bool,
    Vec<String>,
    Vec<i64>,
    Vec<String>,
    Vec<String>,
    Vec<i64>,
    Vec<String>,
);

/// `$1` lease, `$2` target: takes `target` for the unit if its lease holds and no other unit
/// holds it. Returns whether the lease holds and whether the target is the unit's now.
const TAKE_TARGET_SQL: &str = "
with mine as (
    select locked_until, locked_by from pdq.inflight
    where lease_token = $1 and locked_until >= now()
    limit 1
), taken as (
    insert into pdq.inflight as i (participant_key, lease_token, locked_until, locked_by)
    select $2, $1, locked_until, locked_by from mine
    on conflict (participant_key) do update set locked_until = i.locked_until
        where i.lease_token = $1
    returning 1
)
select exists (select 1 from mine), exists (select 1 from taken)";

/// `$1` lease, `$2` target (held by the unit), `$3`/`$4` the keys with the `seq` of their
/// values. Run after [`TAKE_TARGET_SQL`], in a statement of its own: taking a target that a
/// finishing unit was releasing waits for that unit to commit, and only a later statement sees
/// what it recorded. `keys` finds, per key, the unit's job whose value it is: a job the producer
/// inserted (no `seq` of its own) after the landed value is newer than it whatever its id says.
const CHECK_TARGET_SQL: &str = "
with keys as (
    select v.key, v.seq,
        (select j.created_at from pdq.jobs j
         where j.lease_token = $1 and j.seq is null and j.id = v.seq
         limit 1) as inserted_at
    from unnest($3::text[], $4::bigint[]) as v(key, seq)
), landed as (
    select k.key, a.seq as landed_seq,
        (a.seq > k.seq and k.inserted_at is not null
         and pdq.sequence_went_back(null, k.seq, k.inserted_at, a.applied_at)) as reset
    from keys k
    join pdq.applied_keys a on a.target = $2 and a.key = k.key
), waits as (
    select exists (select 1 from pdq.jobs r
                   where r.participant_key = $2 and r.state = 'running'
                     and r.lease_token is distinct from $1)
        or exists (select 1 from keys k
                   join pdq.jobs n on (n.participant_key = $2 or n.resolved_key = $2)
                                  and n.attributes ? k.key
                   where coalesce(n.seq, n.id) > k.seq and n.maybe_sent
                     and n.lease_token is distinct from $1)
        or exists (select 1 from pdq.jobs q
                   where (q.participant_key = $2 or q.resolved_key = $2) and q.maybe_sent
                     and q.quiet_until > now() and q.lease_token is distinct from $1) as busy
), resolved as (
    update pdq.jobs set resolved_key = $2
    where lease_token = $1 and participant_key <> $2
      and resolved_key is distinct from $2 and not (select busy from waits)
)
select (select busy from waits),
    array(select key from landed where not reset order by key),
    array(select landed_seq from landed where not reset order by key),
    array(select key from landed where reset order by key),
    array(select u.key from pdq.uncertain_values u join keys k on k.key = u.key
          where u.target = $2 order by u.key),
    array(select u.seq from pdq.uncertain_values u join keys k on k.key = u.key
          where u.target = $2 order by u.key),
    array(select u.value from pdq.uncertain_values u join keys k on k.key = u.key
          where u.target = $2 order by u.key)";

/// Puts a unit back to pending `after` from now (database clock), recording `last_error`.
/// With `spend_attempt` false (a rate-limit wait, an outage, a shutdown) the attempt the claim
/// counted is given back.
pub async fn retry<'e>(
    db: impl PgExecutor<'e>,
    fence: &Fence,
    after: Duration,
    last_error: &serde_json::Value,
    spend_attempt: bool,
) -> Result<(), Error> {
    retry_jobs(db, fence, after, last_error, spend_attempt, true, Sent::No).await
}

/// What the attempt being retried did with its PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Nothing left, or the API refused it before applying (a 429).
    No,
    /// It left and the API answered an error (a 5xx, which may follow applying it): the jobs
    /// count as maybe sent (`pdq.jobs.maybe_sent`) until they finish.
    Answered,
    /// It left and no answer came (a timeout, a reset): maybe sent, and the API may still apply
    /// it; the participants stay held for `quiet`.
    Unanswered {
        /// How long no other unit may send to the participants.
        quiet: Duration,
    },
}

impl Sent {
    fn maybe(self) -> bool {
        self != Sent::No
    }

    fn quiet(self) -> Option<Duration> {
        match self {
            Sent::Unanswered { quiet } => Some(quiet),
            _ => None,
        }
    }
}

/// [`retry`] for the jobs of `fence`, which may be only part of the unit: `release_unit`
/// ends the unit (frees its participants); leave it unset while other jobs of the unit are
/// still held (applied and waiting to be recorded), so the unit's lease can still be renewed.
///
/// `sent`: what the attempt did with its PATCH ([`Sent`]). After one that got no answer, the
/// API may still apply it: until the quiet time has passed (`pdq.jobs.quiet_until`) no other
/// unit sends to the participant, so a newer value cannot land first and this late one over it.
pub async fn retry_jobs<'e>(
    db: impl PgExecutor<'e>,
    fence: &Fence,
    after: Duration,
    last_error: &serde_json::Value,
    spend_attempt: bool,
    release_unit: bool,
    sent: Sent,
) -> Result<(), Error> {
    let quiet = sent.quiet();
    let changed: i64 = sqlx::query_scalar(
        "with retried as (
             update pdq.jobs
             set state = 'pending', run_at = now() + $3 * interval '1 second', lease_token = null,
                 locked_until = null, locked_by = null, last_error = $4,
                 attempts = attempts - case when $5 then 0 else 1 end,
                 maybe_sent = maybe_sent or $8,
                 quiet_until = case when $7::float8 is null then quiet_until
                                    else now() + $7 * interval '1 second' end
             where id = any($2) and lease_token = $1
             returning id, attributes, coalesce(seq, id) as seq,
                 coalesce(resolved_key, participant_key) as target
         ), released as (
             delete from pdq.inflight where lease_token = $1 and $6
         ), uncertain as (
             insert into pdq.uncertain_values as u (target, key, seq, value)
             select distinct on (r.target, kv.key) r.target, kv.key, r.seq, kv.value
             from retried r cross join lateral jsonb_each_text(r.attributes) as kv(key, value)
             where $8 and r.target like 'c:%/p:%'
             order by r.target, kv.key, r.seq desc
             on conflict (target, key) do update
                 set seq = excluded.seq, value = excluded.value, noted_at = excluded.noted_at
                 where excluded.seq > u.seq
         )
         select count(*) from retried",
    )
    .bind(fence.lease)
    .bind(&fence.job_ids)
    .bind(after.as_secs_f64().min(MAX_DELAY_SECS))
    .bind(storable_json(last_error).into_owned())
    .bind(spend_attempt)
    .bind(release_unit)
    .bind(quiet.map(|q| q.as_secs_f64().min(MAX_DELAY_SECS)))
    .bind(sent.maybe())
    .fetch_one(db)
    .await?;
    fenced(changed)
}

/// No retry is scheduled further out than this (a year): the interval arithmetic stays finite.
const MAX_DELAY_SECS: f64 = 365.0 * 86_400.0;

/// Ends a unit whose jobs were all finished one by one (nothing of it is left running): frees
/// its participants for the next unit.
pub async fn end_lease<'e>(db: impl PgExecutor<'e>, lease: Uuid) -> Result<(), Error> {
    sqlx::query("delete from pdq.inflight where lease_token = $1")
        .bind(lease)
        .execute(db)
        .await?;
    Ok(())
}

/// Gives a unit back at once without spending an attempt (graceful shutdown).
pub async fn release<'e>(db: impl PgExecutor<'e>, fence: &Fence) -> Result<(), Error> {
    release_jobs(db, fence, true).await
}

/// [`release`] for the jobs of `fence`, which may be only part of the unit; `release_unit` as
/// in [`retry_jobs`].
pub async fn release_jobs<'e>(
    db: impl PgExecutor<'e>,
    fence: &Fence,
    release_unit: bool,
) -> Result<(), Error> {
    let note = serde_json::json!({ "reason": "released", "at": Utc::now() });
    retry_jobs(
        db,
        fence,
        Duration::ZERO,
        &note,
        false,
        release_unit,
        Sent::No,
    )
    .await
}

/// Everything recorded with a dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    /// The reason category.
    pub reason: DeadReason,
    /// A human explanation.
    pub detail: String,
    /// The API's answer, when there was one.
    pub api: ApiRefusal,
    /// The conversation the job resolved to, if it got that far.
    pub resolved_conversation_id: Option<Uuid>,
    /// The participant the job resolved to, if it got that far.
    pub resolved_participant_id: Option<Uuid>,
    /// The failing attempt's PATCH left and may have been applied (an error answered after it,
    /// no answer): the jobs' values are kept as uncertain (`pdq.uncertain_values`), as are those
    /// of jobs marked maybe sent by an earlier attempt.
    pub maybe_sent: bool,
}

impl DeadLetterRecord {
    /// A record with a reason and an explanation and no API response.
    pub fn new(reason: DeadReason, detail: impl Into<String>) -> Self {
        DeadLetterRecord {
            reason,
            detail: detail.into(),
            api: ApiRefusal::default(),
            resolved_conversation_id: None,
            resolved_participant_id: None,
            maybe_sent: false,
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
             where id = any($2) and lease_token = $1
             returning *
         ), moved as (
             insert into pdq.dead_letters (id, conversation_id, external_tag, participant_id,
                 participant_purpose, participant_external_contact_id, participant_name,
                 attributes, priority, run_at, expires_at, idempotency_key, max_attempts,
                 created_at, attempts, first_attempt_at, last_attempt_at, reason, detail,
                 http_status, error_code, error_message, context_id, correlation_id, error_body,
                 resolved_conversation_id, resolved_participant_id, locked_by, seq, producer)
             select id, conversation_id, external_tag, participant_id, participant_purpose,
                 participant_external_contact_id, participant_name, attributes, priority,
                 pdq.readable_time(run_at), pdq.readable_time(expires_at), idempotency_key,
                 max_attempts, created_at, attempts,
                 first_attempt_at, last_attempt_at, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 locked_by, coalesce(seq, id), producer
             from dead
         ), released as (
             delete from pdq.inflight where lease_token = $1 and $13
         ), uncertain as (
             insert into pdq.uncertain_values as u (target, key, seq, value)
             select distinct on (t.target, kv.key) t.target, kv.key, t.seq, kv.value
             from (select coalesce(d.resolved_key, d.participant_key) as target,
                          coalesce(d.seq, d.id) as seq, d.attributes
                   from dead d
                   where d.maybe_sent or $14) t
             cross join lateral jsonb_each_text(t.attributes) as kv(key, value)
             where t.target like 'c:%/p:%'
             order by t.target, kv.key, t.seq desc
             on conflict (target, key) do update
                 set seq = excluded.seq, value = excluded.value, noted_at = excluded.noted_at
                 where excluded.seq > u.seq
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
    .bind(storable(&record.detail))
    .bind(record.api.http_status)
    .bind(record.api.error_code.as_deref().map(storable))
    .bind(record.api.error_message.as_deref().map(storable))
    .bind(record.api.context_id.as_deref().map(storable))
    .bind(record.api.correlation_id.as_deref().map(storable))
    .bind(
        record
            .api
            .error_body
            .as_ref()
            .map(|b| storable_json(b).into_owned()),
    )
    .bind(record.resolved_conversation_id)
    .bind(record.resolved_participant_id)
    .bind(release_unit)
    .bind(record.maybe_sent)
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
    let held: HashSet<Uuid> = sqlx::query_scalar(
        "update pdq.inflight set locked_until = now() + $2 * interval '1 second'
         where lease_token = any($1) and locked_until >= now()
         returning lease_token",
    )
    .bind(leases)
    .bind(lease.as_secs_f64())
    .fetch_all(db)
    .await?
    .into_iter()
    .collect();
    Ok(leases
        .iter()
        .filter(|l| !held.contains(l))
        .copied()
        .collect())
}

fn fenced(changed: i64) -> Result<(), Error> {
    if changed == 0 {
        Err(Error::LeaseLost)
    } else {
        Ok(())
    }
}
