//! The request budget: every outbound API call waits here first.
//!
//! A `governor` token bucket paces this process; live requests go before backfill requests,
//! which may use only a share of the budget; a 429 (or rate-limit headers that say the window is
//! spent) pauses every executor, not just the one that saw it. With a shared budget, every
//! process on the database takes its request slots from one schedule in Postgres
//! ([`crate::queue::budget`]), so adding workers never multiplies the request rate.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;

use crate::genesys::{cap_wait, RateLimitInfo};
use crate::queue::budget::PauseReason;
use crate::queue::{self, Priority};

/// How the budget is configured.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Requests per minute for all of pdq's calls (0 = no limit).
    pub per_minute: u32,
    /// Share of the budget backfill may use while live work waits (0.0–1.0).
    pub backfill_share: f64,
    /// Take request slots from the schedule in Postgres shared by every process.
    pub shared: bool,
    /// The shared schedule's name (one per OAuth client).
    pub name: String,
}

/// API requests per minute for all pdq processes on one database, unless told otherwise.
pub const DEFAULT_RATE_LIMIT: u32 = 300;

/// Share of the budget backfill may use while live updates wait, unless told otherwise.
pub const DEFAULT_BACKFILL_SHARE: f64 = 0.5;

impl Default for Budget {
    fn default() -> Self {
        Budget {
            per_minute: DEFAULT_RATE_LIMIT,
            backfill_share: DEFAULT_BACKFILL_SHARE,
            shared: true,
            name: "default".to_owned(),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PacerStats {
    /// Requests that had to wait for a token.
    pub waits: AtomicU64,
    /// Total time spent waiting, in microseconds.
    pub wait_micros: AtomicU64,
    /// Pauses caused by 429 responses or exhausted rate-limit windows.
    pub pauses: AtomicU64,
}

/// Paces outbound requests for one worker process.
pub struct Pacer {
    main: Option<DefaultDirectRateLimiter>,
    backfill: Option<DefaultDirectRateLimiter>,
    interval: Duration,
    live_waiting: AtomicUsize,
    live_seen: Mutex<Option<Instant>>,
    paused_until: Mutex<Option<Instant>>,
    probe: Mutex<PauseProbe>,
    shared: Option<SharedSlots>,
    stats: PacerStats,
}

struct SharedSlots {
    pool: PgPool,
    /// How long a call to the shared budget may take before it is abandoned.
    call_bound: Duration,
    name: String,
    slots: tokio::sync::Mutex<Vec<Instant>>,
    chunk: u32,
}

impl Pacer {
    /// A pacer for `budget`; `pool` is needed for a shared budget.
    pub fn new(budget: &Budget, pool: Option<PgPool>) -> Pacer {
        let per_minute = NonZeroU32::new(budget.per_minute);
        let sharing = budget.shared && pool.is_some();
        // Alone, the bucket paces every request (burst 1). With a shared budget the schedule in
        // Postgres spaces the requests; the local bucket then allows a burst of 2 so the two
        // schedules do not stack their delays, while few requests wait on reserved slots (a new
        // live request overtakes everything still in front of the local bucket).
        let burst = |_: NonZeroU32| match sharing {
            true => NonZeroU32::new(2).expect("non-zero"),
            false => NonZeroU32::MIN,
        };
        let limiter = |per_minute: NonZeroU32| {
            let quota = Quota::per_minute(per_minute).allow_burst(burst(per_minute));
            RateLimiter::direct(quota)
        };
        let backfill_per_minute = (f64::from(budget.per_minute) * budget.backfill_share) as u32;
        let interval = per_minute.map_or(Duration::ZERO, |n| Duration::from_secs(60) / n.get());
        let shared = match (per_minute, budget.shared, pool) {
            (Some(n), true, Some(pool)) => Some(SharedSlots {
                pool,
                call_bound: super::config::DEFAULT_STATEMENT_TIMEOUT + super::CALL_MARGIN,
                name: budget.name.clone(),
                slots: tokio::sync::Mutex::new(Vec::new()),
                chunk: (n.get() / 6_000).max(1),
            }),
            _ => None,
        };
        Pacer {
            main: per_minute.map(limiter),
            backfill: per_minute
                .and(NonZeroU32::new(backfill_per_minute.max(1)))
                .map(limiter),
            interval,
            live_waiting: AtomicUsize::new(0),
            live_seen: Mutex::new(None),
            paused_until: Mutex::new(None),
            probe: Mutex::new(PauseProbe::default()),
            shared,
            stats: PacerStats::default(),
        }
    }

    /// Bounds each call to the shared budget in Postgres by `bound` (a call not answered by
    /// then is abandoned: the pacer paces locally meanwhile).
    pub(crate) fn bound_calls(&mut self, bound: Duration) {
        if let Some(shared) = &mut self.shared {
            shared.call_bound = bound;
        }
    }

    /// Wait and pause counters, copied into the worker's metrics.
    pub(crate) fn stats(&self) -> &PacerStats {
        &self.stats
    }

    /// Pauses so far after a 429 or a spent rate-limit window.
    pub fn pauses(&self) -> u64 {
        self.stats.pauses.load(Ordering::Relaxed)
    }

    /// The time between two requests at the configured budget (zero without a limit).
    pub(crate) fn token_interval(&self) -> Duration {
        self.interval
    }

    /// Waits until one more request of `lane` may be sent.
    pub(crate) async fn acquire(&self, lane: Priority) {
        if self.main.is_none() {
            self.wait_for_pause().await;
            return;
        }
        let started = Instant::now();
        let _live = (lane == Priority::Live).then(|| LiveWaiter::new(&self.live_waiting));
        if lane == Priority::Live {
            *self.live_seen.lock().unwrap() = Some(Instant::now());
        }
        // Sit out a pause before taking a token; the probe is handed out only at the end, to the
        // request that is about to be sent (it must not wait behind its own probe).
        self.wait_out_pause().await;
        if lane == Priority::Backfill {
            self.wait_behind_live().await;
        }
        self.wait_for_local_token(lane).await;
        if let Some(shared) = &self.shared {
            shared.wait_for_slot(self.interval).await;
        }
        self.wait_for_pause().await;
        let waited = started.elapsed();
        if waited > Duration::from_millis(1) {
            self.stats.waits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .wait_micros
                .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Notes live work (a live unit claimed or taken): backfill keeps to its share for a while.
    pub(crate) fn note_live(&self) {
        *self.live_seen.lock().unwrap() = Some(Instant::now());
    }

    /// Sees a response: a 429 or an exhausted window pauses every executor (and, with a
    /// shared budget, every process).
    pub async fn observe(
        &self,
        status: u16,
        rate_limit: Option<&RateLimitInfo>,
        retry_after: Option<Duration>,
    ) {
        let pause = if status == 429 {
            Some((
                cap_wait(retry_after.unwrap_or(Duration::from_secs(3))),
                PauseReason::RateLimited,
            ))
        } else {
            rate_limit
                .and_then(window_spent)
                .map(|wait| (wait, PauseReason::WindowSpent))
        };
        if status != 429 {
            let probed = self.probe.lock().unwrap().in_flight_since.take();
            if probed.is_some() {
                tracing::info!(
                    reason = "rate_limited",
                    http.status = status,
                    "resuming: the API takes requests again after the rate-limit pause"
                );
            }
        }
        let Some((pause, reason)) = pause else { return };
        if self.paused_for().is_none() {
            let why = match reason {
                PauseReason::WindowSpent => "the rate-limit window is spent",
                _ => "the API answered 429 Too Many Requests",
            };
            let until = chrono::Utc::now() + pause;
            tracing::warn!(
                reason = reason.as_str(),
                until = %until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                pause_ms = pause.as_millis() as u64,
                http.status = status,
                "pausing every executor for {:.1} s: {why}",
                pause.as_secs_f64()
            );
        }
        self.pause_for(pause);
        if let Some(shared) = &self.shared {
            let pausing = queue::budget::pause(&shared.pool, &shared.name, pause, reason);
            let _ = super::bounded::call(shared.call_bound, pausing).await;
        }
    }

    /// Pauses every executor of this process for `duration`, at most
    /// [`crate::genesys::MAX_RETRY_AFTER`] (whatever the caller passes, nothing overflows).
    pub(crate) fn pause_for(&self, duration: Duration) {
        let now = Instant::now();
        let until = now.checked_add(cap_wait(duration)).unwrap_or(now);
        let mut paused = self.paused_until.lock().unwrap();
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
            self.stats.pauses.fetch_add(1, Ordering::Relaxed);
        }
        *self.probe.lock().unwrap() = PauseProbe {
            pending: true,
            in_flight_since: None,
        };
    }

    /// Lifts this process's pause at once (an operator resumed the shared budget): executors go
    /// ahead without waiting for a probe.
    pub(crate) fn clear_pause(&self) {
        *self.paused_until.lock().unwrap() = None;
        *self.probe.lock().unwrap() = PauseProbe::default();
    }

    /// When this process is paused: the pause still in force, if any.
    pub(crate) fn paused_for(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().unwrap())?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Waits until no pause is in force (the probe is left alone).
    async fn wait_out_pause(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap();
            match until.filter(|until| *until > Instant::now()) {
                Some(until) => tokio::time::sleep_until(until.into()).await,
                None => return,
            }
        }
    }

    /// Waits out a pause; afterwards one request probes the API alone, and the others follow
    /// only once it got an answer other than 429 (so a long storm costs one 429 per pause,
    /// not one per executor).
    async fn wait_for_pause(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap();
            if let Some(until) = until.filter(|until| *until > Instant::now()) {
                tokio::time::sleep_until(until.into()).await;
                continue;
            }
            let must_wait = {
                let mut probe = self.probe.lock().unwrap();
                let probing = probe
                    .in_flight_since
                    .is_some_and(|since| since.elapsed() < PROBE_TIMEOUT);
                if probe.pending {
                    probe.pending = false;
                    probe.in_flight_since = Some(Instant::now());
                    false
                } else {
                    probing
                }
            };
            if !must_wait {
                return;
            }
            tokio::time::sleep(PROBE_ANSWER_POLL).await;
        }
    }

    /// The backfill share's gate alone, for a backfill unit that holds a token taken for a
    /// live one (another executor took the live unit first): it still keeps to its share.
    pub(crate) async fn backfill_gate(&self) {
        self.wait_behind_live().await;
    }

    async fn wait_behind_live(&self) {
        let step = (self.interval / 4).max(Duration::from_millis(1));
        while self.live_waiting.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(step).await;
        }
        // The backfill share applies while live work is around; alone, backfill may use it all.
        let live_recently = self
            .live_seen
            .lock()
            .unwrap()
            .is_some_and(|at| at.elapsed() < LIVE_MEMORY);
        if let (Some(backfill), true) = (&self.backfill, live_recently) {
            wait_for(backfill).await;
        }
    }

    async fn wait_for_local_token(&self, lane: Priority) {
        let main = self.main.as_ref().expect("limited");
        loop {
            if lane == Priority::Backfill && self.live_waiting.load(Ordering::Acquire) > 0 {
                tokio::time::sleep((self.interval / 4).max(Duration::from_millis(1))).await;
                continue;
            }
            match main.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

async fn wait_for(limiter: &DefaultDirectRateLimiter) {
    while let Err(not_until) = limiter.check() {
        tokio::time::sleep(not_until.wait_time_from(DefaultClock::default().now())).await;
    }
}

/// Rate-limit headers that say the window is used up: wait for its reset.
fn window_spent(info: &RateLimitInfo) -> Option<Duration> {
    let (count, allowed, reset) = (info.count?, info.allowed?, info.reset_secs?);
    (allowed > 0 && count >= allowed).then(|| cap_wait(Duration::from_secs(reset.max(1))))
}

impl SharedSlots {
    async fn wait_for_slot(&self, interval: Duration) {
        let slot = {
            let mut slots = self.slots.lock().await;
            let stale = Instant::now()
                .checked_sub(interval)
                .unwrap_or_else(Instant::now);
            slots.retain(|slot| *slot >= stale);
            if slots.is_empty() {
                let reserving =
                    queue::budget::reserve(&self.pool, &self.name, self.chunk, interval);
                match super::bounded::call(self.call_bound, reserving).await {
                    Ok(reserved) => *slots = reserved,
                    Err(error) => {
                        tracing::warn!(%error, "the shared budget is unavailable ({error}); pacing locally");
                        return;
                    }
                }
            }
            slots.remove(0)
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// Backfill stays within its share for this long after the last live request.
const LIVE_MEMORY: Duration = Duration::from_secs(2);

/// How long the other executors wait for a probe's answer before going ahead anyway.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an executor waiting behind the pause probe looks whether it was answered.
const PROBE_ANSWER_POLL: Duration = Duration::from_millis(10);

/// The one request that tests the API after a 429 or outage pause before the others follow.
#[derive(Debug, Default)]
struct PauseProbe {
    /// The next request after the pause is the probe.
    pending: bool,
    /// The probe was sent at this time and has no answer yet.
    in_flight_since: Option<Instant>,
}

/// Counts a live request waiting for a token while it exists.
struct LiveWaiter<'a>(&'a AtomicUsize);

impl<'a> LiveWaiter<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        LiveWaiter(counter)
    }
}

impl Drop for LiveWaiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pacer of this process only (no shared budget) allowing `per_minute` requests.
    fn local_pacer(per_minute: u32) -> Pacer {
        let budget = Budget {
            per_minute,
            shared: false,
            ..Budget::default()
        };
        Pacer::new(&budget, None)
    }

    #[tokio::test]
    async fn the_probe_after_a_pause_goes_out_when_the_pause_ends() {
        let pacer = local_pacer(6_000);
        pacer.acquire(Priority::Live).await;
        pacer.pause_for(Duration::from_millis(200));
        let started = Instant::now();
        let probe = tokio::time::timeout(PROBE_TIMEOUT / 2, pacer.acquire(Priority::Live)).await;
        assert!(probe.is_ok(), "the probe waited on itself");
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "the pause held"
        );

        let others =
            tokio::time::timeout(Duration::from_millis(300), pacer.acquire(Priority::Live));
        assert!(others.await.is_err(), "others wait for the probe's answer");
        pacer.observe(202, None, None).await;
        let after_answer = tokio::time::timeout(PROBE_TIMEOUT / 2, pacer.acquire(Priority::Live));
        assert!(after_answer.await.is_ok(), "the answer lets the others go");
    }

    #[tokio::test]
    async fn an_endless_pause_is_capped_and_an_operator_can_lift_it() {
        let pacer = local_pacer(6_000);
        pacer.pause_for(Duration::MAX);
        let left = pacer.paused_for().expect("paused");
        assert!(left <= crate::genesys::MAX_RETRY_AFTER, "{left:?}");
        pacer.clear_pause();
        assert_eq!(pacer.paused_for(), None);
        let next = tokio::time::timeout(Duration::from_secs(1), pacer.acquire(Priority::Live));
        assert!(
            next.await.is_ok(),
            "a lifted pause lets requests go at once"
        );
    }

    #[tokio::test]
    async fn a_huge_window_reset_pauses_at_most_the_cap() {
        let pacer = local_pacer(Budget::default().per_minute);
        let spent = RateLimitInfo {
            count: Some(300),
            allowed: Some(300),
            reset_secs: Some(u64::MAX),
        };
        pacer.observe(200, Some(&spent), None).await;
        let left = pacer.paused_for().expect("paused");
        assert!(left <= crate::genesys::MAX_RETRY_AFTER, "{left:?}");
        pacer.observe(429, None, Some(Duration::MAX)).await;
        let left = pacer.paused_for().expect("paused");
        assert!(left <= crate::genesys::MAX_RETRY_AFTER, "{left:?}");
    }
}
