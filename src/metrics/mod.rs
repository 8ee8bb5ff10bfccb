//! Counters and histograms in Prometheus text format, and the router of `/metrics` and the
//! health answers: `/livez` (liveness), `/readyz` (readiness) and `/healthz` (readiness, kept
//! for compatibility). The instruments are in `instruments.rs`, the health in `health.rs`.

mod health;
mod instruments;

pub use health::{Answer, Condition, Health, Note, DEFAULT_LIVENESS_BOUND, LIVE_BEHIND};
use instruments::{escape, family, sample};
pub(crate) use instruments::{Histogram, LabelledCounter, LagHistograms, RecentRequests};

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// Why the fleet may be paused: each is exported as `pdq_paused{reason}`, 1 while in force.
pub const PAUSE_REASONS: [&str; 5] = [
    "configuration",
    "outage",
    "rate_limited",
    "window_spent",
    "operator",
];

/// Everything the worker counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Units claimed.
    claims: AtomicU64,
    /// Job outcomes, keyed `applied`, `lease_lost`, `retry:<failure>` or
    /// `dead_letter:<reason>`; exported with separate `outcome` and `reason` labels.
    outcomes: LabelledCounter,
    /// API responses by HTTP status (or transport error kind).
    api_statuses: LabelledCounter,
    /// Enqueue → applied latency, by priority.
    enqueue_to_applied: LagHistograms,
    /// A due live job older than this counts as "live behind", in seconds (0: not set).
    live_behind_threshold_secs: Mutex<f64>,
    /// API call latency.
    api_latency: Histogram,
    /// Requests that waited for the request budget (copied from the pacer).
    limiter_waits: AtomicU64,
    /// Time requests spent waiting for the budget, in microseconds (copied from the pacer).
    limiter_wait_micros: AtomicU64,
    /// Pauses after a 429 or a spent rate-limit window (copied from the pacer).
    limiter_pauses: AtomicU64,
    /// OAuth token renewals.
    token_renewals: AtomicU64,
    /// Attribute values over 1,024 characters (analytics truncates them).
    long_values: AtomicU64,
    /// Pending jobs at the last sample.
    queue_depth: AtomicU64,
    /// The request budget per minute (0 = unlimited).
    budget_per_minute: AtomicU64,
    /// The shared budget's pause reason while it is in force (sampled from Postgres).
    budget_pause: Mutex<Option<String>>,
    /// API requests sent in the last minute.
    recent_requests: RecentRequests,
    /// The database gauges at the last sample.
    gauges: Mutex<crate::queue::gauges::Gauges>,
}

/// The commit this binary was built from (`PDQ_COMMIT` at build time), or `unknown`.
pub fn build_commit() -> &'static str {
    option_env!("PDQ_COMMIT").unwrap_or("unknown")
}

impl Metrics {
    /// Counts `jobs` jobs under the outcome `key` (`applied`, `lease_lost`, `retry:<failure>`,
    /// `dead_letter:<reason>`).
    pub(crate) fn record_outcome(&self, key: &str, jobs: u64) {
        self.outcomes.add(key, jobs);
    }

    /// Records how long an applied job of `priority` took from its insert.
    pub fn observe_applied(&self, priority: crate::queue::Priority, latency: Duration) {
        self.enqueue_to_applied.observe(Some(priority), latency);
    }

    /// The "live behind" threshold, exported beside the condition.
    pub(crate) fn set_live_behind_threshold(&self, threshold: Duration) {
        *self.live_behind_threshold_secs.lock().unwrap() = threshold.as_secs_f64();
    }

    /// Seconds the oldest due job of `priority` has waited, at the last gauge sample.
    pub(crate) fn oldest_due_age(&self, priority: crate::queue::Priority) -> Option<f64> {
        let gauges = self.gauges.lock().unwrap();
        gauges
            .priorities
            .iter()
            .find(|p| p.priority == priority.as_str())
            .map(|p| p.oldest_due_age_seconds)
    }

    /// Counts one API response (`label`: its status, or `transport_error`), with its latency
    /// when the call was timed.
    pub(crate) fn record_api_response(&self, label: &str, latency: Option<Duration>) {
        self.api_statuses.add(label, 1);
        self.recent_requests.note();
        if let Some(latency) = latency {
            self.api_latency.observe(latency);
        }
    }

    /// Counts `units` claimed units.
    pub(crate) fn count_claims(&self, units: u64) {
        self.claims.fetch_add(units, Ordering::Relaxed);
    }

    /// Counts one attribute value over 1,024 characters.
    pub(crate) fn count_long_value(&self) {
        self.long_values.fetch_add(1, Ordering::Relaxed);
    }

    /// The OAuth token renewals so far, as the client counts them.
    pub(crate) fn set_token_renewals(&self, renewals: u64) {
        self.token_renewals.store(renewals, Ordering::Relaxed);
    }

    /// The pending jobs at the last sample.
    pub(crate) fn set_queue_depth(&self, depth: u64) {
        self.queue_depth.store(depth, Ordering::Relaxed);
    }

    /// The pacer's counters: waits, time waited (microseconds) and pauses.
    pub(crate) fn set_limiter(&self, waits: u64, wait_micros: u64, pauses: u64) {
        self.limiter_waits.store(waits, Ordering::Relaxed);
        self.limiter_wait_micros
            .store(wait_micros, Ordering::Relaxed);
        self.limiter_pauses.store(pauses, Ordering::Relaxed);
    }

    /// API calls timed so far (every request that got an answer or failed in transport).
    pub(crate) fn api_calls(&self) -> u64 {
        self.api_latency.total.load(Ordering::Relaxed)
    }

    /// API responses so far with this label (a status such as `429`, or `transport_error`).
    pub(crate) fn api_responses(&self, label: &str) -> u64 {
        self.api_statuses.get(label)
    }

    /// The pacer's pauses at the last sample.
    pub(crate) fn limiter_pauses(&self) -> u64 {
        self.limiter_pauses.load(Ordering::Relaxed)
    }

    /// The database gauges just sampled.
    pub(crate) fn set_gauges(&self, gauges: crate::queue::gauges::Gauges) {
        *self.gauges.lock().unwrap() = gauges;
    }

    /// Due and running jobs at the last gauge sample.
    pub(crate) fn jobs_in_progress(&self) -> i64 {
        let gauges = self.gauges.lock().unwrap();
        gauges.priorities.iter().map(|p| p.due + p.running).sum()
    }

    /// The shared budget's pause reason while it is in force.
    pub(crate) fn set_budget_pause(&self, reason: Option<String>) {
        *self.budget_pause.lock().unwrap() = reason;
    }

    /// The count of job outcomes under `key` (`applied`, `lease_lost`, `retry:<failure>`,
    /// `dead_letter:<reason>`).
    pub fn outcome_count(&self, key: &str) -> u64 {
        self.outcomes.get(key)
    }

    /// OAuth token renewals so far.
    pub fn token_renewals(&self) -> u64 {
        self.token_renewals.load(Ordering::Relaxed)
    }

    /// Empty metrics for a worker with a budget of `per_minute` requests (0 = unlimited).
    pub fn for_budget(per_minute: u32) -> Metrics {
        let metrics = Metrics::default();
        metrics
            .budget_per_minute
            .store(u64::from(per_minute), Ordering::Relaxed);
        metrics
    }

    /// Renders Prometheus text without health gauges.
    pub fn render(&self) -> String {
        self.render_with(&Health::default())
    }

    /// Renders Prometheus text, with the pauses and conditions of `health`.
    pub fn render_with(&self, health: &Health) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family(
            &mut out,
            "pdq_build_info",
            "gauge",
            "The running version (always 1).",
        );
        let _ = writeln!(
            out,
            "pdq_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            escape(build_commit())
        );
        sample(
            &mut out,
            "pdq_claims_total",
            "counter",
            "Units claimed.",
            load(&self.claims),
        );
        self.outcomes.render_outcomes(
            "pdq_jobs_total",
            "Jobs by outcome (applied, retried, dead_lettered, lease_lost, released) and reason.",
            &mut out,
        );
        self.api_statuses.render(
            "pdq_api_responses_total",
            "status",
            "API responses by status.",
            &mut out,
        );
        self.enqueue_to_applied.render(
            "pdq_enqueue_to_applied_seconds",
            "Time from INSERT to the API accepting the update, by priority.",
            &mut out,
        );
        self.api_latency
            .render("pdq_api_call_seconds", "API call latency.", &mut out);
        sample(
            &mut out,
            "pdq_limiter_waits_total",
            "counter",
            "Requests that waited for the request budget.",
            load(&self.limiter_waits),
        );
        sample(
            &mut out,
            "pdq_limiter_wait_seconds_total",
            "counter",
            "Time requests spent waiting for the request budget.",
            load(&self.limiter_wait_micros) as f64 / 1e6,
        );
        sample(
            &mut out,
            "pdq_limiter_pauses_total",
            "counter",
            "Pauses after a 429 or a spent rate-limit window.",
            load(&self.limiter_pauses),
        );
        sample(
            &mut out,
            "pdq_token_renewals_total",
            "counter",
            "OAuth token renewals.",
            load(&self.token_renewals),
        );
        sample(
            &mut out,
            "pdq_long_attribute_values_total",
            "counter",
            "Values over 1,024 characters (analytics truncates them).",
            load(&self.long_values),
        );
        sample(
            &mut out,
            "pdq_queue_depth",
            "gauge",
            "Pending jobs (due or scheduled).",
            load(&self.queue_depth),
        );
        sample(
            &mut out,
            "pdq_budget_allowed_requests_per_minute",
            "gauge",
            "The request budget per minute (0 = unlimited).",
            load(&self.budget_per_minute),
        );
        sample(
            &mut out,
            "pdq_budget_used_requests",
            "gauge",
            "API requests this process sent in the last minute.",
            self.recent_requests.count(),
        );
        self.render_pauses(health, &mut out);
        self.render_gauges(&mut out);
        sample(
            &mut out,
            "pdq_ready",
            "gauge",
            "1 while readiness (/readyz, /healthz) answers 200.",
            u8::from(health.readiness().ok),
        );
        sample(
            &mut out,
            "pdq_live_behind",
            "gauge",
            "1 while the oldest due live job has waited longer than the threshold (readiness fails).",
            u8::from(health.is_live_behind()),
        );
        sample(
            &mut out,
            "pdq_live_behind_threshold_seconds",
            "gauge",
            "A due live job older than this counts as live behind.",
            *self.live_behind_threshold_secs.lock().unwrap(),
        );
        out
    }

    fn render_pauses(&self, health: &Health, out: &mut String) {
        let budget = self.budget_pause.lock().unwrap().clone();
        family(
            out,
            "pdq_paused",
            "gauge",
            "1 while the worker is paused for this reason.",
        );
        for reason in PAUSE_REASONS {
            let paused = match reason {
                "configuration" => health.has(Condition::Configuration),
                "outage" => health.has(Condition::Outage) || budget.as_deref() == Some(reason),
                _ => budget.as_deref() == Some(reason),
            };
            let _ = writeln!(
                out,
                "pdq_paused{{reason=\"{reason}\"}} {}",
                u8::from(paused)
            );
        }
        family(
            out,
            "pdq_unhealthy",
            "gauge",
            "1 while this condition turns readiness (/readyz, /healthz) red.",
        );
        for condition in Condition::ALL {
            let _ = writeln!(
                out,
                "pdq_unhealthy{{condition=\"{}\"}} {}",
                condition.label(),
                u8::from(health.has(condition))
            );
        }
    }

    fn render_gauges(&self, out: &mut String) {
        let gauges = self.gauges.lock().unwrap().clone();
        family(
            out,
            "pdq_jobs",
            "gauge",
            "Jobs in the queue by state (due, scheduled, retrying, running) and priority.",
        );
        for row in &gauges.priorities {
            let priority = escape(&row.priority);
            for (state, n) in [
                ("due", row.due),
                ("scheduled", row.scheduled),
                ("retrying", row.retrying),
                ("running", row.running),
            ] {
                let _ = writeln!(
                    out,
                    "pdq_jobs{{state=\"{state}\",priority=\"{priority}\"}} {n}"
                );
            }
        }
        family(
            out,
            "pdq_oldest_due_job_age_seconds",
            "gauge",
            "How long the oldest due job has waited, by priority.",
        );
        for priority in ["live", "backfill"] {
            let age = gauges
                .priorities
                .iter()
                .find(|row| row.priority == priority)
                .map_or(0.0, |row| row.oldest_due_age_seconds);
            let _ = writeln!(
                out,
                "pdq_oldest_due_job_age_seconds{{priority=\"{priority}\"}} {age}"
            );
        }
        family(
            out,
            "pdq_dead_letters",
            "gauge",
            "Dead letters not requeued, by reason.",
        );
        for (reason, n) in &gauges.dead_letters {
            let _ = writeln!(out, "pdq_dead_letters{{reason=\"{}\"}} {n}", escape(reason));
        }
        if let Some(alive) = gauges.workers_alive {
            sample(
                out,
                "pdq_workers_alive",
                "gauge",
                "Workers with a fresh heartbeat in pdq.workers.",
                alive,
            );
        }
    }
}

/// `/metrics`, `/livez`, `/readyz` and `/healthz` (the same answer as `/readyz`).
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state((metrics, health.clone()))
        .merge(
            Router::new()
                .route("/livez", get(render_liveness))
                .route("/readyz", get(render_readiness))
                .route("/healthz", get(render_readiness))
                .with_state(health),
        )
}

async fn render_metrics(State((metrics, health)): State<(Arc<Metrics>, Arc<Health>)>) -> String {
    metrics.render_with(&health)
}

fn answer(answer: Answer) -> (StatusCode, String) {
    let status = match answer.ok {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, answer.body)
}

async fn render_liveness(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    answer(health.liveness())
}

async fn render_readiness(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    answer(health.readiness())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_render_with_separate_outcome_and_reason_labels() {
        let metrics = Metrics::for_budget(120);
        metrics.outcomes.add("applied", 2);
        metrics.outcomes.add("retry:rate_limited", 1);
        metrics.outcomes.add("dead_letter:conversation_ended", 3);
        let text = metrics.render();
        assert!(text.contains("pdq_jobs_total{outcome=\"applied\",reason=\"\"} 2"));
        assert!(text.contains("pdq_jobs_total{outcome=\"retried\",reason=\"rate_limited\"} 1"));
        assert!(text
            .contains("pdq_jobs_total{outcome=\"dead_lettered\",reason=\"conversation_ended\"} 3"));
        assert!(text.contains("pdq_budget_allowed_requests_per_minute 120"));
        assert!(text.contains("pdq_build_info{version=\""));
    }

    #[test]
    fn pauses_are_exported_by_reason() {
        let metrics = Metrics::default();
        let health = Health::default();
        health.set(Condition::Outage, "the API is down");
        *metrics.budget_pause.lock().unwrap() = Some("rate_limited".into());
        let text = metrics.render_with(&health);
        assert!(text.contains("pdq_paused{reason=\"outage\"} 1"), "{text}");
        assert!(
            text.contains("pdq_paused{reason=\"rate_limited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pdq_paused{reason=\"configuration\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("pdq_unhealthy{condition=\"outage\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pdq_unhealthy{condition=\"claims\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn lag_is_bucketed_up_to_hours_by_priority_and_live_behind_is_exported() {
        let metrics = Metrics::default();
        metrics.observe_applied(crate::queue::Priority::Live, Duration::from_secs(900));
        metrics.observe_applied(crate::queue::Priority::Backfill, Duration::from_secs(5));
        metrics.set_live_behind_threshold(Duration::from_secs(60));
        let health = Health::default();
        health.set_live_behind(Some("waited 900 s".into()));
        let text = metrics.render_with(&health);
        let line = |needle: &str| text.lines().any(|l| l == needle);
        assert!(
            line("pdq_enqueue_to_applied_seconds_bucket{priority=\"live\",le=\"600\"} 0"),
            "{text}"
        );
        assert!(
            line("pdq_enqueue_to_applied_seconds_bucket{priority=\"live\",le=\"1800\"} 1"),
            "{text}"
        );
        assert!(line(
            "pdq_enqueue_to_applied_seconds_bucket{priority=\"live\",le=\"14400\"} 1"
        ));
        assert!(line(
            "pdq_enqueue_to_applied_seconds_bucket{priority=\"backfill\",le=\"5\"} 1"
        ));
        assert!(line(
            "pdq_enqueue_to_applied_seconds_count{priority=\"live\"} 1"
        ));
        assert!(
            !text.contains("priority=\"unknown\""),
            "no unlabelled series without such observations"
        );
        assert!(line("pdq_live_behind 1"), "{text}");
        assert!(line("pdq_live_behind_threshold_seconds 60"), "{text}");
        assert!(line("pdq_oldest_due_job_age_seconds{priority=\"live\"} 0"));
    }
}
