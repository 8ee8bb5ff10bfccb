//! Counters and histograms in Prometheus text format, and the `/metrics` + `/healthz` router.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let n = count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let total = self.total.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// Labelled counters (label value → count).
#[derive(Debug, Default)]
pub struct LabelledCounter(Mutex<BTreeMap<String, u64>>);

impl LabelledCounter {
    /// Adds `n` to the counter for `label`.
    pub fn add(&self, label: &str, n: u64) {
        let mut counts = self.0.lock().unwrap();
        match counts.get_mut(label) {
            Some(count) => *count += n,
            None => {
                counts.insert(label.to_owned(), n);
            }
        }
    }

    /// The current count for `label`.
    pub fn get(&self, label: &str) -> u64 {
        self.0.lock().unwrap().get(label).copied().unwrap_or(0)
    }

    fn render(&self, name: &str, label: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value, count) in self.0.lock().unwrap().iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
        }
    }
}

/// Everything the worker counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Units claimed.
    pub claims: AtomicU64,
    /// Job outcomes: applied, retried, dead-lettered by reason.
    pub outcomes: LabelledCounter,
    /// API responses by HTTP status (or transport error kind).
    pub api_statuses: LabelledCounter,
    /// Enqueue → applied latency.
    pub enqueue_to_applied: Histogram,
    /// API call latency.
    pub api_latency: Histogram,
    /// Waits at the rate limiter.
    pub limiter_waits: AtomicU64,
    /// OAuth token renewals.
    pub token_renewals: AtomicU64,
    /// Attribute values over 1,024 characters (analytics truncates them).
    pub long_values: AtomicU64,
    /// Pending jobs at the last sample.
    pub queue_depth: AtomicU64,
}

impl Metrics {
    /// Renders Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "pdq_claims_total",
            "counter",
            "Units claimed.",
            load(&self.claims),
        );
        self.outcomes
            .render("pdq_jobs_total", "outcome", "Jobs by outcome.", &mut out);
        self.api_statuses.render(
            "pdq_api_responses_total",
            "status",
            "API responses by status.",
            &mut out,
        );
        self.enqueue_to_applied.render(
            "pdq_enqueue_to_applied_seconds",
            "Time from INSERT to the API accepting the update.",
            &mut out,
        );
        self.api_latency
            .render("pdq_api_call_seconds", "API call latency.", &mut out);
        let waits = load(&self.limiter_waits);
        gauge(
            &mut out,
            "pdq_limiter_waits_total",
            "counter",
            "Requests that waited for the rate limiter.",
            waits,
        );
        let renewals = load(&self.token_renewals);
        gauge(
            &mut out,
            "pdq_token_renewals_total",
            "counter",
            "OAuth token renewals.",
            renewals,
        );
        let long = load(&self.long_values);
        gauge(
            &mut out,
            "pdq_long_attribute_values_total",
            "counter",
            "Values over 1,024 characters (analytics truncates them).",
            long,
        );
        let depth = load(&self.queue_depth);
        gauge(&mut out, "pdq_queue_depth", "gauge", "Pending jobs.", depth);
        out
    }
}

/// Something that keeps the worker from doing its job; `/healthz` names each one in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// The setup is wrong (credentials, base URL, a permission every call needs): paused.
    Configuration,
    /// The API or its login host cannot be reached: paused, probing with backoff.
    Outage,
    /// Claiming from Postgres keeps failing.
    Claims,
    /// A background task of the worker stopped; the process is exiting.
    Task,
}

impl Condition {
    /// The word `/healthz` prints before the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Configuration => "paused (configuration)",
            Condition::Outage => "paused (outage)",
            Condition::Claims => "claims failing",
            Condition::Task => "task stopped",
        }
    }
}

/// Whether the worker can do its job; `/healthz` answers 503 with the reasons when it cannot.
#[derive(Debug, Default)]
pub struct Health {
    unhealthy: AtomicBool,
    paused: AtomicBool,
    conditions: Mutex<BTreeMap<Condition, String>>,
}

impl Health {
    /// Pauses the worker on a configuration problem, with a reason.
    pub fn fail(&self, reason: impl Into<String>) {
        self.set(Condition::Configuration, reason);
    }

    /// Clears the configuration pause.
    pub fn recover(&self) {
        self.clear(Condition::Configuration);
    }

    /// Records `condition` with a reason (replacing an earlier reason for it).
    pub fn set(&self, condition: Condition, reason: impl Into<String>) {
        let mut conditions = self.conditions.lock().unwrap();
        conditions.insert(condition, reason.into());
        self.publish(&conditions);
    }

    /// Ends `condition`.
    pub fn clear(&self, condition: Condition) {
        let mut conditions = self.conditions.lock().unwrap();
        if conditions.remove(&condition).is_some() {
            self.publish(&conditions);
        }
    }

    fn publish(&self, conditions: &BTreeMap<Condition, String>) {
        self.unhealthy
            .store(!conditions.is_empty(), Ordering::Release);
        self.paused.store(
            conditions.contains_key(&Condition::Configuration),
            Ordering::Release,
        );
    }

    /// True while any condition is in force (`/healthz` answers 503).
    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Acquire)
    }

    /// True while the worker is paused by a configuration problem (no claims, no calls).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// True while `condition` is in force.
    pub fn has(&self, condition: Condition) -> bool {
        self.conditions.lock().unwrap().contains_key(&condition)
    }

    /// Every condition in force with its reason, one per line.
    pub fn reason(&self) -> String {
        let conditions = self.conditions.lock().unwrap();
        let lines: Vec<String> = conditions
            .iter()
            .map(|(condition, reason)| format!("{}: {reason}", condition.as_str()))
            .collect();
        lines.join("\n")
    }
}

/// `/metrics` and `/healthz`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
        .merge(
            Router::new()
                .route("/healthz", get(render_health))
                .with_state(health),
        )
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> String {
    metrics.render()
}

async fn render_health(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    if health.is_unhealthy() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", health.reason()),
        )
    } else {
        (StatusCode::OK, "ok\n".to_owned())
    }
}
