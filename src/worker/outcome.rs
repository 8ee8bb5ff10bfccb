//! Recording how a unit ended: the jobs applied, retried or dead-lettered, with the one log
//! line and the metrics of each outcome written here and nowhere else.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::api::CallError;
use super::decide::{decide, Attempt, Decision};
use super::execute::UnitOutcome;
use super::resolve::Target;
use super::{outage, Inner};
use crate::genesys::Failure;
use crate::queue::lease::{self, DeadLetterRecord, Success};
use crate::queue::{self, ApiRefusal, DeadReason, Fence, Job, Unit};

/// An attempt that failed, with what the outcome table and the dead-letter record need.
pub(super) struct FailedAttempt {
    /// How the outcome table treats it.
    pub(super) failure: Failure,
    /// What happened, in words (the log line and the record's `message`).
    pub(super) detail: String,
    /// The API's answer, when a call failed.
    pub(super) api: Option<CallError>,
    /// Where the update was going, once resolved.
    pub(super) target: Option<Target>,
}

impl FailedAttempt {
    /// A failure no retry can fix, found without a failed call (resolution, a bad job).
    pub(super) fn permanent(reason: DeadReason, detail: impl Into<String>) -> FailedAttempt {
        FailedAttempt {
            failure: Failure::Permanent(reason),
            detail: detail.into(),
            api: None,
            target: None,
        }
    }

    /// A failed API call, classified.
    pub(super) fn from_call(error: CallError) -> FailedAttempt {
        FailedAttempt {
            failure: error.failure.clone(),
            detail: error.to_string(),
            api: Some(error),
            target: None,
        }
    }

    /// The same failure, about an update that was going to `target`.
    pub(super) fn with_target(mut self, target: Target) -> FailedAttempt {
        self.target = Some(target);
        self
    }
}

/// The unit was applied: counts it and hands it to the completer, which archives it.
pub(super) async fn applied(inner: &Inner, unit: &Unit, target: Target) {
    let now = Utc::now();
    for job in &unit.jobs {
        let latency = (now - job.created_at).to_std().unwrap_or_default();
        inner.metrics.observe_applied(job.priority, latency);
    }
    inner
        .metrics
        .record_outcome("applied", unit.jobs.len() as u64);
    let success = Success::of(unit, target.conversation_id, target.participant_id);
    inner.hand_to_recording(unit.lease);
    inner.completer.push(success).await;
}

/// The worker is stopping before the unit's PATCH could go: gives its jobs back without
/// spending an attempt. `release_unit` as in [`lease::retry_jobs`].
pub(super) async fn released(
    inner: &Inner,
    unit: &Unit,
    release_unit: bool,
) -> Result<(), queue::Error> {
    tracing::info!(
        outcome = "released",
        "giving back {} (no attempt spent): the worker is stopping and the update could not \
         be sent within the shutdown grace",
        job_list(&unit.job_ids())
    );
    inner
        .db(lease::release_jobs(
            &inner.pool,
            &unit.fence(),
            release_unit,
        ))
        .await?;
    inner
        .metrics
        .record_outcome("released", unit.jobs.len() as u64);
    Ok(())
}

/// Another worker took the unit over: nothing was recorded, only counted.
pub(super) fn lease_lost(inner: &Inner) {
    inner.metrics.record_outcome("lease_lost", 1);
}

/// Dead-letters the `expired` jobs of the unit `fence` holds (`now` on the database's clock);
/// `last` ends the unit.
pub(super) async fn dead_letter_expired(
    inner: &Inner,
    fence: &Fence,
    now: DateTime<Utc>,
    expired: &[Job],
    last: bool,
) -> Result<(), queue::Error> {
    let ids: Vec<i64> = expired.iter().map(|job| job.id).collect();
    let message = "expires_at passed before the update could be applied";
    let note = ErrorNote {
        at: now,
        attempt: expired.iter().map(|j| j.attempts).max().unwrap_or(0),
        max_attempts: expired.iter().map(|j| j.max_attempts).min().unwrap_or(1),
        failure: DeadReason::Expired.as_str(),
        api: None,
        message,
    };
    tracing::info!(
        outcome = "dead_lettered",
        reason = "expired",
        "dead-lettered {} expired job(s) ({}): {message}",
        ids.len(),
        job_list(&ids)
    );
    let record = DeadLetterRecord::new(DeadReason::Expired, note.to_json().to_string());
    inner
        .db(lease::dead_letter(
            &inner.pool,
            fence,
            Some(&ids),
            &record,
            last,
        ))
        .await?;
    count_dead_lettered(inner, DeadReason::Expired, ids.len());
    Ok(())
}

/// Dead-letters the one job of `alone` (cut from a split unit) the API refused on its own.
pub(super) async fn dead_letter_alone(
    inner: &Inner,
    alone: &Unit,
    reason: DeadReason,
    failed: FailedAttempt,
) -> Result<(), queue::Error> {
    let job = alone.head();
    let attempts = (attempt_of(alone), job.max_attempts);
    let record = dead_letter_record(reason, failed, attempts, alone.clock.now());
    dead_letter_one(inner, alone, job.id, &record).await
}

/// Moves job `id` of `unit` to the dead letters, leaving the rest of the unit held, and counts
/// it.
async fn dead_letter_one(
    inner: &Inner,
    unit: &Unit,
    id: i64,
    record: &DeadLetterRecord,
) -> Result<(), queue::Error> {
    inner
        .db(lease::dead_letter(
            &inner.pool,
            &unit.fence(),
            Some(&[id]),
            record,
            false,
        ))
        .await?;
    count_dead_lettered(inner, record.reason, 1);
    Ok(())
}

/// The summary line of a split unit.
pub(super) fn log_split(jobs: usize, applied: usize, dead_lettered: usize, retried: usize) {
    tracing::info!(
        applied,
        dead_lettered,
        retried,
        "the API refused a merged update of {jobs} jobs; sent them one at a time: {applied} \
         applied, {dead_lettered} dead-lettered, {retried} retried"
    );
}

fn count_dead_lettered(inner: &Inner, reason: DeadReason, jobs: usize) {
    inner
        .metrics
        .record_outcome(&format!("dead_letter:{}", reason.as_str()), jobs as u64);
}

/// Applies the outcome table to a failed attempt and records the decision: retry, dead letter,
/// or a pause of the whole worker (the unit and every buffered one given back).
/// `release_unit` as in [`lease::retry_jobs`]: unset when `unit` is only the part of a unit
/// whose other jobs wait to be recorded.
pub(super) async fn on_failure(
    inner: &Inner,
    unit: &Unit,
    mut failed: FailedAttempt,
    release_unit: bool,
) -> Result<UnitOutcome, queue::Error> {
    if failed.failure == Failure::Forbidden {
        inner.forbidden_streak.fetch_add(1, Ordering::Relaxed);
    }
    if failed.failure == Failure::Transient && inner.outage.is_widespread() {
        failed.failure = Failure::Outage;
        failed.detail = format!(
            "most calls across conversations fail ({}); the last: {}",
            inner.outage.summary(),
            failed.detail
        );
    }
    if failed.failure == Failure::Outage {
        outage::pause_fleet(inner, &failed.detail).await;
    }
    let attempt = Attempt {
        attempts: unit.jobs.iter().map(|j| j.attempts).max().unwrap_or(1),
        max_attempts: unit.jobs.iter().map(|j| j.max_attempts).min().unwrap_or(1),
        expires_at: unit.jobs.iter().filter_map(|j| j.expires_at).min(),
        consecutive_forbidden: inner.forbidden_streak.load(Ordering::Relaxed),
    };
    let decision = {
        let mut rng = inner.rng.lock().unwrap();
        decide(
            &failed.failure,
            attempt,
            unit.clock.now(),
            &inner.config.backoff,
            &mut *rng,
        )
    };
    if let Decision::DeadLetter(DeadReason::Expired | DeadReason::RetriesExhausted) = decision {
        if unit.jobs.len() > 1 {
            return ran_out_per_job(inner, unit, failed, attempt, release_unit).await;
        }
    }
    match decision {
        Decision::Retry {
            after,
            spend_attempt,
        } => {
            let spend = (spend_attempt, release_unit);
            retried(inner, unit, failed, attempt, after, spend).await
        }
        Decision::DeadLetter(reason) => {
            dead_lettered(inner, unit, failed, (attempt, reason), release_unit).await
        }
        Decision::Pause => paused(inner, unit, failed, release_unit).await,
    }
}

/// The facts of one job of a unit, as if it had failed alone.
fn attempt_alone(job: &Job, consecutive_forbidden: u32) -> Attempt {
    Attempt {
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        expires_at: job.expires_at,
        consecutive_forbidden,
    }
}

/// A coalesced unit ran out of time or attempts: the deadline and the attempt limit are each
/// job's own, so only the jobs they bind are dead-lettered (each as if it had failed alone);
/// the others are retried with the retry of the most pressed among them, which lands before
/// every deadline of theirs.
async fn ran_out_per_job(
    inner: &Inner,
    unit: &Unit,
    failed: FailedAttempt,
    attempt: Attempt,
    release_unit: bool,
) -> Result<UnitOutcome, queue::Error> {
    let now = unit.clock.now();
    let mut dying: Vec<(DeadReason, Job)> = Vec::new();
    let mut rest: Vec<(Option<DateTime<Utc>>, Duration, bool, Job)> = Vec::new();
    {
        let mut rng = inner.rng.lock().unwrap();
        for job in &unit.jobs {
            let alone = attempt_alone(job, attempt.consecutive_forbidden);
            match decide(
                &failed.failure,
                alone,
                now,
                &inner.config.backoff,
                &mut *rng,
            ) {
                Decision::Retry {
                    after,
                    spend_attempt,
                } => rest.push((job.expires_at, after, spend_attempt, job.clone())),
                Decision::DeadLetter(reason) => dying.push((reason, job.clone())),
                Decision::Pause => rest.push((job.expires_at, Duration::ZERO, false, job.clone())),
            }
        }
    }
    // The earliest deadline first; a job without one last.
    rest.sort_by_key(|(deadline, ..)| (deadline.is_none(), *deadline));
    let Some(&(_, after, spend_attempt, _)) = rest.first() else {
        let reason = dying.first().map_or(DeadReason::Expired, |(r, _)| *r);
        return dead_lettered(inner, unit, failed, (attempt, reason), release_unit).await;
    };
    let rest_unit = Unit {
        jobs: rest.into_iter().map(|(.., job)| job).collect(),
        ..unit.clone()
    };
    let rest_attempt = Attempt {
        attempts: rest_unit.jobs.iter().map(|j| j.attempts).max().unwrap_or(1),
        max_attempts: rest_unit
            .jobs
            .iter()
            .map(|j| j.max_attempts)
            .min()
            .unwrap_or(1),
        expires_at: rest_unit.jobs.iter().filter_map(|j| j.expires_at).min(),
        ..attempt
    };
    for (reason, job) in &dying {
        let copy = FailedAttempt {
            failure: failed.failure.clone(),
            detail: failed.detail.clone(),
            api: failed.api.clone(),
            target: failed.target,
        };
        let record = dead_letter_record(*reason, copy, (job.attempts, job.max_attempts), now);
        tracing::info!(
            outcome = "dead_lettered",
            reason = reason.as_str(),
            "dead-lettered job {} as {reason} (its own deadline or attempts; the rest of its unit \
             is retried): {}",
            job.id,
            failed.detail
        );
        dead_letter_one(inner, unit, job.id, &record).await?;
    }
    retried(
        inner,
        &rest_unit,
        failed,
        rest_attempt,
        after,
        (spend_attempt, release_unit),
    )
    .await
}

/// The HTTP status and correlation id of a failed call, for the log line.
fn call_ids(failed: &FailedAttempt) -> (Option<u16>, Option<String>) {
    match &failed.api {
        Some(api) => (api.status, api.correlation_id.clone()),
        None => (None, None),
    }
}

/// What the failed attempt did with its PATCH: a call with a target that failed was the PATCH
/// (lookups fail before there is one). An error answer may follow applying it (not a 429); no
/// answer (a timeout, a reset) leaves it free to apply after the worker gave up on it.
fn patch_sent(failed: &FailedAttempt, inner: &Inner) -> lease::Sent {
    match &failed.api {
        _ if !may_have_landed(failed) => lease::Sent::No,
        Some(api) if api.status.is_none() => lease::Sent::Unanswered {
            quiet: quiet_after_unanswered(inner),
        },
        _ => lease::Sent::Answered,
    }
}

/// Whether the failed attempt's PATCH left and the API may have applied it: a call with a
/// target failed (lookups fail before there is one), and not with a refusal that applies
/// nothing (a 429, a 4xx).
fn may_have_landed(failed: &FailedAttempt) -> bool {
    match (&failed.target, &failed.api) {
        (Some(_), Some(api)) => {
            !matches!(failed.failure, Failure::RateLimited { .. })
                && !api
                    .status
                    .is_some_and(|status| (400..500).contains(&status))
        }
        _ => false,
    }
}

/// How long the participants of an unanswered PATCH stay held after it: twice the request
/// timeout. pdq assumes a request the API has not answered within that long never applies
/// (see docs/how-a-job-moves.md); until then no other unit sends to them, so a newer value
/// cannot land before this older one does.
fn quiet_after_unanswered(inner: &Inner) -> Duration {
    inner.api.request_timeout() * 2
}

/// Puts the unit back to pending `after` from now.
async fn retried(
    inner: &Inner,
    unit: &Unit,
    failed: FailedAttempt,
    attempt: Attempt,
    after: Duration,
    (spend_attempt, release_unit): (bool, bool),
) -> Result<UnitOutcome, queue::Error> {
    let (status, correlation_id) = call_ids(&failed);
    let counted = match spend_attempt {
        true => format!("attempt {} of {}", attempt.attempts, attempt.max_attempts),
        false => "no attempt spent".to_owned(),
    };
    tracing::info!(
        outcome = "retried",
        failure = failure_label(&failed.failure),
        http.status = status,
        correlation_id,
        retry_in_ms = after.as_millis() as u64,
        "retrying {} in {} ({counted}): {}",
        job_list(&unit.job_ids()),
        seconds(after),
        failed.detail
    );
    let note = ErrorNote {
        at: unit.clock.now(),
        attempt: attempt.attempts,
        max_attempts: attempt.max_attempts,
        failure: failure_label(&failed.failure),
        api: failed.api.as_ref(),
        message: &failed.detail,
    }
    .to_json();
    let fence = unit.fence();
    inner
        .db(lease::retry_jobs(
            &inner.pool,
            &fence,
            after,
            &note,
            spend_attempt,
            release_unit,
            patch_sent(&failed, inner),
        ))
        .await?;
    inner.metrics.record_outcome(
        &format!("retry:{}", failure_label(&failed.failure)),
        unit.jobs.len() as u64,
    );
    Ok(UnitOutcome::Retried {
        failure: failed.failure,
        after,
    })
}

/// Moves every job of the unit to the dead letters with `reason`.
async fn dead_lettered(
    inner: &Inner,
    unit: &Unit,
    failed: FailedAttempt,
    (attempt, reason): (Attempt, DeadReason),
    release_unit: bool,
) -> Result<UnitOutcome, queue::Error> {
    let (status, correlation_id) = call_ids(&failed);
    tracing::info!(
        outcome = "dead_lettered",
        reason = reason.as_str(),
        http.status = status,
        correlation_id,
        "dead-lettered {} as {reason} (attempt {} of {}): {}",
        job_list(&unit.job_ids()),
        attempt.attempts,
        attempt.max_attempts,
        failed.detail
    );
    let attempts = (attempt.attempts, attempt.max_attempts);
    let record = dead_letter_record(reason, failed, attempts, unit.clock.now());
    inner
        .db(lease::dead_letter(
            &inner.pool,
            &unit.fence(),
            None,
            &record,
            release_unit,
        ))
        .await?;
    let jobs = unit.jobs.len();
    count_dead_lettered(inner, reason, jobs);
    Ok(UnitOutcome::DeadLettered { reason, jobs })
}

/// Pauses the whole worker on a configuration problem: `/healthz` and the log give the error
/// with its advice, and the unit and every buffered one are given back untouched.
async fn paused(
    inner: &Inner,
    unit: &Unit,
    failed: FailedAttempt,
    release_unit: bool,
) -> Result<UnitOutcome, queue::Error> {
    let (status, correlation_id) = call_ids(&failed);
    let advice = failed.api.as_ref().and_then(|api| api.advice.as_deref());
    let reason = match advice {
        Some(advice) => format!("{}. {advice}", failed.detail),
        None => failed.detail,
    };
    tracing::error!(
        reason = "configuration",
        http.status = status,
        correlation_id,
        "pausing the worker (configuration): {reason}; no job is dead-lettered, checking again \
         with backoff"
    );
    super::maintenance::remember_pause(inner, unit, status, failed.target);
    inner.health.fail(reason);
    inner
        .db(lease::release_jobs(
            &inner.pool,
            &unit.fence(),
            release_unit,
        ))
        .await?;
    for waiting in inner.buffer.take_all() {
        inner.release(waiting.fence()).await;
    }
    Ok(UnitOutcome::Paused)
}

/// The `failure` label of a retry in logs, metrics and `last_error`.
fn failure_label(failure: &Failure) -> &'static str {
    match failure {
        Failure::RateLimited { .. } => "rate_limited",
        Failure::Transient => "transient",
        Failure::NotYetVisible { .. } => "not_yet_visible",
        Failure::Outage => "outage",
        Failure::Busy => "participant_busy",
        Failure::Configuration => "configuration",
        Failure::Forbidden => "forbidden",
        Failure::Permanent(_) => "permanent",
    }
}

/// What `last_error` and a dead letter's `detail` hold: a JSON object, never a Rust dump.
struct ErrorNote<'a> {
    at: DateTime<Utc>,
    attempt: i32,
    max_attempts: i32,
    failure: &'a str,
    api: Option<&'a CallError>,
    message: &'a str,
}

impl ErrorNote<'_> {
    fn to_json(&self) -> Value {
        let api = self.api;
        serde_json::json!({
            "at": self.at,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "failure": self.failure,
            "status": api.and_then(|e| e.status),
            "code": api.and_then(|e| e.code.clone()),
            "correlation_id": api.and_then(|e| e.correlation_id.clone()),
            "message": self.message,
        })
    }
}

/// `job 3` or `jobs 3, 4, 5`.
fn job_list(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    match ids.len() {
        1 => format!("job {}", list[0]),
        _ => format!("jobs {}", list.join(", ")),
    }
}

/// `0.5 s`, `12 s`.
fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 10.0 {
        format!("{:.1} s", secs)
    } else {
        format!("{:.0} s", secs)
    }
}

/// The attempt a unit is on (its furthest job).
fn attempt_of(unit: &Unit) -> i32 {
    unit.jobs.iter().map(|j| j.attempts).max().unwrap_or(1)
}

/// The dead-letter record of a failed attempt, with the API's answer when there was one.
fn dead_letter_record(
    reason: DeadReason,
    failed: FailedAttempt,
    (attempt, max_attempts): (i32, i32),
    at: DateTime<Utc>,
) -> DeadLetterRecord {
    let note = ErrorNote {
        at,
        attempt,
        max_attempts,
        failure: reason.as_str(),
        api: failed.api.as_ref(),
        message: &failed.detail,
    }
    .to_json();
    let mut record = DeadLetterRecord::new(reason, note.to_string());
    record.maybe_sent = may_have_landed(&failed);
    record.resolved_conversation_id = failed.target.map(|t| t.conversation_id);
    record.resolved_participant_id = failed.target.map(|t| t.participant_id);
    if let Some(api) = failed.api {
        record.api = ApiRefusal {
            http_status: api.status.map(i32::from),
            error_code: api.code,
            error_message: api.message,
            context_id: api.context_id,
            correlation_id: api.correlation_id,
            error_body: api.body,
        };
    }
    record
}
