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
        if last_renew.elapsed() >= inner.config.lease / 3 {
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
            last_prune = Instant::now();
        }
        if let Ok(depth) = queue::pending_count(&inner.pool).await {
            inner.metrics.queue_depth.store(depth, Ordering::Relaxed);
        }
    }
}

async fn renew(inner: &Inner) {
    let leases: Vec<Uuid> = inner.in_flight.lock().unwrap().keys().copied().collect();
    match queue::renew_leases(&inner.pool, &leases, inner.config.lease).await {
        Ok(lost) => {
            for lease in lost {
                tracing::warn!(%lease, "lease lost; the unit will be retried elsewhere");
            }
        }
        Err(error) => tracing::warn!(%error, "lease renewal failed"),
    }
}

/// While paused, checks now and then (backing off) whether the API takes our credentials again.
struct Probe {
    next: Instant,
    delay: Duration,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            next: Instant::now(),
            delay: Duration::from_secs(2),
        }
    }
}

impl Probe {
    async fn maybe_resume(&mut self, inner: &Inner) {
        if !inner.health.is_unhealthy() {
            self.delay = Duration::from_secs(2);
            self.next = Instant::now();
            return;
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
        self.next = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(Duration::from_secs(30));
    }
}
