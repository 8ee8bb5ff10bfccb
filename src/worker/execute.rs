//! Running one unit to an outcome: expiry, resolution, the PATCH, and the decision on failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::api::CallError;
use super::decide::{decide, Attempt, Decision};
use super::resolve::{pick_participant, ParticipantLocator, Target};
use super::{outage, Inner};
use crate::genesys::Failure;
use crate::queue::lease::{DeadLetterRecord, Success};
use crate::queue::{self, DeadReason, Job, Priority, Unit};

/// What happened to a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitOutcome {
    /// The API accepted the update for these jobs.
    Applied {
        /// The jobs applied (coalesced into one PATCH).
        jobs: usize,
        /// Where the update went.
        target: Target,
    },
    /// The unit goes back to pending.
    Retried {
        /// Why.
        failure: Failure,
        /// After how long.
        after: Duration,
    },
    /// The jobs were dead-lettered.
    DeadLettered {
        /// The reason.
        reason: DeadReason,
        /// How many jobs.
        jobs: usize,
    },
    /// The worker paused on a configuration problem; the unit was given back.
    Paused,
    /// Another worker took the unit over (our lease had expired), or the lease was too close
    /// to its end to send the PATCH: nothing was sent, nothing recorded.
    LeaseLost,
    /// The API refused the merged PATCH of several jobs (400/413): they were sent one at a time
    /// and only the jobs the API refused on their own were dead-lettered.
    Split {
        /// Jobs applied.
        applied: usize,
        /// Jobs dead-lettered.
        dead_lettered: usize,
        /// Jobs given back for a later retry (the one-at-a-time pass hit a retryable error).
        retried: usize,
    },
}

/// Why applying a unit stopped short of a PATCH the API accepted.
enum Stop {
    /// An API call failed (or a lookup found nothing yet): the outcome table decides.
    Failed(Box<Failed>),
    /// Recording in Postgres failed, or the lease was lost: nothing more to do here.
    Queue(queue::Error),
    /// The merged PATCH was refused and the unit was split (already finished).
    Split(UnitOutcome),
}

impl From<Failed> for Stop {
    fn from(failed: Failed) -> Self {
        Stop::Failed(Box::new(failed))
    }
}

impl From<queue::Error> for Stop {
    fn from(error: queue::Error) -> Self {
        Stop::Queue(error)
    }
}

/// A failed attempt with what the dead-letter record needs.
struct Failed {
    failure: Failure,
    detail: String,
    api: Option<CallError>,
    target: Option<Target>,
}

impl Failed {
    fn permanent(reason: DeadReason, detail: impl Into<String>) -> Failed {
        Failed {
            failure: Failure::Permanent(reason),
            detail: detail.into(),
            api: None,
            target: None,
        }
    }

    fn from_call(error: CallError) -> Failed {
        Failed {
            failure: error.failure.clone(),
            detail: error.to_string(),
            api: Some(error),
            target: None,
        }
    }

    fn with_target(mut self, target: Target) -> Failed {
        self.target = Some(target);
        self
    }
}

/// One executor: takes the most urgent unit once it holds a request token, runs it, repeats.
pub async fn executor(inner: Arc<Inner>, stop: CancellationToken) {
    let mut prepaid = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if inner.health.is_paused() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = stop.cancelled() => return,
            }
        }
        let Some(lane) = inner.buffer.next_lane() else {
            tokio::select! {
                _ = inner.buffer.filled.notified() => continue,
                _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                _ = stop.cancelled() => return,
            }
        };
        if !prepaid {
            let backfill = lane == Priority::Backfill;
            tokio::select! {
                _ = inner.pacer.acquire(lane) => prepaid = true,
                _ = inner.buffer.live_filled.notified(), if backfill => continue,
                _ = stop.cancelled() => return,
            }
        }
        if let Some(unit) = inner.buffer.pop() {
            prepaid = false;
            if unit.head().priority == Priority::Live {
                inner.pacer.note_live();
            }
            if let Err(error) = run_unit(&inner, unit, true).await {
                tracing::warn!(%error, "recording an outcome failed ({error}); the lease will expire and the unit run again");
            }
        }
    }
}

/// Runs one claimed unit to an outcome. With `prepaid`, the first API call already holds a
/// request token. However it ends, the unit is no longer tracked afterwards (its lease is not
/// renewed again).
pub async fn run_unit(
    inner: &Inner,
    unit: Unit,
    prepaid: bool,
) -> Result<UnitOutcome, queue::Error> {
    let lease = unit.lease;
    let head = unit.head();
    let span = tracing::info_span!(
        "unit",
        job.id = head.id,
        jobs = unit.jobs.len(),
        conversation.id = tracing::field::Empty,
        participant.id = tracing::field::Empty,
        external_tag = tracing::field::Empty,
    );
    if let Some(id) = head.locators.conversation_id {
        span.record("conversation.id", tracing::field::display(id));
    }
    if let Some(id) = head.locators.participant_id {
        span.record("participant.id", tracing::field::display(id));
    }
    if let Some(tag) = &head.locators.external_tag {
        span.record("external_tag", tag.as_str());
    }
    let outcome = run_tracked(inner, unit, prepaid).instrument(span).await;
    inner.untrack(lease);
    match outcome {
        Err(queue::Error::LeaseLost) => {
            inner.metrics.outcomes.add("lease_lost", 1);
            Ok(UnitOutcome::LeaseLost)
        }
        other => other,
    }
}

async fn run_tracked(
    inner: &Inner,
    unit: Unit,
    prepaid: bool,
) -> Result<UnitOutcome, queue::Error> {
    let jobs = unit.jobs.len();
    match drop_expired(inner, unit).await? {
        Some(unit) => apply_or_decide(inner, unit, prepaid).await,
        None => Ok(UnitOutcome::DeadLettered {
            reason: DeadReason::Expired,
            jobs,
        }),
    }
}

/// Dead-letters the jobs whose `expires_at` passed (on the database's clock); returns what is
/// left to apply.
async fn drop_expired(inner: &Inner, mut unit: Unit) -> Result<Option<Unit>, queue::Error> {
    let now = unit.clock.now();
    let fence = unit.fence();
    let (expired, live): (Vec<Job>, Vec<Job>) = unit
        .jobs
        .drain(..)
        .partition(|job| job.expires_at.is_some_and(|at| at <= now));
    if !expired.is_empty() {
        let ids: Vec<i64> = expired.iter().map(|job| job.id).collect();
        let message = "expires_at passed before the update could be applied";
        let attempt = expired.iter().map(|j| j.attempts).max().unwrap_or(0);
        let note = ErrorNote {
            at: now,
            attempt,
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
        queue::lease::dead_letter(&inner.pool, &fence, Some(&ids), &record, live.is_empty())
            .await?;
        inner
            .metrics
            .outcomes
            .add("dead_letter:expired", ids.len() as u64);
    }
    unit.jobs = live;
    Ok((!unit.jobs.is_empty()).then_some(unit))
}

async fn apply_or_decide(
    inner: &Inner,
    mut unit: Unit,
    prepaid: bool,
) -> Result<UnitOutcome, queue::Error> {
    let mut calls = Calls {
        inner,
        lane: unit.head().priority,
        prepaid,
    };
    match apply(&mut calls, &mut unit).await {
        Ok(target) => {
            inner.forbidden_streak.store(0, Ordering::Relaxed);
            record_applied(inner, &unit);
            let success = Success::of(&unit, target.conversation_id, target.participant_id);
            inner.completer.push(success).await;
            Ok(UnitOutcome::Applied {
                jobs: unit.jobs.len(),
                target,
            })
        }
        Err(Stop::Failed(failed)) => on_failure(inner, &unit, *failed).await,
        Err(Stop::Queue(error)) => Err(error),
        Err(Stop::Split(outcome)) => Ok(outcome),
    }
}

fn record_applied(inner: &Inner, unit: &Unit) {
    let now = Utc::now();
    for job in &unit.jobs {
        let latency = (now - job.created_at).to_std().unwrap_or_default();
        inner.metrics.enqueue_to_applied.observe(latency);
    }
    inner
        .metrics
        .outcomes
        .add("applied", unit.jobs.len() as u64);
}

async fn apply(calls: &mut Calls<'_>, unit: &mut Unit) -> Result<Target, Stop> {
    let target = resolve(calls, unit).await?;
    let span = tracing::Span::current();
    let locators = &unit.head().locators;
    if locators.conversation_id.is_none() {
        span.record(
            "conversation.id",
            tracing::field::display(target.conversation_id),
        );
    }
    if locators.participant_id.is_none() {
        span.record(
            "participant.id",
            tracing::field::display(target.participant_id),
        );
    }
    hold_target(calls.inner, unit, target).await?;
    let attributes = unit.merged_attributes();
    warn_on_long_values(calls.inner, &attributes, unit);
    if let Err(error) = send(calls, unit, target, attributes).await {
        let Stop::Failed(failed) = error else {
            return Err(error);
        };
        let failed = match failed.api {
            Some(api) => explain_refusal(calls, target, api).await,
            None => *failed,
        };
        let refused = matches!(
            failed.failure,
            Failure::Permanent(DeadReason::BadRequest | DeadReason::PayloadTooLarge)
        );
        if refused && unit.jobs.len() > 1 {
            return Err(Stop::Split(split(calls, unit, target).await?));
        }
        return Err(failed.with_target(target).into());
    }
    Ok(target)
}

/// Sends `attributes` in bodies under the size limit, each only while the lease outlasts it.
async fn send(
    calls: &mut Calls<'_>,
    unit: &Unit,
    target: Target,
    attributes: Map<String, Value>,
) -> Result<(), Stop> {
    if attributes.is_empty() {
        return Ok(());
    }
    for chunk in chunks(attributes, MAX_BODY_BYTES) {
        calls.patch(unit.lease, target, &chunk).await?;
    }
    Ok(())
}

/// A unit claimed under an external tag or a purpose resolved to a participant that a job
/// naming it by ids (or another way) may also update: take that participant too, so the two
/// never run at once, and leave out the keys a newer job of it already wrote.
async fn hold_target(inner: &Inner, unit: &mut Unit, target: Target) -> Result<(), Stop> {
    let key = queue::lease::target_key(target.conversation_id, target.participant_id);
    if unit.head().participant_key == key {
        return Ok(());
    }
    match queue::lease::hold_target(&inner.pool, unit.lease, &key, &unit.key_versions()).await? {
        queue::lease::TargetHold::Held { superseded } => {
            for job in &mut unit.jobs {
                let written: Vec<String> = superseded
                    .iter()
                    .filter(|k| job.attributes.get(k.as_str()).is_some())
                    .filter(|k| !job.superseded.contains(k))
                    .cloned()
                    .collect();
                job.superseded.extend(written);
            }
            Ok(())
        }
        queue::lease::TargetHold::Busy => Err(Stop::from(Failed {
            failure: Failure::Busy,
            detail: format!(
                "participant {} is being updated by another unit",
                target.participant_id
            ),
            api: None,
            target: Some(target),
        })),
    }
}

/// The API refused the merged PATCH of several jobs: sends them one at a time, oldest first,
/// so only the jobs it refuses on their own are dead-lettered. A retryable failure on the way
/// gives the jobs not yet sent back for a later retry.
async fn split(calls: &mut Calls<'_>, unit: &Unit, target: Target) -> Result<UnitOutcome, Stop> {
    let inner = calls.inner;
    let mut jobs: Vec<&Job> = unit.jobs.iter().collect();
    jobs.sort_by_key(|job| (job.seq, job.id));
    let (mut applied, mut dead, mut rest) = (Vec::new(), 0usize, Vec::new());
    let mut stopped: Option<Failed> = None;
    for job in jobs {
        if stopped.is_some() {
            rest.push(job.clone());
            continue;
        }
        let alone = Unit {
            jobs: vec![job.clone()],
            ..unit.clone()
        };
        match send(calls, &alone, target, alone.merged_attributes()).await {
            Ok(()) => applied.push(job.clone()),
            Err(Stop::Failed(failed))
                if matches!(failed.api.as_ref().and_then(|e| e.status), Some(400 | 413)) =>
            {
                let reason = match failed.failure {
                    Failure::Permanent(reason) => reason,
                    _ => DeadReason::BadRequest,
                };
                let record = dead_letter_record(
                    reason,
                    (*failed).with_target(target),
                    (attempt_of(&alone), job.max_attempts),
                    unit.clock.now(),
                );
                queue::lease::dead_letter(
                    &inner.pool,
                    &unit.fence(),
                    Some(&[job.id]),
                    &record,
                    false,
                )
                .await?;
                inner
                    .metrics
                    .outcomes
                    .add(&format!("dead_letter:{}", reason.as_str()), 1);
                dead += 1;
            }
            Err(Stop::Failed(failed)) => {
                stopped = Some(*failed);
                rest.push(job.clone());
            }
            Err(other) => return Err(other),
        }
    }
    let counts = (applied.len(), dead, rest.len());
    tracing::info!(
        applied = counts.0,
        dead_lettered = counts.1,
        retried = counts.2,
        "the API refused a merged update of {} jobs; sent them one at a time: {} applied, {} \
         dead-lettered, {} retried",
        unit.jobs.len(),
        counts.0,
        counts.1,
        counts.2
    );
    if !applied.is_empty() {
        let applied_unit = Unit {
            jobs: applied,
            ..unit.clone()
        };
        record_applied(inner, &applied_unit);
        let success = Success::of(&applied_unit, target.conversation_id, target.participant_id);
        inner.completer.push(success).await;
    }
    match stopped {
        Some(failed) => {
            let rest_unit = Unit {
                jobs: rest,
                ..unit.clone()
            };
            on_failure(inner, &rest_unit, failed).await?;
        }
        None if counts.0 == 0 => queue::lease::end_lease(&inner.pool, unit.lease).await?,
        None => {}
    }
    Ok(UnitOutcome::Split {
        applied: counts.0,
        dead_lettered: counts.1,
        retried: counts.2,
    })
}

/// The API's request size limit (`request.bytes.max`).
const MAX_BODY_BYTES: usize = 512_000;

/// Splits merged attributes into request bodies under the size limit (per-key merge makes
/// several smaller PATCHes equivalent to one).
fn chunks(attributes: Map<String, Value>, limit: usize) -> Vec<Map<String, Value>> {
    let overhead = r#"{"attributes":{}}"#.len();
    let mut out = vec![Map::new()];
    let mut size = overhead;
    for (key, value) in attributes {
        let entry =
            serde_json::to_string(&key).map_or(0, |k| k.len()) + value.to_string().len() + 2;
        if size + entry > limit && !out.last().is_some_and(Map::is_empty) {
            out.push(Map::new());
            size = overhead;
        }
        size += entry;
        out.last_mut().expect("one chunk").insert(key, value);
    }
    out
}

fn warn_on_long_values(inner: &Inner, attributes: &Map<String, Value>, unit: &Unit) {
    for (key, value) in attributes {
        if value.as_str().is_some_and(|v| v.chars().count() > 1_024) {
            inner.metrics.long_values.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                key,
                chars = value.as_str().map_or(0, |v| v.chars().count()),
                first_job = unit.head().id,
                "the value of {key} is over 1,024 characters: analytics will truncate it"
            );
        }
    }
}

async fn resolve(calls: &mut Calls<'_>, unit: &Unit) -> Result<Target, Failed> {
    let head = unit.head();
    let conversation_id = match (head.locators.conversation_id, &head.locators.external_tag) {
        (Some(id), _) => id,
        (None, Some(tag)) => find_by_tag(calls, unit, tag).await?,
        (None, None) => {
            return Err(Failed::permanent(
                DeadReason::BadRequest,
                "job names no conversation",
            ))
        }
    };
    let locator = ParticipantLocator::of(&head.locators);
    if let ParticipantLocator::Id(participant_id) = locator {
        return Ok(Target {
            conversation_id,
            participant_id,
        });
    }
    let view = match calls.inner.cache.get(conversation_id) {
        Some(view) => view,
        None => {
            let view = calls
                .conversation(conversation_id)
                .await
                .map_err(Failed::from_call)?;
            calls.inner.cache.put(conversation_id, view.clone());
            view
        }
    };
    let participant_id = pick_participant(&view, &locator).map_err(|reason| {
        Failed::permanent(reason, unresolved(&locator, reason, conversation_id))
    })?;
    Ok(Target {
        conversation_id,
        participant_id,
    })
}

async fn find_by_tag(calls: &mut Calls<'_>, unit: &Unit, tag: &str) -> Result<uuid::Uuid, Failed> {
    let found = calls.find_by_tag(tag).await.map_err(Failed::from_call)?;
    match found.as_slice() {
        [only] => Ok(*only),
        [] => {
            let first = unit
                .jobs
                .iter()
                .filter_map(|j| j.first_attempt_at)
                .min()
                .unwrap_or_else(Utc::now);
            let window =
                chrono::Duration::from_std(calls.inner.config.lookup_window).unwrap_or_default();
            Err(Failed {
                failure: Failure::NotYetVisible {
                    window_ends: first + window,
                    reason: DeadReason::ConversationNotFound,
                },
                detail: format!("no active conversation has external tag {tag}"),
                api: None,
                target: None,
            })
        }
        many => Err(Failed::permanent(
            DeadReason::ConversationAmbiguous,
            format!(
                "{} active conversations have external tag {tag}",
                many.len()
            ),
        )),
    }
}

/// A 400 or 409 from the PATCH usually means the conversation or participant is gone: one GET
/// tells which, so the dead letter says `conversation_ended` rather than a bare status.
async fn explain_refusal(calls: &mut Calls<'_>, target: Target, error: CallError) -> Failed {
    let mut failed = Failed::from_call(error);
    if !matches!(failed.api.as_ref().and_then(|e| e.status), Some(400 | 409)) {
        return failed;
    }
    calls.inner.cache.forget(target.conversation_id);
    if let Ok(view) = calls.conversation(target.conversation_id).await {
        let locator = ParticipantLocator::Id(target.participant_id);
        if let Err(reason @ (DeadReason::ConversationEnded | DeadReason::ParticipantDisconnected)) =
            pick_participant(&view, &locator)
        {
            failed.failure = Failure::Permanent(reason);
        }
    }
    failed
}

async fn on_failure(
    inner: &Inner,
    unit: &Unit,
    mut failed: Failed,
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
    let jobs = unit.jobs.len();
    let (status, correlation_id) = match &failed.api {
        Some(api) => (api.status, api.correlation_id.clone()),
        None => (None, None),
    };
    match decision {
        Decision::Retry {
            after,
            spend_attempt,
        } => {
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
            queue::lease::retry(&inner.pool, &unit.fence(), after, &note, spend_attempt).await?;
            inner.metrics.outcomes.add(
                &format!("retry:{}", failure_label(&failed.failure)),
                jobs as u64,
            );
            Ok(UnitOutcome::Retried {
                failure: failed.failure,
                after,
            })
        }
        Decision::DeadLetter(reason) => {
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
            queue::lease::dead_letter(&inner.pool, &unit.fence(), None, &record, true).await?;
            inner
                .metrics
                .outcomes
                .add(&format!("dead_letter:{}", reason.as_str()), jobs as u64);
            Ok(UnitOutcome::DeadLettered { reason, jobs })
        }
        Decision::Pause => {
            tracing::error!(
                reason = "configuration",
                http.status = status,
                correlation_id,
                "pausing the worker (configuration): {}; no job is dead-lettered, checking again \
                 with backoff",
                failed.detail
            );
            super::maintenance::remember_pause(inner, unit, status, failed.target);
            inner.health.fail(failed.detail);
            queue::lease::release(&inner.pool, &unit.fence()).await?;
            for waiting in inner.buffer.take_all() {
                inner.release(waiting.fence()).await;
            }
            Ok(UnitOutcome::Paused)
        }
    }
}

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
    at: chrono::DateTime<Utc>,
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

/// Why a participant locator found no single live participant, in words.
fn unresolved(
    locator: &ParticipantLocator,
    reason: DeadReason,
    conversation_id: uuid::Uuid,
) -> String {
    let who = match locator {
        ParticipantLocator::Id(id) => format!("participant {id}"),
        ParticipantLocator::Purpose(purpose) => format!("the participant with purpose {purpose}"),
        ParticipantLocator::ExternalContactId(id) => {
            format!("the participant with external contact id {id}")
        }
        ParticipantLocator::Name(name) => format!("the participant named {name}"),
    };
    match reason {
        DeadReason::ConversationEnded => {
            format!("conversation {conversation_id} has ended (looking for {who})")
        }
        DeadReason::ParticipantDisconnected => {
            format!("{who} has left conversation {conversation_id}")
        }
        DeadReason::ParticipantAmbiguous => {
            format!("several live participants match {who} in conversation {conversation_id}")
        }
        _ => format!("no live participant matches {who} in conversation {conversation_id}"),
    }
}

fn dead_letter_record(
    reason: DeadReason,
    failed: Failed,
    (attempt, max_attempts): (i32, i32),
    at: chrono::DateTime<Utc>,
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
    record.resolved_conversation_id = failed.target.map(|t| t.conversation_id);
    record.resolved_participant_id = failed.target.map(|t| t.participant_id);
    if let Some(api) = failed.api {
        record.http_status = api.status;
        record.error_code = api.code;
        record.error_message = api.message;
        record.context_id = api.context_id;
        record.correlation_id = api.correlation_id;
        record.error_body = api.body;
    }
    record
}

/// API calls for one unit: each waits for the request budget (except a prepaid first one)
/// and reports its response to the pacer and the metrics.
struct Calls<'a> {
    inner: &'a Inner,
    lane: Priority,
    prepaid: bool,
}

impl Calls<'_> {
    async fn before(&mut self) {
        if std::mem::take(&mut self.prepaid) {
            return;
        }
        self.inner.pacer.acquire(self.lane).await;
    }

    async fn after(
        &self,
        status: Option<u16>,
        meta: Option<&super::api::CallMeta>,
        error: Option<&CallError>,
    ) {
        let label = status.map_or_else(|| "transport_error".to_owned(), |s| s.to_string());
        self.inner.metrics.api_statuses.add(&label, 1);
        self.inner.metrics.recent_requests.note();
        if let Some(meta) = meta.or(error.map(|e| &e.meta)) {
            self.inner.metrics.api_latency.observe(meta.elapsed);
            let retry_after = error.and_then(|e| e.retry_after);
            self.inner
                .pacer
                .observe(status.unwrap_or(0), meta.rate_limit.as_ref(), retry_after)
                .await;
        }
    }

    async fn conversation(
        &mut self,
        id: uuid::Uuid,
    ) -> Result<super::api::ConversationView, CallError> {
        self.before().await;
        let result = self.inner.api.conversation(id).await;
        self.report(&result, Some(id)).await;
        result.map(|(view, _)| view)
    }

    async fn find_by_tag(&mut self, tag: &str) -> Result<Vec<uuid::Uuid>, CallError> {
        self.before().await;
        let result = self.inner.api.find_by_tag(tag).await;
        self.report(&result, None).await;
        result.map(|(ids, _)| ids)
    }

    /// The attributes PATCH: waits for the request budget, then confirms the lease (the wait
    /// may have been long), then sends.
    async fn patch(
        &mut self,
        lease: uuid::Uuid,
        target: Target,
        attributes: &Map<String, Value>,
    ) -> Result<(), Stop> {
        self.before().await;
        self.inner.may_send(lease).await?;
        let result = self
            .inner
            .api
            .patch(target.conversation_id, target.participant_id, attributes)
            .await
            .map(|meta| ((), meta));
        self.report(&result, Some(target.conversation_id)).await;
        result
            .map(|_| ())
            .map_err(|error| Failed::from_call(error).with_target(target).into())
    }

    async fn report<T>(
        &self,
        result: &Result<(T, super::api::CallMeta), CallError>,
        conversation: Option<uuid::Uuid>,
    ) {
        match result {
            Ok((_, meta)) => {
                self.after(Some(meta.status), Some(meta), None).await;
                outage::answered(self.inner, conversation);
            }
            Err(error) => {
                self.after(error.status, None, Some(error)).await;
                match error.failure {
                    Failure::Transient => self.inner.outage.record(conversation, true),
                    Failure::Outage => {}
                    _ => outage::answered(self.inner, conversation),
                }
            }
        }
        self.inner
            .metrics
            .token_renewals
            .store(self.inner.api.token_renewals(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_merges_split_into_bodies_under_the_limit() {
        let mut attributes = Map::new();
        for i in 0..30 {
            attributes.insert(format!("k{i}"), Value::String("x".repeat(40_000)));
        }
        let parts = chunks(attributes.clone(), MAX_BODY_BYTES);
        assert!(parts.len() >= 3);
        let mut seen = 0;
        for part in &parts {
            let body = serde_json::json!({ "attributes": part }).to_string();
            assert!(body.len() <= MAX_BODY_BYTES, "{}", body.len());
            seen += part.len();
        }
        assert_eq!(seen, 30);
        assert_eq!(chunks(Map::new(), MAX_BODY_BYTES).len(), 1);
    }
}
