//! `/dlq`: dead letters, one dead letter, and requeue or purge after a confirmation.

use super::*;

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

/// Whether `text` has the shape of a stored reason: 1 to 64 lower-case letters or `_`.
fn is_reason_word(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}

/// `/dlq`: waiting dead letters, filtered, with select, requeue and purge.
pub(crate) async fn dead_letters(
    State(state): State<Shared>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let params = params(&raw);
    // A known reason, or one this binary does not know (a newer pdq's) that a waiting dead
    // letter carries, so the overview's link to it lists them; a misspelt one is refused.
    let reason = match params.text("reason") {
        None => None,
        Some(r) if r.parse::<DeadReason>().is_ok() => Some(r),
        Some(r) if is_reason_word(&r) && data::has_waiting_reason(&state.pool, &r).await? => {
            Some(r)
        }
        Some(r) => Some(r.parse::<DeadReason>().map_err(PageError::Bad)?.to_string()),
    };
    let unknown_reason = reason.clone().filter(|r| r.parse::<DeadReason>().is_err());
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
        reason: reason.clone(),
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
                        option value=(r.as_str()) selected[reason.as_deref() == Some(r.as_str())] { (r.as_str()) }
                    }
                    @if let Some(r) = &unknown_reason {
                        option value=(r) selected { (r) }
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
