//! `/jobs`: search, a job's story, and cancelling a pending job.

use super::*;

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
