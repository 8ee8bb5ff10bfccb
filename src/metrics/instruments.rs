//! The Prometheus instruments the worker's metrics are made of: a latency histogram, labelled
//! counters, a one-minute request window, and the text format's writers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Latency bucket bounds in seconds (API calls).
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Bucket bounds in seconds for lag (enqueue → applied): up to four hours, so a backlog that
/// keeps live jobs waiting for minutes or hours is seen in the buckets, not only in `+Inf`.
pub(crate) const LAG_BUCKETS: [f64; 19] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0, 7200.0, 14400.0, 28800.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    pub(super) total: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(&BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram with these bucket bounds (ascending, in seconds).
    pub fn with_bounds(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(name, "", out);
    }

    /// The sample lines only, each with `labels` (`key="value",` pairs ending in a comma, or
    /// empty) before `le`.
    pub(super) fn render_series(&self, name: &str, labels: &str, out: &mut String) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let n = count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {n}");
        }
        let total = self.total.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {total}");
        let bare = labels.trim_end_matches(',');
        let braces = match bare.is_empty() {
            true => String::new(),
            false => format!("{{{bare}}}"),
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {total}"
        );
    }
}

/// Lag histograms by priority (`live`, `backfill`), and one for observations whose priority
/// was not given (rendered only once it has any).
#[derive(Debug)]
pub(crate) struct LagHistograms {
    live: Histogram,
    backfill: Histogram,
    unlabelled: Histogram,
}

impl Default for LagHistograms {
    fn default() -> Self {
        LagHistograms {
            live: Histogram::with_bounds(&LAG_BUCKETS),
            backfill: Histogram::with_bounds(&LAG_BUCKETS),
            unlabelled: Histogram::with_bounds(&LAG_BUCKETS),
        }
    }
}

impl LagHistograms {
    /// Records one observation for `priority` (`None`: not known).
    pub fn observe(&self, priority: Option<crate::queue::Priority>, value: Duration) {
        match priority {
            Some(crate::queue::Priority::Live) => self.live.observe(value),
            Some(crate::queue::Priority::Backfill) => self.backfill.observe(value),
            None => self.unlabelled.observe(value),
        }
    }

    pub(super) fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.live.render_series(name, "priority=\"live\",", out);
        self.backfill
            .render_series(name, "priority=\"backfill\",", out);
        if self.unlabelled.total.load(Ordering::Relaxed) > 0 {
            self.unlabelled
                .render_series(name, "priority=\"unknown\",", out);
        }
    }
}

/// Labelled counters (label value → count).
#[derive(Debug, Default)]
pub(crate) struct LabelledCounter(Mutex<BTreeMap<String, u64>>);

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

    pub(super) fn render(&self, name: &str, label: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value, count) in self.0.lock().unwrap().iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {count}", escape(value));
        }
    }

    /// Renders `outcome:reason` keys as two labels (`applied` has an empty reason).
    pub(super) fn render_outcomes(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (key, count) in self.0.lock().unwrap().iter() {
            let (outcome, reason) = key.split_once(':').unwrap_or((key, ""));
            let outcome = match outcome {
                "retry" => "retried",
                "dead_letter" => "dead_lettered",
                other => other,
            };
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{}\",reason=\"{}\"}} {count}",
                escape(outcome),
                escape(reason)
            );
        }
    }
}

/// Escapes a label value for the Prometheus text format.
pub(super) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts requests in a sliding one-minute window.
#[derive(Debug, Default)]
pub(crate) struct RecentRequests(Mutex<std::collections::VecDeque<Instant>>);

impl RecentRequests {
    const WINDOW: Duration = Duration::from_secs(60);

    /// Notes one request sent now.
    pub fn note(&self) {
        let mut sent = self.0.lock().unwrap();
        let now = Instant::now();
        sent.push_back(now);
        Self::trim(&mut sent, now);
    }

    /// Requests sent in the last minute.
    pub fn count(&self) -> usize {
        let mut sent = self.0.lock().unwrap();
        Self::trim(&mut sent, Instant::now());
        sent.len()
    }

    fn trim(sent: &mut std::collections::VecDeque<Instant>, now: Instant) {
        while sent
            .front()
            .is_some_and(|at| now.duration_since(*at) > Self::WINDOW)
        {
            sent.pop_front();
        }
    }
}

/// Writes one sample with its HELP and TYPE lines.
pub(super) fn sample(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Writes HELP and TYPE lines for a labelled family.
pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
