//! The worker: claims units, applies them through the Genesys Cloud API, records outcomes.
//!
//! One claimer task fills a small in-memory [`buffer::Buffer`] (batch claims, woken by
//! `NOTIFY pdq_jobs` or a slow poll); N executors take the most urgent unit, wait for the
//! request budget ([`pacer::Pacer`]) and run it ([`execute`]); a completer archives applied
//! units in batches; a maintenance task renews leases, recovers expired ones and prunes.

pub mod api;
pub mod backoff;
mod buffer;
mod completer;
pub mod decide;
mod execute;
mod maintenance;
pub mod pacer;
pub mod resolve;
mod wakeup;

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::metrics::{Health, Metrics};
use crate::queue::{self, ClaimOptions, Fence, Unit};
pub use api::Api;
pub use backoff::Backoff;
pub use execute::UnitOutcome;
pub use pacer::{Budget, Pacer};

/// Worker settings (from `pdq run`'s flags, or built directly by tests and the demo).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrent executors (API calls in flight).
    pub executors: usize,
    /// Units claimed per claim statement.
    pub claim_batch: u32,
    /// Jobs coalesced into one PATCH at most.
    pub max_coalesce: u32,
    /// Lease on claimed units; renewed while a unit is worked on.
    pub lease: Duration,
    /// Safety-net poll when no notification arrives.
    pub poll_interval: Duration,
    /// How long an external tag may stay unfindable (analytics lag) before `conversation_not_found`.
    pub lookup_window: Duration,
    /// How long a conversation read is reused for other jobs of the same conversation.
    pub conversation_cache_ttl: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// The request budget.
    pub budget: Budget,
    /// How long in-flight units may finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// How long applied jobs stay in `pdq.finished_jobs`.
    pub retention: Duration,
    /// Recorded in `locked_by`.
    pub worker_id: String,
    /// Seed for jitter (tests and the demo repeat).
    pub seed: Option<u64>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            executors: 16,
            claim_batch: 64,
            max_coalesce: 100,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            lookup_window: Duration::from_secs(60),
            conversation_cache_ttl: Duration::from_secs(2),
            backoff: Backoff::default(),
            budget: Budget::default(),
            shutdown_grace: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 86_400),
            worker_id: format!("pdq-{}", std::process::id()),
            seed: None,
        }
    }
}

/// A worker process's shared state.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    api: Api,
    config: WorkerConfig,
    pacer: Pacer,
    buffer: buffer::Buffer,
    cache: resolve::ConversationCache,
    in_flight: Mutex<HashMap<Uuid, Fence>>,
    completer: completer::Completer,
    forbidden_streak: AtomicU32,
    rng: Mutex<SmallRng>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Worker {
    /// A worker on `pool` calling the API through `api`.
    pub fn new(pool: PgPool, api: Api, config: WorkerConfig) -> Worker {
        let pacer = Pacer::new(&config.budget, Some(pool.clone()));
        let capacity = buffer_capacity(&config, &pacer);
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_entropy(),
        };
        Worker {
            inner: Arc::new(Inner {
                completer: completer::Completer::new(pool.clone()),
                pool,
                api,
                cache: resolve::ConversationCache::new(config.conversation_cache_ttl),
                buffer: buffer::Buffer::new(capacity),
                in_flight: Mutex::new(HashMap::new()),
                forbidden_streak: AtomicU32::new(0),
                rng: Mutex::new(rng),
                metrics: Arc::new(Metrics::default()),
                health: Arc::new(Health::default()),
                pacer,
                config,
            }),
        }
    }

    /// The worker's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// The worker's health (red while paused by a configuration problem).
    pub fn health(&self) -> Arc<Health> {
        self.inner.health.clone()
    }

    /// The rate limiter's counters.
    pub fn pacer(&self) -> &Pacer {
        &self.inner.pacer
    }

    /// Claims one batch and runs every unit in it to an outcome, in this task; returns the
    /// outcomes (empty when nothing was due). Tests and the demo drive the queue with this.
    pub async fn process_next(&self) -> Result<Vec<UnitOutcome>, queue::Error> {
        let units = queue::claim(
            &self.inner.pool,
            &self.claim_options(self.inner.config.claim_batch),
        )
        .await?;
        let mut outcomes = Vec::with_capacity(units.len());
        for unit in units {
            self.inner.track(&unit);
            outcomes.push(execute::run_unit(&self.inner, unit, false).await?);
        }
        self.inner.completer.flush().await?;
        Ok(outcomes)
    }

    /// Runs until `shutdown` is cancelled: then stops claiming, lets in-flight units finish
    /// within the grace period and gives the rest back without spending an attempt.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), queue::Error> {
        let tasks = TaskTracker::new();
        let stop_claiming = shutdown.child_token();
        let stop_executors = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let wake = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(wakeup::listen(
            self.inner.pool.clone(),
            wake.clone(),
            stop_background.clone(),
        ));
        tasks.spawn(claimer(self.clone(), wake, stop_claiming.clone()));
        tasks.spawn(maintenance::run(
            self.inner.clone(),
            stop_background.clone(),
        ));
        tasks.spawn(completer::run(self.inner.clone(), stop_background.clone()));
        let executors = TaskTracker::new();
        for _ in 0..self.inner.config.executors {
            executors.spawn(execute::executor(
                self.inner.clone(),
                stop_executors.clone(),
            ));
        }
        executors.close();
        shutdown.cancelled().await;
        tracing::info!("shutting down: no new claims, finishing in-flight units");
        stop_claiming.cancel();
        for unit in self.inner.buffer.take_all() {
            self.inner.release(unit.fence()).await;
        }
        let grace = self.inner.config.shutdown_grace;
        stop_executors.cancel();
        if tokio::time::timeout(grace, executors.wait()).await.is_err() {
            tracing::warn!("grace period over; releasing the units still running");
        }
        let leftover: Vec<Fence> = self
            .inner
            .in_flight
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        for fence in leftover {
            self.inner.release(fence).await;
        }
        stop_background.cancel();
        tasks.close();
        tasks.wait().await;
        self.inner.completer.flush().await
    }

    fn claim_options(&self, units: u32) -> ClaimOptions {
        ClaimOptions {
            units,
            max_coalesce: self.inner.config.max_coalesce,
            lease: self.inner.config.lease,
            worker_id: self.inner.config.worker_id.clone(),
        }
    }
}

impl Inner {
    /// Remembers a claimed unit until it ends, for lease renewal and shutdown.
    fn track(&self, unit: &Unit) {
        self.in_flight
            .lock()
            .unwrap()
            .insert(unit.lease, unit.fence());
    }

    fn untrack(&self, lease: Uuid) {
        self.in_flight.lock().unwrap().remove(&lease);
    }

    async fn release(&self, fence: Fence) {
        self.untrack(fence.lease);
        if let Err(error) = queue::release(&self.pool, &fence).await {
            tracing::warn!(%error, lease = %fence.lease, "could not release unit; its lease will expire");
        }
    }
}

/// Under a rate limit the buffer holds about a second of budget, so claimed units do not sit
/// behind the limiter (and a new live job is claimed within about one token interval).
fn buffer_capacity(config: &WorkerConfig, pacer: &Pacer) -> usize {
    let interval = pacer.token_interval();
    if interval.is_zero() {
        return (config.executors * 2).max(config.claim_batch as usize * 2);
    }
    let per_second = (Duration::from_secs(1).as_secs_f64() / interval.as_secs_f64()).ceil();
    (per_second as usize).clamp(1, config.executors * 2)
}

/// Keeps the buffer topped up: claims in batches when half of it is free, and on every
/// wake-up (a NOTIFY, the poll) claims at least one unit even when it is full, unless a live unit
/// already waits: the claim order puts a new live job first, so it never queues behind backfill.
async fn claimer(worker: Worker, wake: Arc<tokio::sync::Notify>, stop: CancellationToken) {
    let inner = &worker.inner;
    let mut nudged = true;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let live_waiting = inner.buffer.next_lane() == Some(crate::queue::Priority::Live);
        let claim_now = inner.buffer.wants_refill() || (nudged && !live_waiting);
        if inner.health.is_unhealthy() || !claim_now {
            tokio::select! {
                _ = wake.notified() => nudged = true,
                _ = inner.buffer.drained.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.cancelled() => return,
            }
            continue;
        }
        let room = inner.buffer.room().max(usize::from(nudged)) as u32;
        let wanted = room.min(inner.config.claim_batch);
        nudged = false;
        match queue::claim(&inner.pool, &worker.claim_options(wanted)).await {
            Ok(units) if !units.is_empty() => {
                let full = units.len() as u32 == wanted;
                inner
                    .metrics
                    .claims
                    .fetch_add(units.len() as u64, std::sync::atomic::Ordering::Relaxed);
                for unit in &units {
                    inner.track(unit);
                    if unit.head().priority == crate::queue::Priority::Live {
                        inner.pacer.note_live();
                    }
                }
                inner.buffer.push(units);
                if full {
                    continue;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "claim failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        tokio::select! {
            _ = wake.notified() => nudged = true,
            _ = inner.buffer.drained.notified() => {}
            _ = tokio::time::sleep(inner.config.poll_interval) => nudged = true,
            _ = stop.cancelled() => return,
        }
    }
}
