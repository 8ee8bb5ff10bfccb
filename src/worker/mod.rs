//! The worker: claims units, applies them through the Genesys Cloud API, records outcomes.
//!
//! One claimer task fills a small in-memory buffer (batch claims, woken by `NOTIFY pdq_jobs`
//! or a slow poll); N executors take the most urgent unit, wait for the request budget
//! ([`Pacer`]) and run it through a pipeline of named steps (`execute.rs`: resolve, hold the
//! target, send, classify a failure with the outcome table, record the outcome); a completer
//! archives applied units in batches; a maintenance task renews leases, recovers expired ones
//! and prunes.
//!
//! A library user needs [`Worker`], [`WorkerConfig`] and [`Api`]; everything else is internal.

mod api;
mod backoff;
mod bounded;
mod buffer;
mod calls;
mod completer;
mod config;
mod decide;
mod execute;
mod heartbeat;
mod maintenance;
mod outage;
mod outcome;
mod pacer;
mod resolve;
mod send;
mod wakeup;

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::{Condition, Health, Metrics};
use crate::queue::lease::ClaimOptions;
use crate::queue::{self, Fence, Unit};
pub use api::Api;
pub use backoff::Backoff;
pub use config::{
    Wakeup, WorkerConfig, CALL_MARGIN, DEFAULT_CLAIM_TIMEOUT, DEFAULT_EXECUTORS,
    DEFAULT_LIVE_BEHIND, DEFAULT_LOOKUP_WINDOW, DEFAULT_POLL_INTERVAL, DEFAULT_POLL_ONLY_INTERVAL,
    DEFAULT_RETENTION, DEFAULT_SHUTDOWN_GRACE, DEFAULT_STATEMENT_TIMEOUT,
};
pub use execute::UnitOutcome;
pub use pacer::{Budget, Pacer, DEFAULT_BACKFILL_SHARE, DEFAULT_RATE_LIMIT};
pub use resolve::Target;

/// A worker process's shared state.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Where `LISTEN` runs, when not on `pool` (a direct connection beside a pooler).
    listen_pool: Mutex<Option<PgPool>>,
    api: Api,
    config: WorkerConfig,
    pacer: Pacer,
    buffer: buffer::Buffer,
    cache: resolve::ConversationCache,
    in_flight: Mutex<HashMap<Uuid, Held>>,
    /// After shutdown began, no request may start that could end after this instant.
    cutoff: Mutex<Option<Instant>>,
    outage: outage::Detector,
    completer: completer::Completer,
    forbidden_streak: AtomicU32,
    /// What the credential check of a configuration pause asks (see
    /// [`maintenance::remember_pause`]).
    credential_check: Mutex<maintenance::CheckCall>,
    rng: Mutex<SmallRng>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Worker {
    /// A worker on `pool` calling the API through `api`.
    pub fn new(pool: PgPool, api: Api, config: WorkerConfig) -> Worker {
        let mut pacer = Pacer::new(&config.budget, Some(pool.clone()));
        pacer.bound_calls(config.call_bound());
        let capacity = buffer_capacity(&config, &pacer);
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_entropy(),
        };
        let health = Arc::new(Health::default());
        health.set_liveness_bound(config.liveness_bound());
        let metrics = Arc::new(Metrics::for_budget(config.budget.per_minute));
        metrics.set_live_behind_threshold(config.live_behind);
        Worker {
            inner: Arc::new(Inner {
                completer: completer::Completer::new(pool.clone()),
                pool,
                listen_pool: Mutex::new(None),
                api,
                cache: resolve::ConversationCache::new(config.conversation_cache_ttl),
                buffer: buffer::Buffer::new(capacity),
                in_flight: Mutex::new(HashMap::new()),
                cutoff: Mutex::new(None),
                outage: outage::Detector::default(),
                forbidden_streak: AtomicU32::new(0),
                credential_check: Mutex::default(),
                rng: Mutex::new(rng),
                metrics,
                health,
                pacer,
                config,
            }),
        }
    }

    /// Runs the wake-up listener on `pool` instead of the worker's own pool: a direct
    /// connection to Postgres while the worker's statements go through a transaction pooler
    /// (where `LISTEN` cannot work). Call before [`Worker::run`].
    pub fn listen_through(&self, pool: PgPool) {
        *self.inner.listen_pool.lock().unwrap() = Some(pool);
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
        let units = queue::lease::claim(
            &self.inner.pool,
            &self.claim_options(self.inner.config.claim_batch),
        )
        .await?;
        let mut outcomes = Vec::with_capacity(units.len());
        for unit in units {
            self.inner.track(&unit);
            outcomes.push(execute::run_unit(&self.inner, unit, false).await?);
        }
        completer::flush_all(&self.inner).await;
        Ok(outcomes)
    }

    /// Runs until `shutdown` is cancelled: then stops claiming, lets in-flight units finish
    /// within the grace period and gives the rest back without spending an attempt.
    ///
    /// Every task is supervised: if the claimer, the completer, the maintenance task, the
    /// wake-up listener or an executor stops on its own (a panic), `/healthz` names it, the
    /// worker shuts down as above and this returns [`RunError::TaskStopped`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let stop_claiming = shutdown.child_token();
        let stop_executors = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut background = tokio::task::JoinSet::new();
        let inner = &self.inner;
        let wakeups = Arc::new(wakeup::Wakeups::default());
        if inner.config.wakeup == Wakeup::Listen {
            let listen_pool = inner.listen_pool.lock().unwrap().clone();
            background.spawn(named(
                "wake-up listener",
                wakeup::listen(
                    listen_pool.unwrap_or_else(|| inner.pool.clone()),
                    wakeups.clone(),
                    wake.clone(),
                    inner.health.clone(),
                    inner.config.call_bound(),
                    stop_background.clone(),
                ),
            ));
        }
        let claims = Arc::new(bounded::ClaimWatch::default());
        background.spawn(named(
            "claimer",
            claimer(
                self.clone(),
                wake,
                wakeups,
                claims.clone(),
                stop_claiming.clone(),
            ),
        ));
        background.spawn(named(
            "claim watch",
            bounded::watch(
                claims,
                inner.health.clone(),
                inner.config.claim_timeout * 3,
                stop_background.clone(),
            ),
        ));
        background.spawn(named(
            "maintenance",
            maintenance::run(inner.clone(), stop_background.clone()),
        ));
        background.spawn(named(
            "heartbeat",
            heartbeat::run(inner.clone(), stop_background.clone()),
        ));
        background.spawn(named(
            "completer",
            completer::run(inner.clone(), stop_background.clone()),
        ));
        let mut executors = tokio::task::JoinSet::new();
        for _ in 0..inner.config.executors {
            executors.spawn(named(
                "executor",
                execute::executor(inner.clone(), stop_executors.clone()),
            ));
        }
        let stopped = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            Some(ended) = background.join_next() => Some(task_ended(ended)),
            Some(ended) = executors.join_next() => Some(task_ended(ended)),
        };
        // The claimer stops with the shutdown token: ending then is not a failure.
        let stopped = stopped.filter(|_| !shutdown.is_cancelled());
        if let Some(why) = &stopped {
            tracing::error!(task = %why, "a worker task stopped ({why}); shutting down");
            inner.health.set(Condition::Task, why.clone());
        }
        tracing::info!("shutting down: no new claims, finishing in-flight units");
        let grace = inner.config.shutdown_grace;
        *inner.cutoff.lock().unwrap() = Some(Instant::now() + grace);
        stop_claiming.cancel();
        stop_executors.cancel();
        let waiting = inner.buffer.take_all();
        let _ = tokio::time::timeout(SHUTDOWN_DB_BOUND / 2, async {
            for unit in waiting {
                inner.release(unit.fence()).await;
            }
        })
        .await;
        let finished = tokio::time::timeout(grace, async {
            while executors.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!("grace period over; giving back the units still running");
        }
        // Units applied and waiting to be recorded stay held: the completer's last flush
        // records them; giving them back would send them again.
        let leftover: Vec<Fence> = {
            let mut in_flight = inner.in_flight.lock().unwrap();
            let running: Vec<Uuid> = in_flight
                .iter()
                .filter(|(_, held)| !held.recording)
                .map(|(lease, _)| *lease)
                .collect();
            running
                .into_iter()
                .filter_map(|lease| in_flight.remove(&lease))
                .map(|held| held.fence)
                .collect()
        };
        let db_deadline = tokio::time::Instant::now() + SHUTDOWN_DB_BOUND;
        let bounded = tokio::time::timeout_at(db_deadline, async {
            for fence in leftover {
                if let Err(error) = inner.db(queue::lease::release(&inner.pool, &fence)).await {
                    tracing::warn!(%error, lease = %fence.lease, "could not give a unit back ({error}); its lease will expire");
                }
            }
            completer::flush_all(inner).await
        })
        .await;
        executors.abort_all();
        stop_background.cancel();
        let _ = tokio::time::timeout_at(db_deadline, async {
            while background.join_next().await.is_some() {}
        })
        .await;
        background.abort_all();
        if bounded.is_err() {
            tracing::warn!("Postgres did not answer in time at shutdown; unrecorded units will run again after their lease");
        }
        match stopped {
            Some(why) => Err(RunError::TaskStopped(why)),
            None => Ok(()),
        }
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

/// A unit this process holds, with the instant its lease runs out (monotonic clock).
struct Held {
    fence: Fence,
    deadline: Instant,
    /// Applied and handed to the completer: held (and renewed) until it is recorded, never
    /// given back.
    recording: bool,
}

/// At shutdown, the steps that need Postgres get at most this long after the grace (and half
/// of it before), so SIGTERM ends within the grace plus a bound whatever Postgres does.
const SHUTDOWN_DB_BOUND: Duration = Duration::from_secs(5);

/// A PATCH leaves only if the lease has at least the request timeout plus this margin left.
const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// Why [`Worker::run`] ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A task of the worker stopped on its own (a panic); the others were shut down.
    #[error("worker task stopped: {0}")]
    TaskStopped(String),
}

async fn named<F: std::future::Future<Output = ()>>(name: &'static str, task: F) -> &'static str {
    task.await;
    name
}

fn task_ended(ended: Result<&'static str, tokio::task::JoinError>) -> String {
    match ended {
        Ok(name) => format!("the {name} returned before shutdown"),
        Err(error) if error.is_panic() => {
            let payload = error.into_panic();
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "no message".to_owned());
            format!("a worker task panicked: {text}")
        }
        Err(_) => "a worker task was cancelled".to_owned(),
    }
}

impl Inner {
    /// Remembers a claimed unit until it ends, for lease renewal and shutdown.
    fn track(&self, unit: &Unit) {
        self.in_flight.lock().unwrap().insert(
            unit.lease,
            Held {
                fence: unit.fence(),
                deadline: unit.deadline,
                recording: false,
            },
        );
    }

    fn untrack(&self, lease: Uuid) {
        self.in_flight.lock().unwrap().remove(&lease);
    }

    /// Marks a unit applied: it stays tracked (its lease renewed) until the completer records
    /// it and untracks it.
    fn hand_to_recording(&self, lease: Uuid) {
        if let Some(held) = self.in_flight.lock().unwrap().get_mut(&lease) {
            held.recording = true;
        }
    }

    /// Ends the tracking of a unit whose run ended, unless it waits to be recorded.
    fn untrack_unless_recording(&self, lease: Uuid) {
        let mut in_flight = self.in_flight.lock().unwrap();
        if in_flight.get(&lease).is_some_and(|held| !held.recording) {
            in_flight.remove(&lease);
        }
    }

    /// Records renewal results: held leases run until `from + lease`, lost ones end now.
    fn renewed(&self, held: &[Uuid], lost: &[Uuid], from: Instant) {
        let mut in_flight = self.in_flight.lock().unwrap();
        for lease in held {
            if let Some(unit) = in_flight.get_mut(lease) {
                unit.deadline = from + self.config.lease;
            }
        }
        for lease in lost {
            if let Some(unit) = in_flight.get_mut(lease) {
                unit.deadline = from;
            }
        }
    }

    /// How long a request may take from now and still end before the unit's lease does.
    /// `None`: the unit is no longer ours.
    fn lease_left(&self, lease: Uuid) -> Option<Duration> {
        let deadline = self.in_flight.lock().unwrap().get(&lease)?.deadline;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// During shutdown, the time left before the grace period ends.
    fn cutoff_left(&self) -> Option<Duration> {
        let cutoff = (*self.cutoff.lock().unwrap())?;
        Some(cutoff.saturating_duration_since(Instant::now()))
    }

    /// Confirms that a PATCH for this unit may leave now, `bodies` counting it and the bodies
    /// of the unit still to follow it: the lease must outlast the request, and during shutdown
    /// every one of those bodies must end before the grace period does (a unit is not cut off
    /// halfway through its bodies), which is asked of the `first` body only: the others follow
    /// it back to back (their request slots were taken before it left). When the lease is too
    /// close to its end, it is renewed
    /// first. A lost lease is [`queue::Error::LeaseLost`]; a shutdown too close is
    /// [`Stop::Stopping`](execute::Stop::Stopping): the caller gives the unit back.
    async fn may_send(&self, lease: Uuid, bodies: u32, first: bool) -> Result<(), execute::Stop> {
        let timeout = self.api.request_timeout();
        let needed = timeout + LEASE_MARGIN;
        let Some(left) = self.lease_left(lease) else {
            return Err(queue::Error::LeaseLost.into());
        };
        match self.cutoff_left() {
            Some(before_cutoff)
                if first && before_cutoff < timeout * bodies.max(1) + LEASE_MARGIN =>
            {
                return Err(execute::Stop::Stopping);
            }
            _ => {}
        }
        if left >= needed {
            return Ok(());
        }
        let from = Instant::now();
        let lost = self
            .db(queue::lease::renew_leases(
                &self.pool,
                &[lease],
                self.config.lease,
            ))
            .await?;
        if lost.is_empty() {
            self.renewed(&[lease], &[], from);
        } else {
            self.renewed(&[], &lost, from);
            tracing::warn!(%lease, "lease lost before the PATCH; not sending it");
        }
        match self.lease_left(lease) {
            Some(left) if left >= needed => Ok(()),
            _ => Err(queue::Error::LeaseLost.into()),
        }
    }

    /// One database call, bounded ([`bounded::call`]).
    async fn db<T, E: From<sqlx::Error>>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        bounded::call(self.config.call_bound(), call).await
    }

    async fn release(&self, fence: Fence) {
        self.untrack(fence.lease);
        if let Err(error) = self.db(queue::lease::release(&self.pool, &fence)).await {
            tracing::warn!(%error, lease = %fence.lease, "could not release a unit ({error}); its lease will expire");
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

/// After this many claims in a row fail, `/healthz` reports it.
const CLAIM_FAILURES_UNHEALTHY: u32 = 3;
/// The pause between two failed claims.
const CLAIM_RETRY_DELAY: Duration = Duration::from_millis(500);

/// How long a claimer with nothing to do (worker paused, buffer full) sleeps before it looks
/// again, in case a wake-up or drain notification was missed.
const CLAIMER_IDLE_POLL: Duration = Duration::from_millis(200);

/// Keeps the buffer topped up: claims in batches when half of it is free, and on every
/// wake-up (a NOTIFY, the poll) claims at least one unit even when it is full, unless a live unit
/// already waits: the claim order puts a new live job first, so it never queues behind backfill.
async fn claimer(
    worker: Worker,
    wake: Arc<tokio::sync::Notify>,
    wakeups: Arc<wakeup::Wakeups>,
    claims: Arc<bounded::ClaimWatch>,
    stop: CancellationToken,
) {
    let inner = &worker.inner;
    let mut nudged = true;
    // The poll (not a notification) started the next claim.
    let mut by_poll = false;
    let mut failures = 0u32;
    loop {
        if stop.is_cancelled() {
            return;
        }
        // Each round proves the main loop alive (`/livez`).
        inner.health.tick();
        let live_waiting = inner.buffer.next_lane() == Some(crate::queue::Priority::Live);
        let claim_now = inner.buffer.wants_refill() || (nudged && !live_waiting);
        // While applied units cannot be recorded, claiming more would only add to them.
        let recording_stuck = inner.completer.holds_claims();
        if inner.health.is_paused() || !claim_now || recording_stuck {
            claims.settled();
            tokio::select! {
                _ = wake.notified() => { nudged = true; by_poll = false }
                _ = inner.buffer.drained.notified() => by_poll = false,
                _ = tokio::time::sleep(CLAIMER_IDLE_POLL) => by_poll = false,
                _ = stop.cancelled() => return,
            }
            continue;
        }
        let room = inner.buffer.room().max(usize::from(nudged)) as u32;
        let wanted = room.min(inner.config.claim_batch);
        nudged = false;
        claims.attempting();
        let options = worker.claim_options(wanted);
        let claimed = bounded::claim(&inner.pool, &options, inner.config.claim_timeout).await;
        if let Ok(units) = &claimed {
            claims.settled();
            if wakeups.claimed(!units.is_empty(), by_poll) {
                tracing::warn!("{}", wakeup::SILENT);
                inner
                    .health
                    .note(crate::metrics::Note::Wakeups, wakeup::SILENT);
            }
        }
        by_poll = false;
        match claimed {
            Ok(units) if !units.is_empty() => {
                if failures > 0 {
                    failures = 0;
                    inner.health.clear(Condition::Claims);
                }
                let full = units.len() as u32 == wanted;
                inner.metrics.count_claims(units.len() as u64);
                for unit in &units {
                    inner.track(unit);
                    if unit.head().priority == crate::queue::Priority::Live {
                        inner.pacer.note_live();
                    }
                }
                inner.buffer.push(units);
                if inner.health.is_paused() {
                    // The worker paused while this claim was in flight, after the pause gave
                    // the buffer back: give these units back too, attempts untouched.
                    for unit in inner.buffer.take_all() {
                        inner.release(unit.fence()).await;
                    }
                    continue;
                }
                if full {
                    continue;
                }
            }
            Ok(_) => {}
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "claiming failed ({failures} in a row): {error}; retrying");
                if failures >= CLAIM_FAILURES_UNHEALTHY {
                    inner
                        .health
                        .set(Condition::Claims, bounded::failing(failures, &error));
                }
                tokio::select! {
                    _ = tokio::time::sleep(CLAIM_RETRY_DELAY) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
        }
        if failures > 0 {
            failures = 0;
            inner.health.clear(Condition::Claims);
        }
        tokio::select! {
            _ = wake.notified() => nudged = true,
            _ = inner.buffer.drained.notified() => {}
            _ = tokio::time::sleep(inner.config.poll_interval) => { nudged = true; by_poll = true }
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_early_is_named_in_the_report() {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(named("claimer", async { panic!("index out of bounds") }));
        let report = task_ended(tasks.join_next().await.unwrap());
        assert_eq!(report, "a worker task panicked: index out of bounds");

        tasks.spawn(named("completer", async {}));
        let report = task_ended(tasks.join_next().await.unwrap());
        assert_eq!(report, "the completer returned before shutdown");
    }
}
