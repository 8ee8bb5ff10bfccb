//! Background upkeep: lease renewal, recovery of expired leases, pruning, queue depth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Inner;
use crate::queue;

/// Runs every second until `stop`.
pub async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    let mut last_prune = Instant::now() - Duration::from_secs(3_600);
    let mut last_renew = Instant::now();
    let mut probe = Probe::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        if last_renew.elapsed() >= inner.config.lease / 4 {
            renew(&inner).await;
            last_renew = Instant::now();
        }
        probe.maybe_resume(&inner).await;
        match queue::rescue_expired_leases(&inner.pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "recovered jobs whose worker lost its lease"),
            Err(error) => tracing::warn!(%error, "lease recovery failed"),
        }
        if last_prune.elapsed() >= Duration::from_secs(3_600) {
            let _ = queue::prune_finished(&inner.pool, inner.config.retention, 10_000).await;
            let _ = queue::prune_applied_keys(&inner.pool, inner.config.retention, 10_000).await;
            last_prune = Instant::now();
        }
        if let Ok(depth) = queue::pending_count(&inner.pool).await {
            inner.metrics.queue_depth.store(depth, Ordering::Relaxed);
        }
    }
}

async fn renew(inner: &Inner) {
    let leases: Vec<Uuid> = inner.in_flight.lock().unwrap().keys().copied().collect();
    let from = Instant::now();
    match queue::renew_leases(&inner.pool, &leases, inner.config.lease).await {
        Ok(lost) => {
            let held: Vec<Uuid> = leases.into_iter().filter(|l| !lost.contains(l)).collect();
            inner.renewed(&held, &lost, from);
            for lease in lost {
                tracing::warn!(%lease, "lease lost; the unit will not be sent and runs again elsewhere");
            }
        }
        Err(error) => tracing::warn!(%error, "lease renewal failed"),
    }
}

/// While paused, checks now and then (backing off) whether the API takes our credentials again.
/// The backoff survives a resume that is followed by another pause soon after (a token that is
/// accepted by the login host but refused by the API), so a persistent problem is probed ever
/// less often instead of every few seconds.
struct Probe {
    next: Instant,
    delay: Duration,
    healthy_since: Option<Instant>,
}

/// The first probe delay; it doubles up to [`PROBE_MAX`].
const PROBE_FIRST: Duration = Duration::from_secs(2);
/// The longest delay between two credential probes.
const PROBE_MAX: Duration = Duration::from_secs(300);
/// A resume that holds this long resets the probe backoff.
const PROBE_RESET_AFTER: Duration = Duration::from_secs(600);

impl Default for Probe {
    fn default() -> Self {
        Probe {
            next: Instant::now(),
            delay: PROBE_FIRST,
            healthy_since: Some(Instant::now()),
        }
    }
}

impl Probe {
    async fn maybe_resume(&mut self, inner: &Inner) {
        if !inner.health.is_paused() {
            let since = *self.healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= PROBE_RESET_AFTER {
                self.delay = PROBE_FIRST;
            }
            return;
        }
        if self.healthy_since.take().is_some() {
            self.next = Instant::now() + self.delay;
        }
        if Instant::now() < self.next {
            return;
        }
        match inner.api.probe().await {
            Ok(()) => {
                tracing::info!("credentials accepted again: resuming");
                inner.health.recover();
            }
            Err(error) => tracing::warn!(%error, "still paused"),
        }
        self.delay = (self.delay * 2).min(PROBE_MAX);
        self.next = Instant::now() + self.delay;
    }
}
