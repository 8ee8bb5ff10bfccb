//! A job's story as readable text: what `pdq jobs show` prints, the situation column of
//! `pdq jobs list` and the report of `pdq jobs cancel`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use pdq::queue::jobs::{CancelledJob, JobRecord, JobState};
use serde_json::Value;

use crate::output;

/// The whole story of `job`: one labelled line per fact, then its requeue history.
pub fn render(
    job: &JobRecord,
    history: &[JobRecord],
    others: &[JobRecord],
    now: DateTime<Utc>,
) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let headline = match (&job.state, &job.reason) {
        (JobState::DeadLettered, Some(reason)) => {
            format!("job {} dead_lettered ({reason})", job.id)
        }
        (state, _) => format!("job {} {state}", job.id),
    };
    lines.push(("now", situation(job, now)));
    lines.push(("conversation", conversation_line(job)));
    lines.push(("participant", participant_line(job)));
    lines.push(("attributes", job.attributes.to_string()));
    lines.push(("priority", job.priority.clone()));
    if let Some(key) = &job.idempotency_key {
        lines.push(("idempotency key", key.clone()));
    }
    lines.push(("created", when(job.created_at, now)));
    if matches!(job.state, JobState::Pending | JobState::Running) || job.run_at != job.created_at {
        lines.push(("due", when(job.run_at, now)));
    }
    if let Some(expires) = job.expires_at {
        lines.push(("expires", when(expires, now)));
    }
    lines.push(("attempts", attempts_line(job, now)));
    if let Some(error) = &job.last_error {
        lines.push(("last error", error_text(error)));
    }
    if let Some(worker) = &job.locked_by {
        let lease = match (job.state, job.locked_until) {
            (JobState::Running, Some(until)) => {
                format!("held by {worker} until {}", when(until, now))
            }
            _ => format!("last held by {worker}"),
        };
        lines.push(("lease", lease));
    }
    if let Some(blocker) = job.blocked_by {
        lines.push((
            "blocked by",
            format!("job {blocker}: it runs or waits for a retry, and this participant's updates apply in order"),
        ));
    }
    outcome_lines(job, now, &mut lines);
    let mut text = format!("{}\n", crate::output::visible(&headline));
    for (label, value) in lines {
        let _ = writeln!(text, "  {label:<16} {}", crate::output::visible(&value));
    }
    if history.len() > 1 {
        let _ = writeln!(text, "  requeue history");
        for step in history {
            let marker = if step.id == job.id && step.state == job.state {
                "*"
            } else {
                " "
            };
            let _ = writeln!(
                text,
                "   {marker} {}",
                crate::output::visible(&history_line(step, now))
            );
        }
    }
    if !others.is_empty() {
        let ids: Vec<String> = others
            .iter()
            .map(|o| format!("{} ({})", o.state, o.finished_at.map_or("-".into(), stamp)))
            .collect();
        let _ = writeln!(
            text,
            "  note: {} older record(s) share id {} (the id sequence was reset): {}; see --json",
            others.len(),
            job.id,
            ids.join(", ")
        );
    }
    text
}

fn outcome_lines(job: &JobRecord, now: DateTime<Utc>, lines: &mut Vec<(&'static str, String)>) {
    if job.resolved_conversation_id.is_some() || job.resolved_participant_id.is_some() {
        lines.push((
            "resolved to",
            format!(
                "conversation {}, participant {}",
                output::cell(&job.resolved_conversation_id),
                output::cell(&job.resolved_participant_id)
            ),
        ));
    }
    match job.state {
        JobState::Applied => {
            let together = job.coalesced_with.unwrap_or(1);
            let mut applied = when(job.finished_at.unwrap_or(job.created_at), now);
            if together > 1 {
                let _ = write!(applied, ", in one PATCH with {} other job(s)", together - 1);
            }
            lines.push(("applied", applied));
            if let Some(keys) = job.superseded_keys.as_ref().filter(|k| !k.is_empty()) {
                lines.push((
                    "superseded keys",
                    format!(
                        "{} (not sent: a newer job had already written them)",
                        keys.join(", ")
                    ),
                ));
            }
        }
        JobState::DeadLettered => {
            let at = job.finished_at.map_or("-".into(), |t| when(t, now));
            lines.push((
                "dead-lettered",
                format!("{at}: {}", output::cell(&job.reason)),
            ));
            if let Some(detail) = &job.detail {
                lines.push(("detail", detail_text(detail)));
            }
            api_lines(job, lines);
        }
        JobState::Cancelled => {
            let at = job.finished_at.map_or("-".into(), |t| when(t, now));
            let by = job.cancelled_by.as_deref().unwrap_or("?");
            let note = job
                .note
                .as_deref()
                .map_or(String::new(), |n| format!(": {n}"));
            lines.push(("cancelled", format!("{at} by {by}{note}")));
        }
        JobState::Pending | JobState::Running => {}
    }
}

fn api_lines(job: &JobRecord, lines: &mut Vec<(&'static str, String)>) {
    let mut parts = Vec::new();
    if let Some(status) = job.api.http_status {
        parts.push(format!("HTTP {status}"));
    }
    if let Some(code) = &job.api.error_code {
        parts.push(format!("code {code}"));
    }
    if let Some(message) = &job.api.error_message {
        parts.push(message.clone());
    }
    if !parts.is_empty() {
        lines.push(("API error", parts.join(", ")));
    }
    if let Some(id) = &job.api.correlation_id {
        lines.push(("correlation id", id.clone()));
    }
    if let Some(id) = &job.api.context_id {
        lines.push(("context id", id.clone()));
    }
    if let Some(body) = &job.api.error_body {
        lines.push(("error body", body.to_string()));
    }
}

fn history_line(step: &JobRecord, now: DateTime<Utc>) -> String {
    let mut line = format!("job {} {}", step.id, step.state);
    if let Some(reason) = step
        .reason
        .as_ref()
        .filter(|_| step.state == JobState::DeadLettered)
    {
        let _ = write!(line, " ({reason})");
    }
    if let Some(at) = step.finished_at {
        let _ = write!(line, " {}", when(at, now));
    }
    if let (Some(at), Some(next)) = (step.requeued_at, step.requeued_as) {
        let _ = write!(line, "; requeued {} as job {next}", when(at, now));
    }
    line
}

/// What a job is doing now, in a few words (the NOW column of `pdq jobs list`).
pub fn situation(job: &JobRecord, now: DateTime<Utc>) -> String {
    match job.state {
        JobState::Pending => match job.blocked_by {
            Some(blocker) => format!("blocked by job {blocker}"),
            None if job.run_at > now && job.first_attempt_at.is_some() => {
                let why = job.last_error.as_ref().map(short_error).unwrap_or_default();
                format!("retry in {}{why}", duration(job.run_at - now))
            }
            None if job.run_at > now => format!("scheduled in {}", duration(job.run_at - now)),
            None => format!("due for {}", duration(now - job.run_at)),
        },
        JobState::Running => match job.locked_until {
            Some(until) => format!(
                "running on {}, lease ends in {}",
                output::cell(&job.locked_by),
                duration(until - now)
            ),
            None => "running".into(),
        },
        JobState::Applied => {
            format!(
                "applied {} ago",
                duration(now - job.finished_at.unwrap_or(now))
            )
        }
        JobState::DeadLettered => match (job.requeued_as, &job.reason) {
            (Some(next), _) => format!("requeued as job {next}"),
            (None, Some(reason)) => reason.clone(),
            (None, None) => "dead-lettered".into(),
        },
        JobState::Cancelled => format!("cancelled by {}", output::cell(&job.cancelled_by)),
    }
}

/// The conversation as a table cell: its id (resolved when known) or `tag:` and its tag.
pub fn conversation_cell(job: &JobRecord) -> String {
    match (
        job.resolved_conversation_id
            .or(job.locators.conversation_id),
        &job.locators.external_tag,
    ) {
        (Some(id), _) => id.to_string(),
        (None, Some(tag)) => format!("tag:{tag}"),
        (None, None) => "-".into(),
    }
}

fn conversation_line(job: &JobRecord) -> String {
    match (&job.locators.conversation_id, &job.locators.external_tag) {
        (Some(id), _) => id.to_string(),
        (None, Some(tag)) => format!("external tag {tag}"),
        (None, None) => "-".into(),
    }
}

fn participant_line(job: &JobRecord) -> String {
    let l = &job.locators;
    if let Some(id) = l.participant_id {
        id.to_string()
    } else if let Some(purpose) = &l.participant_purpose {
        format!("purpose {purpose}")
    } else if let Some(id) = &l.participant_external_contact_id {
        format!("external contact {id}")
    } else if let Some(name) = &l.participant_name {
        format!("name {name}")
    } else {
        "purpose customer (default)".into()
    }
}

fn attempts_line(job: &JobRecord, now: DateTime<Utc>) -> String {
    let mut line = match job.max_attempts {
        Some(max) => format!("{} of {max}", job.attempts),
        None => job.attempts.to_string(),
    };
    if let Some(first) = job.first_attempt_at {
        let _ = write!(line, ", first {}", when(first, now));
    }
    if let Some(last) = job.last_attempt_at {
        let _ = write!(line, ", last {}", when(last, now));
    }
    line
}

/// A stored error (`last_error`) as one sentence: what failed, with the API's status, code and
/// correlation id, then the explanation. Unknown fields are kept as `name value`.
pub fn error_text(error: &Value) -> String {
    let Value::Object(fields) = error else {
        return plain(error);
    };
    let text = |name: &str| fields.get(name).filter(|v| !v.is_null()).map(plain);
    let mut head = Vec::new();
    if let Some(attempt) = text("attempt") {
        head.push(format!("attempt {attempt}"));
    }
    if let Some(at) = text("at") {
        head.push(format!("at {at}"));
    }
    let what = text("failure").or_else(|| text("reason"));
    let mut facts = Vec::new();
    if let Some(status) = text("status") {
        facts.push(format!("HTTP {status}"));
    }
    if let Some(code) = text("code") {
        facts.push(format!("code {code}"));
    }
    if let Some(id) = text("correlation_id") {
        facts.push(format!("correlation id {id}"));
    }
    if let Some(worker) = text("worker") {
        facts.push(format!("worker {worker}"));
    }
    const KNOWN: [&str; 10] = [
        "attempt",
        "at",
        "failure",
        "reason",
        "status",
        "code",
        "correlation_id",
        "worker",
        "message",
        "detail",
    ];
    for (name, value) in fields
        .iter()
        .filter(|(n, v)| !KNOWN.contains(&n.as_str()) && !v.is_null())
    {
        facts.push(format!("{name} {}", plain(value)));
    }
    let mut sentence = head.join(" ");
    if let Some(what) = what {
        if !sentence.is_empty() {
            sentence.push_str(": ");
        }
        sentence.push_str(&what);
    }
    if !facts.is_empty() {
        let _ = write!(sentence, " ({})", facts.join(", "));
    }
    if let Some(message) = text("message").or_else(|| text("detail")) {
        if !sentence.is_empty() {
            sentence.push_str(": ");
        }
        sentence.push_str(&message);
    }
    sentence
}

/// A dead letter's `detail`: JSON is rendered like `last_error`, text is kept as it is.
fn detail_text(detail: &str) -> String {
    match serde_json::from_str::<Value>(detail) {
        Ok(value @ Value::Object(_)) => error_text(&value),
        _ => detail.to_owned(),
    }
}

fn short_error(error: &Value) -> String {
    let what = error
        .get("failure")
        .or_else(|| error.get("reason"))
        .map(plain);
    what.map_or_else(String::new, |w| format!(" after {w}"))
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let relative = if at <= now {
        format!("{} ago", duration(now - at))
    } else {
        format!("in {}", duration(at - now))
    };
    format!("{} ({relative})", stamp(at))
}

/// A duration as `3m12s`, `2h05m`, `4d03h` or `0.4s`.
pub fn duration(span: chrono::TimeDelta) -> String {
    let millis = span.num_milliseconds().max(0);
    let secs = millis / 1000;
    match secs {
        0..=9 => format!("{:.1}s", millis as f64 / 1000.0),
        10..=59 => format!("{secs}s"),
        60..=3_599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..=86_399 => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// Prints what `pdq jobs cancel` did, and why named jobs were not cancelled.
pub fn print_cancelled(
    cancelled: &[CancelledJob],
    refused: &[(i64, Option<JobState>)],
    json: bool,
) -> anyhow::Result<()> {
    let refusals: Vec<Value> = refused
        .iter()
        .map(|(id, state)| {
            serde_json::json!({ "job_id": id, "state": state, "why": why_not(*state) })
        })
        .collect();
    if json {
        return output::json(&serde_json::json!({
            "cancelled": cancelled, "not_cancelled": refusals,
        }));
    }
    let ids: Vec<String> = cancelled.iter().map(|c| c.job_id.to_string()).collect();
    match ids.len() {
        0 => println!("cancelled 0 jobs"),
        n => println!("cancelled {n} job(s): {}", ids.join(", ")),
    }
    for (id, state) in refused {
        println!("job {id} was not cancelled: {}", why_not(*state));
    }
    Ok(())
}

fn why_not(state: Option<JobState>) -> &'static str {
    match state {
        Some(JobState::Running) => {
            "it is running; a running job can only finish or be retried (cancel it once it \
             waits for its retry)"
        }
        Some(JobState::Applied) => "it was already applied",
        Some(JobState::DeadLettered) => "it is a dead letter (see pdq dlq purge)",
        Some(JobState::Cancelled) => "it was already cancelled",
        Some(JobState::Pending) => "it did not match the filter",
        None => "pdq knows no job with this id",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structured_error_reads_as_one_sentence() {
        let error = serde_json::json!({
            "at": "2026-11-25T15:00:07Z", "attempt": 2, "failure": "server_error",
            "status": 503, "correlation_id": "c-1", "message": "the API answered 503",
        });
        assert_eq!(
            error_text(&error),
            "attempt 2 at 2026-11-25T15:00:07Z: server_error (HTTP 503, correlation id c-1): \
             the API answered 503"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(chrono::TimeDelta::seconds(192)), "3m12s");
        assert_eq!(duration(chrono::TimeDelta::milliseconds(400)), "0.4s");
        assert_eq!(duration(chrono::TimeDelta::seconds(7_500)), "2h05m");
    }
}
