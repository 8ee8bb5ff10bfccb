//! The console's pages: overview, jobs, a job's story, dead letters and their confirmations.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::charts::{self, format_number, Kind, Series};
use super::layout::{page, Section};
use super::params::{BadInput, Params};
use super::Shared;
use crate::queue::console::{
    self as data, ChartRange, DeadLetterKey, DeadLetterSearch, JobSearch, PAGE_SIZE,
};
use crate::queue::jobs::{self, JobFilter, JobRecord, JobState};
use crate::queue::{self, dlq, DeadLetter, DeadLetterFilter, DeadReason};

/// Why a page could not be shown.
pub(crate) enum PageError {
    /// The request's input is wrong (400).
    Bad(String),
    /// Nothing has this id (404).
    NotFound(String),
    /// The database failed (500, without internals).
    Database(queue::Error),
}

impl From<BadInput> for PageError {
    fn from(bad: BadInput) -> Self {
        PageError::Bad(bad.0)
    }
}

impl From<queue::Error> for PageError {
    fn from(error: queue::Error) -> Self {
        PageError::Database(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Bad(message) => error_page(StatusCode::BAD_REQUEST, "Bad request", &message),
            PageError::NotFound(message) => {
                error_page(StatusCode::NOT_FOUND, "Not found", &message)
            }
            PageError::Database(error) => {
                tracing::error!(%error, "console: database error");
                let cause = match &error {
                    queue::Error::Database(sqlx::Error::Database(db)) => db.message().to_owned(),
                    queue::Error::Database(other) => crate::db::describe(other),
                    other => other.to_string(),
                };
                error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Database error",
                    &format!("The database could not answer: {cause}"),
                )
            }
        }
    }
}

type PageResult = Result<Response, PageError>;

/// A stand-alone error page.
pub(crate) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · pdq console" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                header.top { a.brand href="/" { "pdq" } nav { a href="/" { "Overview" } a href="/jobs" { "Jobs" } a href="/dlq" { "Dead letters" } } }
                main {
                    h1 { (status.as_u16()) " " (title) }
                    div.banner.error.message { (message) }
                }
            }
        }
    };
    (status, Html(body.into_string())).into_response()
}

fn ok(markup: Markup) -> PageResult {
    Ok(Html(markup.into_string()).into_response())
}

fn params(raw: &Option<String>) -> Params {
    Params::parse(raw.as_deref().unwrap_or("").as_bytes())
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("—".to_owned(), time)
}

fn opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map_or("—".to_owned(), |v| v.to_string())
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn parse_id(raw: &str) -> Result<i64, PageError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(PageError::Bad(format!(
            "{:?} is not a job id (a positive whole number)",
            raw.chars().take(60).collect::<String>()
        ))),
    }
}

/// The embedded stylesheet.
pub(crate) async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
        .into_response()
}

/// The embedded script.
pub(crate) async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
        .into_response()
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "No such page: try the overview, jobs or dead letters.",
    )
}

fn where_is(locators: &queue::Locators) -> Markup {
    html! {
        @if let Some(cid) = locators.conversation_id {
            a href=(format!("/jobs?conversation={cid}")) { code { (cid) } }
        } @else if let Some(tag) = &locators.external_tag {
            "tag " code { (tag) }
        }
    }
}

fn participant(locators: &queue::Locators) -> String {
    if let Some(pid) = locators.participant_id {
        return pid.to_string();
    }
    if let Some(x) = &locators.participant_external_contact_id {
        return format!("external contact {x}");
    }
    if let Some(n) = &locators.participant_name {
        return format!("name {n}");
    }
    format!(
        "purpose {}",
        locators
            .participant_purpose
            .as_deref()
            .unwrap_or("customer")
    )
}

// ---------------------------------------------------------------- overview

/// `/`: charts first, then the pause banner, verdict, budget, depth and workers.
pub(crate) async fn overview(State(state): State<Shared>, RawQuery(raw): RawQuery) -> PageResult {
    let params = params(&raw);
    let range = match params.text("range").as_deref() {
        None | Some("hour") => ChartRange::Hour,
        Some("day") => ChartRange::Day,
        Some(other) => {
            return Err(PageError::Bad(format!(
                "range={:?}: expected hour or day",
                other.chars().take(30).collect::<String>()
            )))
        }
    };
    let status = super::queue_status(&state, state.config.first_read_wait).await?;
    let pool = state.pool.clone();
    let series = state
        .charts
        .get(range, move || {
            let pool = pool.clone();
            async move { data::chart_series(&pool, range).await }
        })
        .await?;
    let start = series.start;
    let secs = series.bucket_secs;
    let per = match range {
        ChartRange::Hour => "per minute",
        ChartRange::Day => "per 15 minutes",
    };
    let dead_series: Vec<Series<'_>> = series
        .dead_by_reason
        .iter()
        .enumerate()
        .map(|(i, (reason, values))| Series {
            label: reason.clone(),
            values,
            class: format!("c{}", (i + 1) % 8),
        })
        .collect();
    let status = status.as_deref();
    let workers = status.map_or(&[][..], |s| &s.workers[..]);
    let paused_budgets: Vec<_> = status
        .map_or(&[][..], |s| &s.budget_use[..])
        .iter()
        .filter(|b| b.paused_until.is_some())
        .collect();
    let paused_workers: Vec<_> = workers
        .iter()
        .filter(|w| w.is_alive() && w.state == "paused")
        .collect();
    let body = html! {
        div data-refresh=(state.config.refresh_secs) {
            @for b in &paused_budgets {
                div.banner.paused #pause-banner {
                    "Paused: budget " code { (b.name) } " until "
                    (opt_time(b.paused_until)) " — "
                    (b.paused_why.as_deref().unwrap_or("no reason recorded"))
                    @let seen: Vec<&str> = workers.iter()
                        .filter(|w| w.is_alive() && w.budget_name.as_deref() == Some(b.name.as_str()))
                        .map(|w| w.name.as_str()).collect();
                    @if !seen.is_empty() { " (seen by " (seen.join(", ")) ")" }
                }
            }
            @if paused_budgets.is_empty() && !paused_workers.is_empty() {
                div.banner.paused #pause-banner {
                    "Paused workers: "
                    @for w in &paused_workers {
                        code { (w.name) } ": " (w.pause_reason.as_deref().unwrap_or("no reason given")) " "
                    }
                }
            }
            div.actions {
                h1 { "Overview" }
                span.muted { "charts " (per) ", last " (range.as_str()) ":" }
                a href="/?range=hour" { "hour" }
                a href="/?range=day" { "day" }
            }
            section.charts {
                (charts::chart("chart-applied", "Applied", "jobs", Kind::Stacked,
                    &[Series { label: format!("applied {per}"), values: &series.applied, class: "c3".into() }],
                    start, secs))
                (charts::chart("chart-dead", "Dead-lettered by reason", "jobs", Kind::Stacked,
                    &dead_series, start, secs))
                (charts::chart("chart-limits", "429s and pauses", "", Kind::Lines,
                    &[Series { label: "429 responses".into(), values: &series.rate_limited, class: "c1".into() },
                      Series { label: "limiter pauses".into(), values: &series.pauses, class: "c2".into() },
                      Series { label: "paused workers".into(), values: &series.paused_workers, class: "c7".into() }],
                    start, secs))
                (charts::chart("chart-share", "Budget: live vs backfill requests", "requests", Kind::Stacked,
                    &[Series { label: "live".into(), values: &series.live_requests, class: "c0".into() },
                      Series { label: "backfill".into(), values: &series.backfill_requests, class: "c4".into() }],
                    start, secs))
                (charts::chart("chart-pickup", "Pickup latency (due → first attempt)", "s", Kind::Lines,
                    &[Series { label: "mean".into(), values: &series.pickup_mean_secs, class: "c6".into() },
                      Series { label: "max".into(), values: &series.pickup_max_secs, class: "c5".into() }],
                    start, secs))
            }
            p.muted { "429s and pauses come from the workers' heartbeats; live vs backfill counts the PATCH requests of applied and dead-lettered jobs (a coalesced PATCH once)." }
            @if let Some(status) = status {
                @let dead_waiting: i64 = status.dead_letters.iter().map(|d| d.jobs).sum();
                div.card.verdict #verdict {
                    b { (status.verdict.state) } (status.verdict.summary)
                    span.muted { " · as of " (time(status.generated_at)) }
                }
                div.grid2 {
                    div.card #budget {
                        h2 { "Budget (this minute)" }
                        @if status.budget_use.is_empty() {
                            p.muted { "No budget recorded yet (no worker has run)." }
                        }
                        @for b in &status.budget_use {
                            div {
                                code { (b.name) } " "
                                (charts::gauge(b.used_last_minute, b.limit_per_minute))
                                " " strong.used { (b.used_last_minute) } " / "
                                @match b.limit_per_minute {
                                    Some(0) | None => "unlimited",
                                    Some(limit) => (limit),
                                }
                                " requests"
                                div.muted { (b.used_means) }
                            }
                        }
                    }
                    div.card #depth {
                        h2 { "Depth by priority" }
                        table {
                            thead { tr { th { "priority" } th.num { "due" } th.num { "scheduled" } th.num { "retrying" } th.num { "running" } th.num { "oldest due" } } }
                            tbody {
                                @for p in &status.priorities {
                                    tr data-priority=(p.priority) {
                                        td { (p.priority) }
                                        td.num.due { (format_number(p.due as f64)) }
                                        td.num.scheduled { (format_number(p.scheduled as f64)) }
                                        td.num.retrying { (format_number(p.retrying as f64)) }
                                        td.num.running { (format_number(p.running as f64)) }
                                        td.num { (p.oldest_due_age_secs.map_or("—".to_owned(), queue::human_duration)) }
                                    }
                                }
                            }
                        }
                    }
                    div.card #dead-summary {
                        h2 { a href="/dlq" { "Dead letters" } " " span.muted.count { (format_number(dead_waiting as f64)) " waiting" } }
                        table {
                            tbody {
                                @for d in &status.dead_letters {
                                    tr { td { a href=(format!("/dlq?reason={}", d.reason)) { (d.reason) } } td.num { (format_number(d.jobs as f64)) } }
                                }
                            }
                        }
                    }
                }
                div.card #workers {
                    h2 { "Workers" }
                    @if status.workers.is_empty() {
                        p.muted { "No worker has sent a heartbeat." }
                    } @else {
                        table {
                            thead { tr { th { "name" } th { "host" } th { "state" } th.num { "last heartbeat" } th.num { "executors" } th { "budget" } th.num { "requests/min" } th { "pause reason" } } }
                            tbody {
                                @for w in &status.workers {
                                    tr {
                                        td { code { (w.name) } }
                                        td { (w.host) " pid " (w.pid) }
                                        td { span class=(format!("state {}", w.state)) { (w.state) } }
                                        td.num { (queue::human_duration(w.last_seen_secs_ago)) " ago" }
                                        td.num { (w.executors) }
                                        td { (opt(&w.budget_name)) }
                                        td.num { (opt(&w.api_requests_last_minute)) }
                                        td { (opt(&w.pause_reason)) }
                                    }
                                }
                            }
                        }
                    }
                }
                @if status.blocked_total > 0 {
                    div.card #blocked {
                        h2 { "Blocked participants (" (status.blocked_total) ")" }
                        ul {
                            @for b in &status.blocked_participants {
                                li { code { (b.participant_key) } ": " (b.hint(status.generated_at)) }
                            }
                        }
                    }
                }
            } @else {
                div.card.verdict #verdict-pending {
                    "Reading the queue's figures (about a second at a million jobs): this page \
                     refreshes itself and shows them."
                }
            }
        }
    };
    ok(page(
        "Overview",
        Section::Overview,
        state.config.allow_writes,
        body,
    ))
}

// ---------------------------------------------------------------- jobs

const STATES: [JobState; 5] = [
    JobState::Pending,
    JobState::Running,
    JobState::Applied,
    JobState::DeadLettered,
    JobState::Cancelled,
];

/// `/jobs`: search by id, idempotency key, conversation, external tag and state.
pub(crate) async fn jobs(State(state): State<Shared>, RawQuery(raw): RawQuery) -> PageResult {
    let params = params(&raw);
    let job_state = match params.text("state") {
        None => None,
        Some(s) => Some(s.parse::<JobState>().map_err(PageError::Bad)?),
    };
    let search = JobSearch {
        id: params.id("id")?,
        idempotency_key: params.free_text("key")?,
        conversation_id: params.uuid("conversation")?,
        external_tag: params.free_text("tag")?,
        state: job_state,
        before: params.id("before")?,
        limit: PAGE_SIZE,
    };
    let found = data::search_jobs(&state.pool, &search).await?;
    let next_link = found.next.map(|next| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for name in ["id", "key", "conversation", "tag", "state"] {
            if let Some(value) = params.text(name) {
                query.append_pair(name, &value);
            }
        }
        query.append_pair("before", &next.to_string());
        format!("/jobs?{}", query.finish())
    });
    let value = |name: &str| params.text(name).unwrap_or_default();
    let body = html! {
        h1 { "Jobs" }
        form.filters.card method="get" action="/jobs" {
            label { "job id" input type="text" name="id" value=(value("id")) inputmode="numeric" size="10"; }
            label { "idempotency key" input type="text" name="key" value=(value("key")); }
            label { "conversation id" input type="text" name="conversation" value=(value("conversation")) size="38"; }
            label { "external tag" input type="text" name="tag" value=(value("tag")); }
            label { "state"
                select name="state" {
                    option value="" { "any" }
                    @for s in STATES {
                        option value=(s.as_str()) selected[job_state == Some(s)] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Search" }
            a href="/jobs" { "clear" }
        }
        @if found.rows.is_empty() {
            p.muted #no-jobs { "No job matches." }
        } @else {
            table #jobs {
                thead { tr { th.num { "id" } th { "state" } th { "priority" } th { "conversation" } th { "participant" } th { "key" } th.num { "attempts" } th { "created" } th { "finished" } th { "reason" } } }
                tbody {
                    @for r in &found.rows {
                        tr data-id=(r.id) {
                            td.num { a href=(format!("/jobs/{}", r.id)) { (r.id) } }
                            td { span class=(format!("state {}", r.state)) { (r.state) } }
                            td { (r.priority) }
                            td { (where_is(&r.locators)) }
                            td { (participant(&r.locators)) }
                            td { (opt(&r.idempotency_key)) }
                            td.num { (r.attempts) }
                            td { (time(r.created_at)) }
                            td { (opt_time(r.finished_at)) }
                            td { (opt(&r.reason)) }
                        }
                    }
                }
            }
        }
        @if let Some(link) = next_link {
            p.pager { a #next-page href=(link) { "Next page →" } }
        }
    };
    ok(page("Jobs", Section::Jobs, state.config.allow_writes, body))
}

fn record_facts(r: &JobRecord) -> Markup {
    html! {
        dl.facts {
            dt { "state" } dd { span class=(format!("state {}", r.state)) { (r.state) } }
            dt { "priority" } dd { (r.priority) }
            dt { "conversation" } dd { (where_is(&r.locators)) }
            dt { "participant" } dd { (participant(&r.locators)) }
            dt { "idempotency key" } dd { (opt(&r.idempotency_key)) }
            dt { "created" } dd { (time(r.created_at)) }
            dt { "due" } dd { (time(r.run_at)) }
            dt { "expires" } dd { (opt_time(r.expires_at)) }
            dt { "attempts" } dd { (r.attempts) @if let Some(max) = r.max_attempts { " of " (max) } }
            dt { "first attempt" } dd { (opt_time(r.first_attempt_at)) }
            dt { "last attempt" } dd { (opt_time(r.last_attempt_at)) }
            dt { "worker" } dd { (opt(&r.locked_by)) }
            @if r.locked_until.is_some() { dt { "lease until" } dd { (opt_time(r.locked_until)) } }
            dt { "finished" } dd { (opt_time(r.finished_at)) }
            dt { "resolved conversation" } dd { (opt(&r.resolved_conversation_id)) }
            dt { "resolved participant" } dd { (opt(&r.resolved_participant_id)) }
            @if let Some(n) = r.coalesced_with { dt { "coalesced with" } dd.coalesced { (n) " job(s) in one PATCH" } }
            @if let Some(keys) = &r.superseded_keys { @if !keys.is_empty() { dt { "not sent (newer value applied)" } dd { (keys.join(", ")) } } }
            @if let Some(reason) = &r.reason { dt { "reason" } dd.reason { (reason) } }
            @if let Some(detail) = &r.detail { dt { "detail" } dd { (detail) } }
            @if let Some(s) = r.api.http_status { dt { "HTTP status" } dd { (s) } }
            @if let Some(c) = &r.api.error_code { dt { "API error code" } dd { (c) } }
            @if let Some(m) = &r.api.error_message { dt { "API error message" } dd { (m) } }
            @if let Some(c) = &r.api.correlation_id { dt { "correlation id" } dd.correlation { code { (c) } } }
            @if let Some(c) = &r.api.context_id { dt { "context id" } dd { code { (c) } } }
            @if let Some(from) = r.requeued_from { dt { "requeued from" } dd { a href=(format!("/dlq/{from}")) { "dead letter " (from) } } }
            @if let Some(to) = r.requeued_as { dt { "requeued as" } dd { a href=(format!("/jobs/{to}")) { "job " (to) } " at " (opt_time(r.requeued_at)) } }
            @if let Some(by) = &r.cancelled_by { dt { "cancelled by" } dd { (by) } }
        }
    }
}

/// `/jobs/{id}`: a job's whole story.
pub(crate) async fn job(State(state): State<Shared>, Path(raw): Path<String>) -> PageResult {
    let id = parse_id(&raw)?;
    let records = jobs::records(&state.pool, id).await?;
    let Some(record) = records.first() else {
        return Err(PageError::NotFound(format!(
            "pdq knows no job {id} (never issued, or pruned after its retention)"
        )));
    };
    let chain = jobs::requeue_chain(&state.pool, record).await?;
    let can_cancel = record.state == JobState::Pending && state.config.allow_writes;
    let body = html! {
        h1 { "Job " (id) " " span class=(format!("state {}", record.state)) { (record.state) } }
        @if can_cancel {
            div.actions { a #cancel href=(format!("/jobs/{id}/cancel")) { button.danger type="button" { "Cancel this job…" } } }
        }
        div.card { (record_facts(record)) }
        h2 { "Attributes" }
        pre #attributes { (pretty(&record.attributes)) }
        @if let Some(error) = &record.last_error {
            h2 { "Last error" }
            pre #last-error { (pretty(error)) }
        }
        @if let Some(body) = &record.api.error_body {
            h2 { "API error body" }
            pre #error-body { (pretty(body)) }
        }
        @if chain.len() > 1 {
            h2 { "Story (requeues, oldest first)" }
            ol.story #story {
                @for step in &chain {
                    li {
                        a href=(format!("/jobs/{}", step.id)) { "job " (step.id) } " "
                        span class=(format!("state {}", step.state)) { (step.state) }
                        " created " (time(step.created_at))
                        @if let Some(f) = step.finished_at { ", finished " (time(f)) }
                        ", " (step.attempts) " attempt(s)"
                        @if let Some(r) = &step.reason { ", reason " (r) }
                        @if let Some(s) = step.api.http_status { ", HTTP " (s) }
                        @if let Some(c) = &step.api.correlation_id { ", correlation " code { (c) } }
                    }
                }
            }
        }
        @if records.len() > 1 {
            h2 { "Other records with id " (id) }
            p.muted { "The id sequence was reset once: older records share this id." }
            @for other in &records[1..] { div.card { (record_facts(other)) } }
        }
    };
    ok(page(
        &format!("Job {id}"),
        Section::Jobs,
        state.config.allow_writes,
        body,
    ))
}

fn read_only_notice() -> Markup {
    html! {
        div.banner.paused { "This console is read-only: restart it with --allow-writes to requeue, purge or cancel." }
    }
}

/// `GET /jobs/{id}/cancel`: asks for confirmation.
pub(crate) async fn cancel_confirm(
    State(state): State<Shared>,
    Path(raw): Path<String>,
) -> PageResult {
    let id = parse_id(&raw)?;
    let records = jobs::records(&state.pool, id).await?;
    let Some(record) = records.first() else {
        return Err(PageError::NotFound(format!("pdq knows no job {id}")));
    };
    let body = html! {
        h1 { "Cancel job " (id) "?" }
        @if !state.config.allow_writes {
            (read_only_notice())
        } @else if record.state != JobState::Pending {
            div.banner.error { "Job " (id) " is " (record.state) ": only pending jobs can be cancelled." }
        } @else {
            div.card {
                p { "Job " (id) " (" (record.priority) ", " (where_is(&record.locators)) ") will not be sent. It is kept as history with your role and the note; enqueueing its idempotency key again stays a no-op." }
                form method="post" action=(format!("/jobs/{id}/cancel")) {
                    input type="hidden" name="csrf" value=(state.csrf);
                    label { "note " input type="text" name="note" size="50" placeholder="why (optional)"; }
                    div.actions {
                        button.danger #confirm type="submit" name="confirm" value="yes" { "Cancel job " (id) }
                        a href=(format!("/jobs/{id}")) { "keep it" }
                    }
                }
            }
        }
    };
    ok(page(
        &format!("Cancel job {id}"),
        Section::Jobs,
        state.config.allow_writes,
        body,
    ))
}

/// `POST /jobs/{id}/cancel`: cancels the job if it is still pending.
pub(crate) async fn cancel(
    State(state): State<Shared>,
    Path(raw): Path<String>,
    body: Bytes,
) -> PageResult {
    let id = parse_id(&raw)?;
    let form = Params::parse(&body);
    if form.text("confirm").as_deref() != Some("yes") {
        return Err(PageError::Bad("confirm=yes is required to cancel".into()));
    }
    let note = form.free_text("note")?;
    let filter = JobFilter {
        ids: vec![id],
        ..JobFilter::default()
    };
    let cancelled = jobs::cancel(&state.pool, &filter, note.as_deref()).await?;
    let body = html! {
        h1 { "Cancel job " (id) }
        @if cancelled.is_empty() {
            div.banner.error.result { "Nothing was cancelled: job " (id) " is no longer pending." }
        } @else {
            div.banner.done.result { "Cancelled job " (id) "." }
        }
        p { a href=(format!("/jobs/{id}")) { "Back to job " (id) } }
    };
    ok(page(
        "Cancelled",
        Section::Jobs,
        state.config.allow_writes,
        body,
    ))
}

// ---------------------------------------------------------------- dead letters

fn parse_cursor(value: &str) -> Result<DeadLetterKey, PageError> {
    let bad = || {
        PageError::Bad(format!(
            "after={:?}: expected a page key as the console writes it (microseconds.id)",
            value.chars().take(40).collect::<String>()
        ))
    };
    let (micros, id) = value.split_once('.').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let id: i64 = id.parse().map_err(|_| bad())?;
    let dead_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok(DeadLetterKey { dead_at, id })
}

/// `/dlq`: waiting dead letters, filtered, with select, requeue and purge.
pub(crate) async fn dead_letters(
    State(state): State<Shared>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let params = params(&raw);
    let reason = match params.text("reason") {
        None => None,
        Some(r) => Some(r.parse::<DeadReason>().map_err(PageError::Bad)?),
    };
    let since = params.time("since")?;
    let until = params.time("until")?;
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(PageError::Bad(
                "since must be earlier than until".to_owned(),
            ));
        }
    }
    let after = params.text("after").map(|a| parse_cursor(&a)).transpose()?;
    let search = DeadLetterSearch {
        reason: reason.map(|r| r.as_str().to_owned()),
        since,
        until,
        conversation_id: params.uuid("conversation")?,
        after,
        limit: PAGE_SIZE,
    };
    let found = data::search_dead_letters(&state.pool, &search).await?;
    let next_link = found.next.map(|next| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for name in ["reason", "since", "until", "conversation"] {
            if let Some(value) = params.text(name) {
                query.append_pair(name, &value);
            }
        }
        query.append_pair(
            "after",
            &format!("{}.{}", next.dead_at.timestamp_micros(), next.id),
        );
        format!("/dlq?{}", query.finish())
    });
    let value = |name: &str| params.text(name).unwrap_or_default();
    let writes = state.config.allow_writes;
    let body = html! {
        h1 { "Dead letters" }
        form.filters.card method="get" action="/dlq" {
            label { "reason"
                select name="reason" {
                    option value="" { "any" }
                    @for r in DeadReason::ALL {
                        option value=(r.as_str()) selected[reason == Some(r)] { (r.as_str()) }
                    }
                }
            }
            label { "since (UTC)" input type="datetime-local" name="since" value=(value("since")); }
            label { "until (UTC)" input type="datetime-local" name="until" value=(value("until")); }
            label { "conversation id" input type="text" name="conversation" value=(value("conversation")) size="38"; }
            button type="submit" { "Filter" }
            a href="/dlq" { "clear" }
        }
        @if found.rows.is_empty() {
            p.muted #no-dead-letters { "No dead letter matches." }
        } @else {
            form method="post" action="/dlq/confirm" #dlq-form {
                input type="hidden" name="csrf" value=(state.csrf);
                @if writes {
                    div.actions {
                        button #requeue type="submit" name="action" value="requeue" { "Requeue selected…" }
                        button.danger #purge type="submit" name="action" value="purge" { "Purge selected…" }
                    }
                } @else {
                    (read_only_notice())
                }
                table #dead-letters {
                    thead { tr {
                        @if writes { th { input #select-all type="checkbox" title="select all on this page"; } }
                        th.num { "id" } th { "dead at" } th { "reason" } th.num { "HTTP" } th { "conversation" } th { "priority" } th.num { "attempts" } th { "detail" }
                    } }
                    tbody {
                        @for d in &found.rows {
                            tr data-id=(d.id) {
                                @if writes { td { input type="checkbox" name="id" value=(d.id); } }
                                td.num { a href=(format!("/dlq/{}", d.id)) { (d.id) } }
                                td { (time(d.dead_at)) }
                                td.reason { (d.reason) }
                                td.num { (opt(&d.api.http_status)) }
                                td { (where_is(&d.locators)) }
                                td { (d.priority) }
                                td.num { (d.attempts) }
                                td { (d.detail.as_deref().map(|t| t.chars().take(120).collect::<String>()).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(link) = next_link {
            p.pager { a #next-page href=(link) { "Next page →" } }
        }
    };
    ok(page("Dead letters", Section::DeadLetters, writes, body))
}

fn dead_letter_facts(d: &DeadLetter) -> Markup {
    html! {
        dl.facts {
            dt { "reason" } dd.reason { (d.reason) }
            dt { "detail" } dd { (opt(&d.detail)) }
            dt { "HTTP status" } dd { (opt(&d.api.http_status)) }
            dt { "API error code" } dd { (opt(&d.api.error_code)) }
            dt { "API error message" } dd { (opt(&d.api.error_message)) }
            dt { "correlation id" } dd.correlation { code { (opt(&d.api.correlation_id)) } }
            dt { "context id" } dd { (opt(&d.api.context_id)) }
            dt { "conversation" } dd { (where_is(&d.locators)) }
            dt { "participant" } dd { (participant(&d.locators)) }
            dt { "resolved conversation" } dd { (opt(&d.resolved_conversation_id)) }
            dt { "resolved participant" } dd { (opt(&d.resolved_participant_id)) }
            dt { "priority" } dd { (d.priority) }
            dt { "created" } dd { (time(d.created_at)) }
            dt { "attempts" } dd { (d.attempts) }
            dt { "first attempt" } dd { (opt_time(d.first_attempt_at)) }
            dt { "last attempt" } dd { (opt_time(d.last_attempt_at)) }
            dt { "dead at" } dd { (time(d.dead_at)) }
            dt { "requeued" } dd { (opt_time(d.requeued_at)) " (" (d.requeue_count) " time(s))" }
        }
    }
}

/// `/dlq/{id}`: one dead letter with the API's error body.
pub(crate) async fn dead_letter(
    State(state): State<Shared>,
    Path(raw): Path<String>,
) -> PageResult {
    let id = parse_id(&raw)?;
    let Some(d) = dlq::show(&state.pool, id).await? else {
        return Err(PageError::NotFound(format!("no dead letter {id}")));
    };
    let writes = state.config.allow_writes && d.requeued_at.is_none();
    let body = html! {
        h1 { "Dead letter " (id) }
        p { a href=(format!("/jobs/{id}")) { "The job's whole story →" } }
        @if writes {
            form method="post" action="/dlq/confirm" {
                input type="hidden" name="csrf" value=(state.csrf);
                input type="hidden" name="id" value=(id);
                div.actions {
                    button #requeue type="submit" name="action" value="requeue" { "Requeue…" }
                    button.danger #purge type="submit" name="action" value="purge" { "Purge…" }
                }
            }
        }
        div.card { (dead_letter_facts(&d)) }
        h2 { "API error body" }
        @match &d.api.error_body {
            Some(body) => pre #error-body { (pretty(body)) },
            None => p.muted { "The API sent no error body." },
        }
        h2 { "Attributes" }
        pre #attributes { (pretty(&d.attributes)) }
    };
    ok(page(
        &format!("Dead letter {id}"),
        Section::DeadLetters,
        state.config.allow_writes,
        body,
    ))
}

/// Requeue or purge, as a form names it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Requeue,
    Purge,
}

fn form_ids(form: &Params) -> Result<Vec<i64>, PageError> {
    let mut ids = form.ids("id")?;
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(PageError::Bad(
            "select at least one dead letter (tick its box) first".to_owned(),
        ));
    }
    if ids.len() > 1_000 {
        return Err(PageError::Bad(
            "select at most 1,000 dead letters at once".to_owned(),
        ));
    }
    Ok(ids)
}

/// `POST /dlq/confirm`: says how many and, for a requeue, which keys would be dropped.
pub(crate) async fn dlq_confirm(State(state): State<Shared>, body: Bytes) -> PageResult {
    let form = Params::parse(&body);
    let action = match form.text("action").as_deref() {
        Some("requeue") => Action::Requeue,
        Some("purge") => Action::Purge,
        other => {
            return Err(PageError::Bad(format!(
                "action={:?}: expected requeue or purge",
                other.unwrap_or("")
            )))
        }
    };
    let ids = form_ids(&form)?;
    let rows = data::dead_letters_by_ids(&state.pool, &ids).await?;
    let dropped = match action {
        Action::Requeue => data::requeue_would_drop(&state.pool, &ids).await?,
        Action::Purge => Vec::new(),
    };
    let (verb, target) = match action {
        Action::Requeue => ("Requeue", "/dlq/requeue"),
        Action::Purge => ("Purge", "/dlq/purge"),
    };
    let n = rows.len();
    let body = html! {
        h1 #confirm-title { (verb) " " (n) " dead letter" @if n != 1 { "s" } "?" }
        @if n < ids.len() {
            div.banner.paused { (ids.len() - n) " of the selected dead letters were requeued or purged meanwhile and are left out." }
        }
        @match action {
            Action::Requeue => {
                p { "Each becomes a new pending job; the dead letters stay as history, marked requeued." }
                @if dropped.is_empty() {
                    p #dropped-none { "No key would be dropped: no newer value was applied for these participants." }
                } @else {
                    div.banner.paused #dropped {
                        "These keys would not be sent, because a newer value was already applied for the same participant:"
                        ul {
                            @for k in &dropped {
                                li { "dead letter " (k.dead_letter_id) ": " code.key { (k.key) } " (newer job " (k.newer_seq) ")" }
                            }
                        }
                    }
                }
            }
            Action::Purge => {
                div.banner.error { "Purging deletes these dead letters for good (their customer data with them)." }
            }
        }
        @if n > 0 {
            form method="post" action=(target) {
                input type="hidden" name="csrf" value=(state.csrf);
                @for d in &rows { input type="hidden" name="id" value=(d.id); }
                @if action == Action::Requeue && !dropped.is_empty() {
                    label { input type="checkbox" name="force" value="yes"; " send every key anyway (force: the requeued values win over the newer ones)" }
                }
                div.actions {
                    button #confirm type="submit" class=(if action == Action::Purge { "danger" } else { "" }) {
                        (verb) " " (n) " dead letter" @if n != 1 { "s" }
                    }
                    a href="/dlq" { "cancel" }
                }
            }
            table {
                thead { tr { th.num { "id" } th { "reason" } th { "conversation" } th { "dead at" } } }
                tbody {
                    @for d in &rows {
                        tr { td.num { (d.id) } td { (d.reason) } td { (where_is(&d.locators)) } td { (time(d.dead_at)) } }
                    }
                }
            }
        }
    };
    ok(page(
        &format!("{verb}?"),
        Section::DeadLetters,
        state.config.allow_writes,
        body,
    ))
}

fn ids_filter(ids: Vec<i64>) -> DeadLetterFilter {
    DeadLetterFilter {
        ids,
        ..DeadLetterFilter::default()
    }
}

/// `POST /dlq/requeue`: requeues the confirmed dead letters.
pub(crate) async fn dlq_requeue(State(state): State<Shared>, body: Bytes) -> PageResult {
    let form = Params::parse(&body);
    let ids = form_ids(&form)?;
    let force = form.text("force").as_deref() == Some("yes");
    let requeued = dlq::requeue(&state.pool, &ids_filter(ids), force).await?;
    dead_letters_done(&state, "Requeued", requeued)
}

/// `POST /dlq/purge`: deletes the confirmed dead letters.
pub(crate) async fn dlq_purge(State(state): State<Shared>, body: Bytes) -> PageResult {
    let form = Params::parse(&body);
    let ids = form_ids(&form)?;
    let purged = dlq::purge(&state.pool, &ids_filter(ids)).await?;
    dead_letters_done(&state, "Purged", purged)
}

/// The page after a requeue or purge: what was done (`done`: "Requeued", "Purged") to how many.
fn dead_letters_done(state: &Shared, done: &str, count: u64) -> PageResult {
    let body = html! {
        h1 { (done) }
        div.banner.done.result { (done) " " (count) " dead letter" @if count != 1 { "s" } "." }
        p { a href="/dlq" { "Back to the dead letters" } }
    };
    ok(page(
        done,
        Section::DeadLetters,
        state.config.allow_writes,
        body,
    ))
}
