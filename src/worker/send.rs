//! Sending a resolved unit: request bodies under the size limit, warnings about values
//! analytics will truncate, and the one-at-a-time pass when the API refuses a merged update.

use serde_json::{Map, Value};

use super::calls::Calls;
use super::execute::{Stop, UnitOutcome};
use super::outcome::{self, FailedAttempt};
use super::resolve::{self, Target};
use super::Inner;
use crate::genesys::Failure;
use crate::queue::{DeadReason, Job, Unit};

/// The API's request size limit (`request.bytes.max`).
const MAX_BODY_BYTES: usize = 512_000;

/// Analytics truncates attribute values longer than this many characters.
const ANALYTICS_VALUE_CHARS: usize = 1_024;

/// Sends the unit's merged attributes to `target`. A refusal is explained (one GET tells an
/// ended conversation from a bad request); a merged update of several jobs the API refuses as
/// malformed or too large is split and sent one job at a time.
pub(super) async fn send_unit(
    calls: &mut Calls<'_>,
    unit: &Unit,
    target: Target,
) -> Result<(), Stop> {
    let attributes = unit.merged_attributes();
    warn_on_long_values(calls.inner, &attributes, unit);
    let Err(error) = send(calls, unit, target, attributes).await else {
        return Ok(());
    };
    let Stop::Failed(failed) = error else {
        return Err(error);
    };
    let failed = match failed.api {
        Some(api) => resolve::explain_refusal(calls, target, api).await,
        None => *failed,
    };
    let refused = matches!(
        failed.failure,
        Failure::Permanent(DeadReason::BadRequest | DeadReason::PayloadTooLarge)
    );
    if refused && unit.jobs.len() > 1 {
        return Err(Stop::Split(split(calls, unit, target).await?));
    }
    Err(failed.with_target(target).into())
}

/// Sends `attributes` in bodies under the size limit, each only while the lease outlasts it.
/// Every body's request slot is taken before the first leaves, so they go out back to back;
/// during shutdown the first body goes only if all of them can end within the grace period,
/// and the others then follow, so a stop gives back whole units, not units sent halfway.
async fn send(
    calls: &mut Calls<'_>,
    unit: &Unit,
    target: Target,
    attributes: Map<String, Value>,
) -> Result<(), Stop> {
    if attributes.is_empty() {
        return Ok(());
    }
    let bodies = chunks(attributes, MAX_BODY_BYTES);
    let count = bodies.len();
    if count > 1 {
        calls.prepay(count as u32).await;
    }
    for (sent, body) in bodies.iter().enumerate() {
        let left = (count - sent) as u32;
        calls
            .patch(unit.lease, target, body, (left, sent == 0))
            .await?;
    }
    Ok(())
}

/// The API refused the merged PATCH of several jobs: sends them one at a time, oldest first,
/// so only the jobs it refuses on their own are dead-lettered. A retryable failure on the way
/// gives the jobs not yet sent back for a later retry; so does a shutdown, without spending an
/// attempt. The jobs applied are recorded in every case, after the others were finished (the
/// unit's participants stay held until the applied jobs are recorded).
async fn split(calls: &mut Calls<'_>, unit: &Unit, target: Target) -> Result<UnitOutcome, Stop> {
    let inner = calls.inner;
    let mut jobs: Vec<&Job> = unit.jobs.iter().collect();
    jobs.sort_by_key(|job| (job.seq, job.id));
    let (mut applied, mut dead, mut rest) = (Vec::new(), 0usize, Vec::new());
    let mut stopped: Option<Halt> = None;
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
                let failed = (*failed).with_target(target);
                match outcome::dead_letter_alone(inner, &alone, reason, failed).await {
                    Ok(()) => dead += 1,
                    Err(error) => stopped = Some(Halt::Broken(Stop::Queue(error))),
                }
            }
            Err(Stop::Failed(failed)) => {
                stopped = Some(Halt::Failed(failed));
                rest.push(job.clone());
            }
            Err(Stop::Stopping) => {
                stopped = Some(Halt::Stopping);
                rest.push(job.clone());
            }
            Err(other) => stopped = Some(Halt::Broken(other)),
        }
    }
    let (applied_count, retried) = (applied.len(), rest.len());
    outcome::log_split(unit.jobs.len(), applied_count, dead, retried);
    let rest_unit = Unit {
        jobs: rest,
        ..unit.clone()
    };
    // The applied jobs, recorded last, end the unit; until then it stays held.
    let ends_unit = applied.is_empty();
    let finished = match stopped {
        Some(Halt::Failed(failed)) => outcome::on_failure(inner, &rest_unit, *failed, ends_unit)
            .await
            .map(drop)
            .map_err(Stop::Queue),
        Some(Halt::Stopping) => outcome::released(inner, &rest_unit, ends_unit)
            .await
            .map_err(Stop::Queue),
        Some(Halt::Broken(stop)) => Err(stop),
        None if ends_unit => inner
            .db(crate::queue::lease::end_lease(&inner.pool, unit.lease))
            .await
            .map_err(Stop::Queue),
        None => Ok(()),
    };
    if !applied.is_empty() {
        // Whatever happened to the others, what the API took is recorded.
        let applied_unit = Unit {
            jobs: applied,
            ..unit.clone()
        };
        outcome::applied(inner, &applied_unit, target).await;
    }
    finished?;
    Ok(UnitOutcome::Split {
        applied: applied_count,
        dead_lettered: dead,
        retried,
    })
}

/// Why the one-at-a-time pass of a split stopped before its last job.
enum Halt {
    /// A retryable failure: the outcome table decides for the jobs not yet sent.
    Failed(Box<FailedAttempt>),
    /// The worker is stopping: the jobs not yet sent are given back.
    Stopping,
    /// The lease was lost or Postgres failed: the jobs not yet sent are left to lease expiry.
    Broken(Stop),
}

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

/// Warns (and counts) each value analytics will truncate; the update itself still goes out.
fn warn_on_long_values(inner: &Inner, attributes: &Map<String, Value>, unit: &Unit) {
    for (key, value) in attributes {
        if value
            .as_str()
            .is_some_and(|v| v.chars().count() > ANALYTICS_VALUE_CHARS)
        {
            inner.metrics.count_long_value();
            tracing::warn!(
                key,
                chars = value.as_str().map_or(0, |v| v.chars().count()),
                first_job = unit.head().id,
                "the value of {key} is over 1,024 characters: analytics will truncate it"
            );
        }
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
