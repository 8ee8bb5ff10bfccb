//! The job id sequence: kept ahead of every id and `seq` pdq has recorded.
//!
//! A job's id is its place in its participant's history (the newest insert wins), so a
//! sequence that goes backwards (a `TRUNCATE … RESTART IDENTITY`, a restore without sequences,
//! a failover to a logical replica, which carries no sequence positions) would make new updates
//! look older than values already applied. The worker checks at start-up and then every few
//! seconds; the claim and the target hold recognise the jobs inserted in between (see
//! `queue/claim.rs`).

use sqlx::PgExecutor;

use super::Error;

/// What [`check_job_ids`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct IdCheck {
    /// The highest id or `seq` recorded anywhere (queued, applied, dead-lettered or cancelled
    /// jobs, landed values).
    pub highest: i64,
    /// The sequence's last value before the check (0: it had handed out none).
    pub sequence_was: i64,
    /// Whether the sequence was behind and was moved past `highest`.
    pub moved: bool,
    /// How many queued jobs, inserted since the sequence went backwards, got a new place
    /// (`seq`) after every recorded one.
    pub replaced: i64,
}

/// Moves the job id sequence past every id and `seq` recorded in `pdq.jobs`,
/// `pdq.finished_jobs`, `pdq.dead_letters`, `pdq.cancelled_jobs` and `pdq.applied_keys` when it
/// is behind (or behind the last healthy check, `pdq.job_id_checks`); never backwards. The
/// queued jobs inserted since it went backwards get places after every recorded one, in id
/// order. A healthy check is recorded.
pub async fn check_job_ids<'e>(db: impl PgExecutor<'e>) -> Result<IdCheck, Error> {
    Ok(sqlx::query_as("select * from pdq.check_job_ids()")
        .fetch_one(db)
        .await?)
}

/// [`check_job_ids`], returning only the highest id in use.
pub async fn advance_job_ids<'e>(db: impl PgExecutor<'e>) -> Result<i64, Error> {
    Ok(check_job_ids(db).await?.highest)
}

/// A repair of the job id sequence made by the insert that found it behind (the
/// `pdq.jobs_take_unused_ids` trigger), from `pdq.job_id_resets`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdReset {
    /// When the insert found it.
    pub detected_at: chrono::DateTime<chrono::Utc>,
    /// The id the sequence handed out, already recorded before.
    pub sequence_was: i64,
    /// Where the sequence was moved (the highest id or `seq` recorded).
    pub moved_to: i64,
}

/// The repairs no worker has reported yet, marked reported: each is reported exactly once
/// across the fleet.
pub async fn take_unreported_resets<'e>(db: impl PgExecutor<'e>) -> Result<Vec<IdReset>, Error> {
    Ok(sqlx::query_as(
        "update pdq.job_id_resets set reported = true where not reported
         returning detected_at, sequence_was, moved_to",
    )
    .fetch_all(db)
    .await?)
}
