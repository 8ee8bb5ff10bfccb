//! What the queue hands around: a job's priority, the reasons it may be dead-lettered, a claimed
//! job and unit, the fence every finish carries, and the database's clock.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::Locators;

/// How soon an update must be applied: live updates are always claimed before backfills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// An update for a conversation happening now.
    Live,
    /// Bulk or historical work that may use only part of the API budget.
    Backfill,
}

impl Priority {
    /// The value stored in `pdq.jobs.priority`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Live => "live",
            Priority::Backfill => "backfill",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "live" => Ok(Priority::Live),
            "backfill" => Ok(Priority::Backfill),
            other => Err(format!("unknown priority {other:?}: use live or backfill")),
        }
    }
}

impl sqlx::Type<sqlx::Postgres> for Priority {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Priority {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(text.parse()?)
    }
}

/// Why a job was dead-lettered; `as_str` is the value stored in `pdq.dead_letters.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// The API refused the request as malformed (400).
    BadRequest,
    /// The conversation or participant does not exist (404).
    NotFound,
    /// The API answered 409 (for example, the conversation is no longer active).
    Conflict,
    /// The request was too large (413).
    PayloadTooLarge,
    /// The API refused the media type (415).
    UnsupportedMediaType,
    /// The client may not touch this conversation (403 that concerns one conversation).
    Forbidden,
    /// The conversation has ended (`endTime` set).
    ConversationEnded,
    /// No active conversation carries the external tag within the lookup window.
    ConversationNotFound,
    /// No live participant matches the job's participant locator.
    ParticipantNotFound,
    /// Several live participants match the job's participant locator.
    ParticipantAmbiguous,
    /// The participant has left the conversation.
    ParticipantDisconnected,
    /// Several active conversations carry the job's external tag.
    ConversationAmbiguous,
    /// A key belongs to Genesys Cloud or another tool and is protected.
    ProtectedKey,
    /// Every attempt failed with a retryable error.
    RetriesExhausted,
    /// `expires_at` passed before the update could be applied.
    Expired,
    /// Any other permanent API error.
    Rejected,
    /// The row holds a value the worker cannot represent (e.g. a timestamp past year 262143).
    MalformedRow,
}

impl DeadReason {
    /// Every reason, in the order the outcome table lists them.
    pub const ALL: [DeadReason; 17] = [
        DeadReason::BadRequest,
        DeadReason::NotFound,
        DeadReason::Conflict,
        DeadReason::PayloadTooLarge,
        DeadReason::UnsupportedMediaType,
        DeadReason::Forbidden,
        DeadReason::ConversationEnded,
        DeadReason::ConversationNotFound,
        DeadReason::ParticipantNotFound,
        DeadReason::ParticipantAmbiguous,
        DeadReason::ParticipantDisconnected,
        DeadReason::ConversationAmbiguous,
        DeadReason::ProtectedKey,
        DeadReason::RetriesExhausted,
        DeadReason::Expired,
        DeadReason::Rejected,
        DeadReason::MalformedRow,
    ];

    /// The value stored in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::BadRequest => "bad_request",
            DeadReason::NotFound => "not_found",
            DeadReason::Conflict => "conflict",
            DeadReason::PayloadTooLarge => "payload_too_large",
            DeadReason::UnsupportedMediaType => "unsupported_media_type",
            DeadReason::Forbidden => "forbidden",
            DeadReason::ConversationEnded => "conversation_ended",
            DeadReason::ConversationNotFound => "conversation_not_found",
            DeadReason::ParticipantNotFound => "participant_not_found",
            DeadReason::ParticipantAmbiguous => "participant_ambiguous",
            DeadReason::ParticipantDisconnected => "participant_disconnected",
            DeadReason::ConversationAmbiguous => "conversation_ambiguous",
            DeadReason::ProtectedKey => "protected_key",
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::Expired => "expired",
            DeadReason::Rejected => "rejected",
            DeadReason::MalformedRow => "malformed_row",
        }
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason equals the name it is stored under (`DeadReason::NotFound == "not_found"`).
impl PartialEq<&str> for DeadReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl sqlx::Type<sqlx::Postgres> for DeadReason {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for DeadReason {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(text.parse()?)
    }
}

impl std::str::FromStr for DeadReason {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        DeadReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == value)
            .ok_or_else(|| {
                let known: Vec<&str> = DeadReason::ALL.iter().map(|r| r.as_str()).collect();
                format!(
                    "unknown dead-letter reason {value:?}: use one of {}",
                    known.join(", ")
                )
            })
    }
}

/// A job row as the worker sees it once claimed.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Job {
    /// The job id (`pdq.jobs.id`).
    pub id: i64,
    /// Its conversation and participant locators.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub locators: Locators,
    /// The attributes to merge: a JSON object of strings.
    pub attributes: serde_json::Value,
    /// Live or backfill.
    pub priority: Priority,
    /// Not before this time.
    pub run_at: DateTime<Utc>,
    /// After this time the update is pointless.
    pub expires_at: Option<DateTime<Utc>>,
    /// The producer's idempotency key.
    pub idempotency_key: Option<String>,
    /// Attempts allowed before `retries_exhausted`.
    pub max_attempts: i32,
    /// When the producer inserted the job.
    pub created_at: DateTime<Utc>,
    /// Attempts made so far, this one included.
    pub attempts: i32,
    /// When the first attempt started.
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// Which participant the job is for; jobs with equal keys apply one at a time, in order.
    pub participant_key: String,
    /// The job's place in its participant's history: its id, or for a requeued dead letter
    /// the id of the job it came from. Of two values for one key, the higher `seq` wins.
    pub seq: i64,
    /// Keys a newer job of the same participant already wrote: this job does not send them.
    pub superseded: Vec<String>,
    /// When claimed, a newer job of this participant (named by ids, or resolved to it from
    /// another locator) had been attempted and not finished: its PATCH may have taken effect
    /// unseen, so the unit checks before sending (`lease::hold_target`) and waits for it.
    #[sqlx(default)]
    #[serde(skip)]
    pub behind_attempted: bool,
    /// An earlier attempt's PATCH may have landed unseen (it got an error or no answer, or the
    /// lease of a worker that died was rescued): the unit reads the participant before sending
    /// again.
    #[sqlx(default)]
    #[serde(skip)]
    pub maybe_sent: bool,
}

/// A claimed unit of work: one participant's due jobs, oldest first, under one lease.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Fences every finishing operation on this unit.
    pub lease: Uuid,
    /// When the lease runs out unless renewed, on this process's monotonic clock, measured
    /// from before the claim was sent (so it errs early, never late).
    pub deadline: Instant,
    /// The database's clock, as seen when the unit was claimed.
    pub clock: DbClock,
    /// The jobs, in insertion order (ascending id); never empty.
    pub jobs: Vec<Job>,
}

impl Unit {
    /// The first (oldest) job, which names the conversation and participant for all of them.
    pub fn head(&self) -> &Job {
        &self.jobs[0]
    }

    /// The attributes of every job merged oldest to newest (by `seq`): the newest value wins
    /// per key. Keys a newer job already wrote (`Job::superseded`) are left out.
    pub fn merged_attributes(&self) -> serde_json::Map<String, serde_json::Value> {
        self.merged()
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect()
    }

    /// Each key this unit sends, with the `seq` of the job whose value it carries.
    pub fn key_versions(&self) -> Vec<(String, i64)> {
        self.merged()
            .into_iter()
            .map(|(k, (_, seq))| (k, seq))
            .collect()
    }

    fn merged(&self) -> std::collections::BTreeMap<String, (serde_json::Value, i64)> {
        let mut jobs: Vec<&Job> = self.jobs.iter().collect();
        jobs.sort_by_key(|job| (job.seq, job.id));
        let mut merged = std::collections::BTreeMap::new();
        for job in jobs {
            if let serde_json::Value::Object(attributes) = &job.attributes {
                for (key, value) in attributes {
                    if job.superseded.contains(key) {
                        continue;
                    }
                    merged.insert(key.clone(), (value.clone(), job.seq));
                }
            }
        }
        merged
    }

    /// The job ids in this unit.
    pub fn job_ids(&self) -> Vec<i64> {
        self.jobs.iter().map(|job| job.id).collect()
    }

    /// What fences a finishing operation on the jobs this unit still holds.
    pub fn fence(&self) -> Fence {
        Fence {
            lease: self.lease,
            job_ids: self.job_ids(),
        }
    }
}

/// The database's clock, read from this process: every time pdq compares with a deadline the
/// database stores (`expires_at`, the lookup window) is on the database's clock, not the host's.
#[derive(Debug, Clone, Copy)]
pub struct DbClock {
    at: DateTime<Utc>,
    seen: Instant,
}

impl DbClock {
    /// The database said `now()` was `at`, just now.
    pub fn new(at: DateTime<Utc>) -> DbClock {
        DbClock {
            at,
            seen: Instant::now(),
        }
    }

    /// The database's time now.
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.seen.elapsed()).unwrap_or_default();
        self.at.checked_add_signed(elapsed).unwrap_or(self.at)
    }
}

/// Fences a finishing operation: it touches only these jobs, and only while they still run
/// under this lease. Finishes find the jobs by primary key, so the claim path maintains no
/// index on the lease token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The unit's lease token.
    pub lease: Uuid,
    /// The jobs the unit holds.
    pub job_ids: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_clock_moves_with_this_process_from_what_the_database_said() {
        let said = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = DbClock::new(said);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = clock.now();
        assert!(now >= said + chrono::Duration::milliseconds(20), "{now}");
        assert!(now < said + chrono::Duration::seconds(5), "{now}");
    }

    #[test]
    fn a_merge_follows_seq_and_leaves_out_superseded_keys() {
        let job = |id: i64, seq: i64, attributes: serde_json::Value, superseded: &[&str]| Job {
            id,
            locators: Locators::default(),
            attributes,
            priority: Priority::Live,
            run_at: Utc::now(),
            expires_at: None,
            idempotency_key: None,
            max_attempts: 20,
            created_at: Utc::now(),
            attempts: 1,
            first_attempt_at: None,
            participant_key: "k".into(),
            seq,
            superseded: superseded.iter().map(|s| (*s).to_owned()).collect(),
            behind_attempted: false,
            maybe_sent: false,
        };
        let unit = Unit {
            lease: Uuid::new_v4(),
            deadline: Instant::now(),
            clock: DbClock::new(Utc::now()),
            jobs: vec![
                job(10, 10, serde_json::json!({"tier": "gold", "a": "1"}), &[]),
                // A requeued job: a later id, an older place in the history.
                job(
                    12,
                    3,
                    serde_json::json!({"tier": "silver", "b": "2"}),
                    &["b"],
                ),
            ],
        };
        let merged = unit.merged_attributes();
        assert_eq!(merged.get("tier").unwrap(), "gold");
        assert_eq!(merged.get("a").unwrap(), "1");
        assert!(!merged.contains_key("b"));
        assert_eq!(
            unit.key_versions(),
            vec![("a".to_owned(), 10), ("tier".to_owned(), 10)]
        );
    }
}
