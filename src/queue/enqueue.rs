//! Inserting jobs: the same contract producers use from plain SQL.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgExecutor;

use super::{Error, Locators, Priority};

/// Attempts a job is allowed unless its producer says otherwise: the default of
/// `pdq.jobs.max_attempts` (the migrations say the same for producers writing SQL).
pub const DEFAULT_MAX_ATTEMPTS: i32 = 20;

/// One update to enqueue, named after the columns of `pdq.jobs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewJob {
    /// Where the update goes.
    #[serde(flatten)]
    pub locators: Locators,
    /// The attributes: a JSON object of string keys to string values.
    pub attributes: serde_json::Value,
    /// `live` (default) or `backfill`.
    pub priority: Option<Priority>,
    /// Not before this time (default now).
    pub run_at: Option<DateTime<Utc>>,
    /// After this time the update is dead-lettered as `expired`.
    pub expires_at: Option<DateTime<Utc>>,
    /// A repeated insert with the same key is a no-op.
    pub idempotency_key: Option<String>,
    /// Attempts allowed before `retries_exhausted` (default [`DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: Option<i32>,
}

/// Enqueues one job through `pdq.enqueue`; returns its id, or `None` when its idempotency key
/// was already applied or dead-lettered.
pub async fn enqueue<'e>(db: impl PgExecutor<'e>, job: &NewJob) -> Result<Option<i64>, Error> {
    refuse_locally(job)?;
    let id: Option<i64> = sqlx::query_scalar(
        "select pdq.enqueue(
            attributes => $1, conversation_id => $2, external_tag => $3, participant_id => $4,
            participant_purpose => $5, participant_external_contact_id => $6,
            participant_name => $7, priority => $8, run_at => coalesce($9, now()),
            expires_at => $10, idempotency_key => $11, max_attempts => $12)",
    )
    .bind(&job.attributes)
    .bind(job.locators.conversation_id)
    .bind(&job.locators.external_tag)
    .bind(job.locators.participant_id)
    .bind(&job.locators.participant_purpose)
    .bind(&job.locators.participant_external_contact_id)
    .bind(&job.locators.participant_name)
    .bind(job.priority.unwrap_or(Priority::Live).as_str())
    .bind(job.run_at)
    .bind(job.expires_at)
    .bind(&job.idempotency_key)
    .bind(job.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS))
    .fetch_one(db)
    .await
    .map_err(Error::on_insert)?;
    Ok(id)
}

/// Enqueues many jobs in one statement (one NOTIFY); returns how many rows were inserted.
/// Jobs whose idempotency key is already known are skipped.
pub async fn enqueue_many<'e>(db: impl PgExecutor<'e>, jobs: &[NewJob]) -> Result<u64, Error> {
    jobs.iter().try_for_each(refuse_locally)?;
    let column = |f: fn(&NewJob) -> Option<String>| jobs.iter().map(f).collect::<Vec<_>>();
    let priorities = column(|j| Some(j.priority.unwrap_or(Priority::Live).as_str().to_owned()));
    let result = sqlx::query(
        "insert into pdq.jobs (attributes, conversation_id, external_tag, participant_id,
            participant_purpose, participant_external_contact_id, participant_name, priority,
            run_at, expires_at, idempotency_key, max_attempts)
         select a, c, t, p, pp, px, pn, pr, coalesce(r, now()), e, k, coalesce(m, $13)
         from unnest($1::jsonb[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[],
                     $12::int[])
              with ordinality as u(a, c, t, p, pp, px, pn, pr, r, e, k, m, n)
         order by n
         on conflict on constraint idempotency_key_already_enqueued do nothing",
    )
    .bind(
        jobs.iter()
            .map(|j| j.attributes.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| j.locators.conversation_id)
            .collect::<Vec<_>>(),
    )
    .bind(column(|j| j.locators.external_tag.clone()))
    .bind(
        jobs.iter()
            .map(|j| j.locators.participant_id)
            .collect::<Vec<_>>(),
    )
    .bind(column(|j| j.locators.participant_purpose.clone()))
    .bind(column(|j| {
        j.locators.participant_external_contact_id.clone()
    }))
    .bind(column(|j| j.locators.participant_name.clone()))
    .bind(priorities)
    .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.expires_at).collect::<Vec<_>>())
    .bind(column(|j| j.idempotency_key.clone()))
    .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
    .bind(DEFAULT_MAX_ATTEMPTS)
    .execute(db)
    .await
    .map_err(Error::on_insert)?;
    Ok(result.rows_affected())
}

/// The longest idempotency key accepted, in characters (`pdq.jobs` refuses longer ones with
/// `idempotency_key_must_be_at_most_200_characters`).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;
/// The longest external tag accepted, in characters.
pub const MAX_EXTERNAL_TAG_CHARS: usize = 256;
/// The longest participant purpose, external contact id or name accepted, in characters.
pub const MAX_PARTICIPANT_LOCATOR_CHARS: usize = 256;
/// The longest attribute key accepted, in characters.
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 256;

/// The rules the database would refuse the job by, checked before sending it: Postgres stores
/// no NUL character in text or jsonb (it would fail with an encoding error, not a named rule),
/// and the length bounds give the same names the constraints do.
fn refuse_locally(job: &NewJob) -> Result<(), Error> {
    let refused = |constraint: &str| Error::Refused {
        meaning: super::constraint_meaning(constraint).to_owned(),
        constraint: constraint.to_owned(),
    };
    if json_contains_nul(&job.attributes) {
        return Err(refused(ATTRIBUTES_MUST_NOT_CONTAIN_NUL));
    }
    let locators = &job.locators;
    let texts = [
        &locators.external_tag,
        &locators.participant_purpose,
        &locators.participant_external_contact_id,
        &locators.participant_name,
        &job.idempotency_key,
    ];
    if texts.into_iter().flatten().any(|text| text.contains('\0')) {
        return Err(refused(TEXT_MUST_NOT_CONTAIN_NUL));
    }
    let longer = |text: &Option<String>, max: usize| {
        text.as_deref().is_some_and(|t| t.chars().count() > max)
    };
    if longer(&job.idempotency_key, MAX_IDEMPOTENCY_KEY_CHARS) {
        return Err(refused("idempotency_key_must_be_at_most_200_characters"));
    }
    if longer(&locators.external_tag, MAX_EXTERNAL_TAG_CHARS) {
        return Err(refused("external_tag_must_be_at_most_256_characters"));
    }
    let names = [
        &locators.participant_purpose,
        &locators.participant_external_contact_id,
        &locators.participant_name,
    ];
    if names
        .into_iter()
        .any(|name| longer(name, MAX_PARTICIPANT_LOCATOR_CHARS))
    {
        return Err(refused(
            "participant_locator_must_be_at_most_256_characters",
        ));
    }
    if let serde_json::Value::Object(map) = &job.attributes {
        if map
            .keys()
            .any(|key| key.chars().count() > MAX_ATTRIBUTE_KEY_CHARS)
        {
            return Err(refused("attribute_keys_must_be_at_most_256_characters"));
        }
    }
    Ok(())
}

/// The rule a NUL character in an attribute key or value breaks.
const ATTRIBUTES_MUST_NOT_CONTAIN_NUL: &str = "attributes_must_not_contain_nul";
/// The rule a NUL character in a locator or idempotency key breaks.
const TEXT_MUST_NOT_CONTAIN_NUL: &str = "text_must_not_contain_nul";

fn json_contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(json_contains_nul),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || json_contains_nul(item)),
        _ => false,
    }
}
