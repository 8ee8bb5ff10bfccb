//! `/`: the overview (charts first, then the pause banner, verdict, budget, depth, workers).

use super::*;
use crate::queue::console::ChartSeries;

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
    let status = crate::console::queue_status(&state, state.config.first_read_wait).await?;
    let pool = state.pool.clone();
    let read = move || {
        let pool = pool.clone();
        async move { data::chart_series(&pool, range).await }
    };
    let series = state
        .charts
        .get_within(range, read, state.config.first_read_wait)
        .await?;
    let per = match range {
        ChartRange::Hour => "per minute",
        ChartRange::Day => "per 15 minutes",
    };
    let status = status.as_deref();
    // A snapshot older than the page's refresh period is not presented as current.
    let period = std::time::Duration::from_secs(u64::from(state.config.refresh_secs))
        .max(crate::console::snapshot::FRESH);
    let freshness = status
        .and_then(|_| state.status.freshness(&()))
        .filter(|f| f.age > period || f.failing.is_some());
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
            @if let Some(f) = &freshness {
                div.banner.stale #stale-banner {
                    "These figures are " (queue::human_duration(f.age.as_secs_f64())) " old"
                    @if let Some(status) = status { " (as of " (time(status.generated_at)) ")" }
                    @match &f.failing {
                        Some(error) => {
                            ": the console cannot refresh them (" (error) "); it keeps trying."
                        }
                        None => ": they are being read again; this page shows the new ones when it refreshes.",
                    }
                }
            }
            @if let Some(behind) = status.and_then(|s| s.live_behind.as_ref()) {
                div.banner.behind #live-behind {
                    "Live behind: " (behind.summary())
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
            @match series.as_deref() {
                Some(series) => (charts_section(series, per)),
                None => div.card.verdict #charts-pending {
                    "Reading the charts' figures: this page refreshes itself and shows them."
                },
            }
            p.muted { "429s, pauses and the oldest due wait come from the workers' heartbeats; live vs backfill counts the PATCH requests of applied and dead-lettered jobs (a coalesced PATCH once)." }
            @if let Some(status) = status {
                @let dead_waiting: i64 = status.dead_letters.iter().map(|d| d.jobs).sum();
                div.card.verdict #verdict {
                    b { (status.verdict.state) } (status.verdict.summary)
                    span.muted #as-of { " · as of " (time(status.generated_at))
                        @if let Some(f) = &freshness { " (" (queue::human_duration(f.age.as_secs_f64())) " ago)" } }
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

/// The overview's charts, per minute or per 15 minutes (`per`) over the range of `series`.
fn charts_section(series: &ChartSeries, per: &str) -> Markup {
    let start = series.start;
    let secs = series.bucket_secs;
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
    html! {
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
            (charts::chart("chart-oldest", "Oldest due job's wait (as the workers sampled it)", "s", Kind::Lines,
                &[Series { label: "live".into(), values: &series.oldest_due_live_secs, class: "c0".into() },
                  Series { label: "backfill".into(), values: &series.oldest_due_backfill_secs, class: "c4".into() }],
                start, secs))
        }
    }
}
