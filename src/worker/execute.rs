//! Running one unit to an outcome, as a pipeline of named steps:
//!
//! 1. record started: the unit's span ([`run_unit`]);
//! 2. drop expired: jobs past `expires_at` are dead-lettered ([`drop_expired`]);
//! 3. resolve: the conversation and participant ([`resolve::resolve`]);
//! 4. hold target: the resolved participant, if the unit was claimed under another key
//!    ([`hold_target`]);
//! 5. send (or split): the PATCH in bodies under the size limit ([`send::send_unit`]);
//! 6. classify: a failure goes through the outcome table ([`outcome::on_failure`]);
//! 7. record finished: applied, retried, dead-lettered or paused ([`outcome`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::calls::Calls;
use super::outcome::{self, FailedAttempt};
use super::resolve::{self, Target};
use super::{send, Inner};
use crate::genesys::Failure;
use crate::queue::lease::{self, TargetHold};
use crate::queue::{self, DeadReason, Job, Priority, Unit};

/// How long an executor of a paused worker sleeps before it looks again (the pause is lifted
/// by the maintenance task; this only bounds how late an executor notices).
const PAUSED_POLL: Duration = Duration::from_millis(200);

/// How long an idle executor waits for a unit before it looks at the buffer again, in case a
/// fill notification was missed.
const IDLE_POLL: Duration = Duration::from_millis(250);

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
        /// The failure the outcome table retried.
        failure: Failure,
        /// The delay before the unit may be claimed again.
        after: Duration,
    },
    /// The jobs were dead-lettered.
    DeadLettered {
        /// The reason recorded with the dead letters.
        reason: DeadReason,
        /// How many jobs were dead-lettered.
        jobs: usize,
    },
    /// The worker paused on a configuration problem; the unit was given back.
    Paused,
    /// Another worker took the unit over (our lease had expired), or the lease was too close
    /// to its end to send the PATCH: nothing was sent, nothing recorded.
    LeaseLost,
    /// The worker is stopping and the PATCH could not end within the grace period: the unit
    /// was given back without spending an attempt.
    Released,
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
pub(super) enum Stop {
    /// An API call failed (or a lookup found nothing yet): the outcome table decides.
    Failed(Box<FailedAttempt>),
    /// Recording in Postgres failed, or the lease was lost: nothing more to do here.
    Queue(queue::Error),
    /// The merged PATCH was refused and the unit was split (already finished).
    Split(UnitOutcome),
    /// The worker is stopping: no PATCH may start that could end after the grace period.
    Stopping,
}

impl From<FailedAttempt> for Stop {
    fn from(failed: FailedAttempt) -> Self {
        Stop::Failed(Box::new(failed))
    }
}

impl From<queue::Error> for Stop {
    fn from(error: queue::Error) -> Self {
        Stop::Queue(error)
    }
}

/// One executor: takes the most urgent unit once it holds a request token, runs it, repeats.
pub async fn executor(inner: Arc<Inner>, stop: CancellationToken) {
    // The lane the token in hand was taken for, if any.
    let mut prepaid: Option<Priority> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if inner.health.is_paused() {
            tokio::select! {
                _ = tokio::time::sleep(PAUSED_POLL) => continue,
                _ = stop.cancelled() => return,
            }
        }
        let Some(lane) = inner.buffer.next_lane() else {
            tokio::select! {
                _ = inner.buffer.filled.notified() => continue,
                _ = tokio::time::sleep(IDLE_POLL) => continue,
                _ = stop.cancelled() => return,
            }
        };
        if prepaid.is_none() {
            let backfill = lane == Priority::Backfill;
            tokio::select! {
                _ = inner.pacer.acquire(lane) => prepaid = Some(lane),
                _ = inner.buffer.live_filled.notified(), if backfill => continue,
                _ = stop.cancelled() => return,
            }
        }
        if let Some(unit) = inner.buffer.pop() {
            let paid_as = prepaid.take();
            if unit.head().priority == Priority::Live {
                inner.pacer.note_live();
            } else if paid_as == Some(Priority::Live) {
                // The live unit this token was taken for went to another executor: the
                // backfill unit in its place still keeps to the backfill share.
                inner.pacer.backfill_gate().await;
            }
            if let Err(error) = run_unit(&inner, unit, true).await {
                tracing::warn!(%error, "recording an outcome failed ({error}); the lease will expire and the unit run again");
            }
        }
    }
}

/// Runs one claimed unit to an outcome. With `prepaid`, the first API call already holds a
/// request token. However it ends, the unit is no longer tracked afterwards (its lease is not
/// renewed again), unless it was applied: then it is tracked until the completer records it.
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
    inner.untrack_unless_recording(lease);
    match outcome {
        Err(queue::Error::LeaseLost) => {
            outcome::lease_lost(inner);
            Ok(UnitOutcome::LeaseLost)
        }
        other => other,
    }
}

/// Steps 2 to 7 for a tracked unit.
async fn run_tracked(
    inner: &Inner,
    unit: Unit,
    prepaid: bool,
) -> Result<UnitOutcome, queue::Error> {
    let jobs = unit.jobs.len();
    let Some(mut unit) = drop_expired(inner, unit).await? else {
        return Ok(UnitOutcome::DeadLettered {
            reason: DeadReason::Expired,
            jobs,
        });
    };
    let mut calls = Calls::new(inner, unit.head().priority, prepaid);
    match apply(&mut calls, &mut unit).await {
        Ok(target) => {
            inner.forbidden_streak.store(0, Ordering::Relaxed);
            outcome::applied(inner, &unit, target).await;
            Ok(UnitOutcome::Applied {
                jobs: unit.jobs.len(),
                target,
            })
        }
        Err(Stop::Failed(failed)) => outcome::on_failure(inner, &unit, *failed, true).await,
        Err(Stop::Queue(error)) => Err(error),
        Err(Stop::Split(outcome)) => Ok(outcome),
        Err(Stop::Stopping) => {
            outcome::released(inner, &unit, true).await?;
            Ok(UnitOutcome::Released)
        }
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
        outcome::dead_letter_expired(inner, &fence, now, &expired, live.is_empty()).await?;
    }
    unit.jobs = live;
    Ok((!unit.jobs.is_empty()).then_some(unit))
}

/// Steps 3 to 5: resolve, hold the target, send.
async fn apply(calls: &mut Calls<'_>, unit: &mut Unit) -> Result<Target, Stop> {
    let target = resolve::resolve(calls, unit).await?;
    record_target(unit, target);
    let uncertain = hold_target(calls.inner, unit, target).await?;
    if read_before_sending(calls, unit, target, uncertain).await? {
        return Ok(target);
    }
    send::send_unit(calls, unit, target).await?;
    Ok(target)
}

/// Adds the resolved ids the job did not name to the unit's span.
fn record_target(unit: &Unit, target: Target) {
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
}

/// A unit claimed under an external tag or a purpose resolved to a participant that a job
/// naming it by ids (or another way) may also update: take that participant too, so the two
/// never run at once, and leave out the keys a newer job of it already wrote. A unit claimed
/// under the participant itself checks the same only when its claim saw a newer attempted job
/// of it (the common case costs no statement).
async fn hold_target(
    inner: &Inner,
    unit: &mut Unit,
    target: Target,
) -> Result<Vec<lease::Uncertain>, Stop> {
    let key = lease::target_key(target.conversation_id, target.participant_id);
    if unit.head().participant_key == key && !unit.jobs.iter().any(|job| job.behind_attempted) {
        return Ok(Vec::new());
    }
    let hold = inner
        .db(lease::hold_target(
            &inner.pool,
            unit.lease,
            &key,
            &unit.key_versions(),
        ))
        .await?;
    tracing::debug!(
        participant_key = key,
        jobs = ?unit.job_ids(),
        hold = ?hold,
        "holding the resolved participant"
    );
    match hold {
        TargetHold::Held { landed, uncertain } => {
            for (key, seq) in &landed {
                supersede(unit, key, *seq);
            }
            Ok(uncertain)
        }
        TargetHold::Busy => Err(Stop::from(FailedAttempt {
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

/// Leaves `key` out of every job of the unit whose own value of it is older than `seq`.
fn supersede(unit: &mut Unit, key: &str, seq: i64) {
    for job in &mut unit.jobs {
        if job.seq < seq
            && job.attributes.get(key).is_some()
            && !job.superseded.iter().any(|k| k == key)
        {
            job.superseded.push(key.to_owned());
        }
    }
}

/// Reads the participant's attributes before sending when a value may have landed unseen (the
/// unit holds the participant, so nothing else writes them meanwhile), in one GET for both
/// cases; true when nothing is left to send.
///
/// - A newer value of some of the unit's keys (`pdq.uncertain_values`): a key whose current
///   value is the uncertain one landed, and the older values of it are left out; otherwise
///   they are sent.
/// - The unit's own earlier attempt (a job marked maybe sent): when every value the unit would
///   send is on the participant already, it is not sent again, and the unit is recorded as
///   applied (the participant holds its values, whoever wrote them last). When the read fails,
///   the unit is sent as it would have been without it.
async fn read_before_sending(
    calls: &mut Calls<'_>,
    unit: &mut Unit,
    target: Target,
    uncertain: Vec<lease::Uncertain>,
) -> Result<bool, Stop> {
    let older: Vec<lease::Uncertain> = uncertain
        .into_iter()
        .filter(|u| {
            unit.jobs.iter().any(|job| {
                job.seq < u.seq
                    && job.attributes.get(&u.key).is_some()
                    && !job.superseded.contains(&u.key)
            })
        })
        .collect();
    let own = unit.jobs.iter().any(|job| job.maybe_sent);
    if older.is_empty() && !own {
        return Ok(false);
    }
    let view = match calls.conversation(target.conversation_id).await {
        Ok(view) => view,
        // Only the unit's own values were in doubt: without the read it sends them again,
        // as it would have without asking (the PATCH then meets whatever failed the read).
        Err(error) if older.is_empty() => {
            tracing::debug!(%error, "could not read the participant; sending");
            return Ok(false);
        }
        Err(error) => return Err(FailedAttempt::from_call(error).with_target(target).into()),
    };
    let current = view
        .participants
        .iter()
        .find(|p| p.id == target.participant_id)
        .map(|p| p.attributes.clone())
        .unwrap_or_default();
    for u in &older {
        let landed = current.get(&u.key) == Some(&u.value);
        tracing::debug!(
            key = u.key,
            seq = u.seq,
            landed,
            "read whether a value that may have landed unseen is on the participant"
        );
        if landed {
            supersede(unit, &u.key, u.seq);
        }
    }
    if !own {
        return Ok(false);
    }
    let wanted = unit.merged_attributes();
    let there = !wanted.is_empty()
        && wanted.iter().all(|(key, value)| {
            value
                .as_str()
                .is_some_and(|v| current.get(key).is_some_and(|c| c == v))
        });
    tracing::info!(
        keys = wanted.len(),
        there,
        "read whether the values an earlier attempt may have sent are on the participant"
    );
    Ok(there)
}
