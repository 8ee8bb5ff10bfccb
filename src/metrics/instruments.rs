//! The Prometheus instruments the worker's metrics are made of: a latency histogram, labelled
//! counters, a one-minute request window, and the text format's writers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    pub(super) total: AtomicU64,
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

    pub(super) fn render(&self, name: &str, help: &str, out: &mut String) {
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
