//! Archives applied units in batches: one statement for many units, not one per unit.
//!
//! Applied-but-unrecorded units are the ones a crash would send again, so their number is
//! bounded: an executor that applied a unit waits here while [`MAX_UNRECORDED`] units are
//! already waiting, and every statement records at most [`STATEMENT_UNITS`] units (its cost is
//! linear in its size).
//!
//! An applied unit stays tracked by the worker (its lease renewed, never given back) until it
//! is recorded. When a statement fails, its units are split in halves and tried again, so the
//! units that can be recorded are, and the ones that cannot are isolated: they are held and
//! tried again with backoff, and `/healthz` names them. While nothing can be recorded at all,
//! the claimer stops claiming ([`Completer::holds_claims`]).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Inner;
use crate::metrics::Condition;
use crate::queue::lease::Success;
use crate::queue::{self};

/// Collects successes and writes them together.
pub struct Completer {
    pool: PgPool,
    pending: Mutex<Vec<Success>>,
    stuck: std::sync::Mutex<Stuck>,
    /// How many units [`Completer::stuck`] holds.
    stuck_units: AtomicUsize,
    /// The last round recorded nothing and failed for units not known to fail on their own.
    failing: AtomicBool,
    ready: Notify,
    recorded: Notify,
}

/// Applied units whose recording failed, tried again with backoff.
struct Stuck {
    units: Vec<Success>,
    /// Leases of units whose last statement held only them, and failed.
    alone: HashSet<Uuid>,
    /// Leases of units that failed alone while recording worked for others (other units were
    /// recorded, or a probe row could be): their own records fail.
    isolated: HashSet<Uuid>,
    delay: Duration,
    next_try: Instant,
    error: String,
}

impl Default for Stuck {
    fn default() -> Self {
        Stuck {
            units: Vec::new(),
            alone: HashSet::new(),
            isolated: HashSet::new(),
            delay: RECORD_RETRY_FIRST,
            next_try: Instant::now(),
            error: String::new(),
        }
    }
}

/// Flush once this many units are waiting, or after [`FLUSH_EVERY`].
const BATCH: usize = 128;
/// At most this many units per finishing statement.
pub const STATEMENT_UNITS: usize = 256;
/// At most this many applied units wait to be recorded; further executors wait.
pub const MAX_UNRECORDED: usize = 1_024;

/// The longest an applied unit waits for others to share its recording statement.
const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// The first wait before recording applied units is tried again after a database error.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);

/// The longest wait between two tries to record applied units.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

/// How many times one round splits a failed statement's units to isolate the ones that fail
/// (one bad unit among [`STATEMENT_UNITS`] takes 8); when everything fails, this bounds the
/// statements a round spends.
const ISOLATION_SPLITS: u32 = 24;

/// Job ids named at most in a log line or `/healthz`.
const NAMED_JOBS: usize = 10;

impl Completer {
    /// An empty completer.
    pub fn new(pool: PgPool) -> Self {
        Completer {
            pool,
            pending: Mutex::new(Vec::new()),
            stuck: std::sync::Mutex::new(Stuck::default()),
            stuck_units: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            ready: Notify::new(),
            recorded: Notify::new(),
        }
    }

    /// Queues one applied unit; waits first while the backlog is at its bound.
    pub async fn push(&self, success: Success) {
        loop {
            let recorded = self.recorded.notified();
            {
                let mut pending = self.pending.lock().await;
                let stuck = self.stuck_units.load(Ordering::Acquire);
                if pending.len() + stuck < MAX_UNRECORDED {
                    pending.push(success);
                    if pending.len() >= BATCH {
                        self.ready.notify_one();
                    }
                    return;
                }
            }
            self.ready.notify_one();
            recorded.await;
        }
    }

    /// True while claiming must wait: nothing can be recorded, or the units that cannot be
    /// recorded reach the bound.
    pub fn holds_claims(&self) -> bool {
        self.failing.load(Ordering::Acquire)
            || self.stuck_units.load(Ordering::Acquire) >= MAX_UNRECORDED
    }

    /// Takes the units whose retry is due (all of them with `force`).
    fn take_due(&self, force: bool) -> Vec<Success> {
        let mut stuck = self.stuck.lock().unwrap();
        if stuck.units.is_empty() || (!force && Instant::now() < stuck.next_try) {
            return Vec::new();
        }
        std::mem::take(&mut stuck.units)
    }

    /// The earliest a retry of the units that could not be recorded is due.
    fn next_try(&self) -> Option<Instant> {
        let stuck = self.stuck.lock().unwrap();
        (!stuck.units.is_empty()).then_some(stuck.next_try)
    }
}

/// What one round of recording found.
#[derive(Default)]
struct Round {
    /// Units recorded (or found no longer held).
    recorded: usize,
    /// Splits left to isolate failing units.
    splits: u32,
    /// The last error.
    error: Option<String>,
    /// Units that could not be recorded, each with whether it failed alone.
    failed: Vec<(Success, bool)>,
}

/// Writes everything queued and retries the units whose retry is due (all of them with
/// `force`); returns true when nothing is left unrecorded.
async fn flush_once(inner: &Inner, force: bool) -> bool {
    let completer = &inner.completer;
    let fresh = std::mem::take(&mut *completer.pending.lock().await);
    let retried = completer.take_due(force);
    if fresh.is_empty() && retried.is_empty() {
        completer.recorded.notify_waiters();
        return completer.next_try().is_none();
    }
    let mut round = Round {
        splits: ISOLATION_SPLITS,
        ..Round::default()
    };
    for chunk in fresh.chunks(STATEMENT_UNITS) {
        record_isolating(inner, chunk.to_vec(), &mut round).await;
    }
    for chunk in retried.chunks(STATEMENT_UNITS) {
        record_isolating(inner, chunk.to_vec(), &mut round).await;
    }
    // Units that failed one by one with nothing else recorded: a probe row tells a failure of
    // their own records from a failure of every record.
    let only_alone = !round.failed.is_empty() && round.failed.iter().all(|(_, alone)| *alone);
    let works = round.recorded > 0
        || (only_alone
            && inner
                .db(queue::lease::probe_recording(&completer.pool))
                .await
                .is_ok());
    let done = settle(inner, round, !retried.is_empty(), works);
    completer.recorded.notify_waiters();
    done
}

/// Records `units`, splitting a failed statement's units in halves (within the round's
/// splits) so every unit that can be recorded is.
async fn record_isolating(inner: &Inner, units: Vec<Success>, round: &mut Round) {
    let mut groups = VecDeque::from([units]);
    while let Some(group) = groups.pop_front() {
        match inner
            .db(queue::lease::succeed_batch(&inner.completer.pool, &group))
            .await
        {
            Ok(lost) => {
                round.recorded += group.len();
                for success in &group {
                    inner.untrack(success.fence.lease);
                }
                for lease in lost {
                    tracing::warn!(%lease, "an applied unit had lost its lease; another worker may apply it again");
                }
            }
            Err(error) => {
                round.error = Some(error.to_string());
                if super::bounded::is_silence(&error) {
                    // Postgres does not answer: splitting would only wait again per half.
                    round.splits = 0;
                }
                if group.len() == 1 {
                    round.failed.extend(group.into_iter().map(|s| (s, true)));
                } else if round.splits == 0 {
                    round.failed.extend(group.into_iter().map(|s| (s, false)));
                } else {
                    round.splits -= 1;
                    let mut first = group;
                    let second = first.split_off(first.len() / 2);
                    groups.push_back(first);
                    groups.push_back(second);
                }
            }
        }
    }
}

/// Keeps the units a round could not record for a later retry, decides whether claiming must
/// wait, and reports the condition; returns true when nothing is left unrecorded. `works`:
/// recording worked for something else in this round.
fn settle(inner: &Inner, round: Round, retried: bool, works: bool) -> bool {
    let completer = &inner.completer;
    let mut stuck = completer.stuck.lock().unwrap();
    let was_empty = stuck.units.is_empty() && !retried;
    let failed_now = round.failed.len();
    for (success, alone) in round.failed {
        let lease = success.fence.lease;
        match alone {
            true => stuck.alone.insert(lease),
            false => stuck.alone.remove(&lease),
        };
        stuck.units.push(success);
    }
    let leases: HashSet<Uuid> = stuck.units.iter().map(|s| s.fence.lease).collect();
    stuck.alone.retain(|lease| leases.contains(lease));
    stuck.isolated.retain(|lease| leases.contains(lease));
    if works {
        let newly: Vec<Uuid> = stuck
            .alone
            .iter()
            .filter(|lease| !stuck.isolated.contains(lease))
            .copied()
            .collect();
        for lease in newly {
            stuck.isolated.insert(lease);
            let ids = stuck
                .units
                .iter()
                .find(|s| s.fence.lease == lease)
                .map(|s| job_list(&s.fence.job_ids))
                .unwrap_or_default();
            tracing::error!(
                %lease,
                "applied {ids} cannot be recorded: {}; holding it and trying again, the other \
                 units are recorded",
                round.error.as_deref().unwrap_or(&stuck.error)
            );
        }
    }
    if let Some(error) = &round.error {
        stuck.error = error.clone();
    }
    if retried || was_empty {
        stuck.delay = match (retried, failed_now > 0) {
            (true, true) => (stuck.delay * 2).min(RECORD_RETRY_MAX),
            _ => RECORD_RETRY_FIRST,
        };
        stuck.next_try = Instant::now() + stuck.delay;
    }
    let failing = failed_now > 0
        && round.recorded == 0
        && stuck
            .units
            .iter()
            .any(|s| !stuck.isolated.contains(&s.fence.lease));
    completer.failing.store(failing, Ordering::Release);
    completer
        .stuck_units
        .store(stuck.units.len(), Ordering::Release);
    if stuck.units.is_empty() {
        if inner.health.has(Condition::Recording) {
            tracing::info!("recording applied units works again; every applied unit is recorded");
        }
        inner.health.clear(Condition::Recording);
        return true;
    }
    let ids: Vec<i64> = stuck
        .units
        .iter()
        .flat_map(|s| s.fence.job_ids.iter().copied())
        .collect();
    let units = stuck.units.len();
    let reason = match failing {
        true => format!(
            "{units} applied unit(s) ({}) cannot be recorded: {}; they are held until they \
             are, claiming has stopped",
            job_list(&ids),
            stuck.error
        ),
        false => format!(
            "{units} applied unit(s) ({}) cannot be recorded: {}; they are held and tried \
             again, the other units are recorded",
            job_list(&ids),
            stuck.error
        ),
    };
    if failed_now > 0 {
        tracing::warn!(
            units,
            claiming_stopped = failing,
            "recording applied units failed: {}; holding {units} unit(s) until they are \
             recorded (next try in {} ms)",
            stuck.error,
            stuck.delay.as_millis()
        );
    }
    inner.health.set(Condition::Recording, reason);
    false
}

/// `job 3` or `jobs 3, 4, 5` (the first few, then how many more).
fn job_list(ids: &[i64]) -> String {
    let named: Vec<String> = ids.iter().take(NAMED_JOBS).map(i64::to_string).collect();
    let more = ids.len().saturating_sub(NAMED_JOBS);
    let tail = match more {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    match ids.len() {
        1 => format!("job {}", named[0]),
        _ => format!("jobs {}{tail}", named.join(", ")),
    }
}

/// Writes everything queued and keeps trying (with backoff) until every applied unit is
/// recorded; callers bound how long they wait for it.
pub async fn flush_all(inner: &Inner) {
    let mut delay = RECORD_RETRY_FIRST;
    while !flush_once(inner, true).await {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECORD_RETRY_MAX);
    }
}

/// Flushes on a short timer or when a batch is full, and retries the units that could not be
/// recorded when their retry is due, until `stop`.
pub async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = inner.completer.ready.notified() => {}
            _ = tokio::time::sleep(FLUSH_EVERY) => {}
            _ = stop.cancelled() => break,
        }
        flush_once(&inner, false).await;
    }
    flush_once(&inner, true).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_lists_name_a_few_jobs_and_count_the_rest() {
        assert_eq!(job_list(&[3]), "job 3");
        assert_eq!(job_list(&[3, 4]), "jobs 3, 4");
        let many: Vec<i64> = (1..=12).collect();
        assert_eq!(
            job_list(&many),
            "jobs 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more"
        );
    }
}
