//! The worker's heartbeat row in `pdq.workers`: who runs, where, and whether it is paused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Inner;
use crate::queue::workers::{self, Heartbeat, WorkerState};

/// How often the row is refreshed (well inside [`workers::STALE_AFTER`]).
const INTERVAL: Duration = Duration::from_secs(5);
/// How often rows of workers long stopped or gone are pruned.
const PRUNE_EVERY: u32 = 60;
/// The last write at shutdown gets at most this long.
const STOP_BOUND: Duration = Duration::from_secs(2);

/// Refreshes the heartbeat every [`INTERVAL`] until `stop`, then marks the row stopped.
pub async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    let id = Uuid::new_v4();
    let mut beats = 0u32;
    let mut requests = RequestWindow::default();
    let mut notice_written = String::new();
    loop {
        let mut beat = heartbeat(&inner, id);
        beat.api_requests_last_minute =
            Some(requests.last_minute(Instant::now(), inner.metrics.api_calls()));
        if let Err(error) = inner.db(workers::beat(&inner.pool, &beat)).await {
            tracing::warn!(%error, "could not write the worker heartbeat");
        } else if let Err(error) = inner
            .db(crate::queue::console::record_worker_counters(
                &inner.pool,
                id,
                counters(&inner),
            ))
            .await
        {
            tracing::warn!(%error, "could not record the worker's counters");
        }
        let notice = inner.health.notes();
        if notice != notice_written {
            let text = (!notice.is_empty()).then_some(notice.as_str());
            match inner.db(workers::set_notice(&inner.pool, id, text)).await {
                Ok(()) => notice_written = notice,
                Err(error) => tracing::warn!(%error, "could not record the worker's notice"),
            }
        }
        if beats % PRUNE_EVERY == 0 {
            if let Err(error) = inner
                .db(workers::prune(&inner.pool, workers::FORGET_AFTER))
                .await
            {
                tracing::warn!(%error, "could not prune old worker rows");
            }
        }
        beats = beats.wrapping_add(1);
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.cancelled() => break,
        }
    }
    // The counters of the last seconds too, so a short run's 429s and pauses are charted.
    let last = crate::queue::console::record_worker_counters(&inner.pool, id, counters(&inner));
    if !matches!(tokio::time::timeout(STOP_BOUND, last).await, Ok(Ok(_))) {
        tracing::warn!("could not record the worker's last counters");
    }
    let stopped = tokio::time::timeout(STOP_BOUND, workers::mark_stopped(&inner.pool, id)).await;
    if !matches!(stopped, Ok(Ok(()))) {
        tracing::warn!("could not mark the worker stopped; it will show as gone");
    }
}

fn heartbeat(inner: &Inner, id: Uuid) -> Heartbeat {
    let stopping = inner.cutoff.lock().unwrap().is_some();
    let reason = inner.health.reason();
    let paused = inner.health.is_paused()
        || inner.health.has(crate::metrics::Condition::Outage)
        || inner.health.has(crate::metrics::Condition::Claims)
        || inner.completer.holds_claims();
    let state = match (stopping, paused) {
        (true, _) => WorkerState::Stopping,
        (false, true) => WorkerState::Paused,
        (false, false) => WorkerState::Running,
    };
    let budget = &inner.config.budget;
    Heartbeat {
        id,
        name: inner.config.worker_id.clone(),
        host: host_name(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        executors: inner.config.executors as u32,
        state,
        pause_reason: (!reason.is_empty()).then_some(reason),
        budget_name: budget.shared.then(|| budget.name.clone()),
        budget_per_minute: budget.per_minute,
        api_requests_last_minute: None,
    }
}

/// The counters the console charts (429s, pauses, requests), totals since the start.
fn counters(inner: &Inner) -> crate::queue::console::WorkerCounters {
    let metrics = &inner.metrics;
    crate::queue::console::WorkerCounters {
        api_requests: metrics.api_calls(),
        rate_limited: metrics.api_responses("429"),
        limiter_pauses: metrics.limiter_pauses(),
        oldest_due_live_secs: metrics.oldest_due_age(crate::queue::Priority::Live),
        oldest_due_backfill_secs: metrics.oldest_due_age(crate::queue::Priority::Backfill),
    }
}

/// The machine's name, from the kernel or `HOSTNAME`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Samples of the request counter, to tell how many requests went out in the last minute.
#[derive(Default)]
struct RequestWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RequestWindow {
    /// Records `total` at `now`; returns the requests since the sample about a minute old
    /// (since the start when the worker is younger).
    fn last_minute(&mut self, now: Instant, total: u64) -> u64 {
        self.samples.push_back((now, total));
        while self.samples.len() > 1
            && now.duration_since(self.samples[1].0) >= Duration::from_secs(60)
        {
            self.samples.pop_front();
        }
        let start = self.samples.front().map_or(0, |(at, count)| {
            match now.duration_since(*at) >= Duration::from_secs(60) {
                true => *count,
                false => 0,
            }
        });
        total.saturating_sub(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_over_the_last_minute() {
        let t0 = Instant::now();
        let mut window = RequestWindow::default();
        assert_eq!(window.last_minute(t0, 0), 0);
        assert_eq!(window.last_minute(t0 + Duration::from_secs(30), 12), 12);
        assert_eq!(window.last_minute(t0 + Duration::from_secs(60), 20), 20);
        assert_eq!(window.last_minute(t0 + Duration::from_secs(90), 25), 13);
        assert_eq!(window.last_minute(t0 + Duration::from_secs(150), 25), 0);
    }
}
