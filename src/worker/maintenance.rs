//! Background upkeep: lease renewal, recovery of expired leases, pruning, queue depth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::resolve::Target;
use super::Inner;
use crate::metrics::Condition;
use crate::queue::{self, Unit};

/// Runs every second until `stop`.
pub async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    let mut last_prune = Instant::now() - Duration::from_secs(3_600);
    let mut last_renew = Instant::now();
    let mut check = CredentialCheck::default();
    let mut last_resume = None;
    let mut last_gauges = Instant::now() - GAUGE_INTERVAL;
    let mut progress = Progress::default();
    check_job_ids(&inner).await;
    let mut last_id_check = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        if last_renew.elapsed() >= inner.config.lease / 4 {
            renew(&inner).await;
            last_renew = Instant::now();
        }
        check.maybe_resume(&inner).await;
        follow_operator_resume(&inner, &mut last_resume).await;
        match inner
            .db(queue::lease::rescue_expired_leases(&inner.pool))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "recovered {n} jobs whose worker lost its lease"),
            Err(error) => tracing::warn!(%error, "recovering expired leases failed: {error}"),
        }
        if last_id_check.elapsed() >= ID_CHECK_INTERVAL {
            check_job_ids(&inner).await;
            last_id_check = Instant::now();
        }
        if last_prune.elapsed() >= Duration::from_secs(3_600) {
            let _ = inner
                .db(queue::prune(
                    &inner.pool,
                    queue::Retained::FinishedJobs,
                    inner.config.retention,
                    10_000,
                ))
                .await;
            let _ = inner
                .db(queue::prune(
                    &inner.pool,
                    queue::Retained::AppliedKeys,
                    inner.config.retention,
                    10_000,
                ))
                .await;
            let config = &inner.config;
            let _ = inner
                .db(queue::prune(
                    &inner.pool,
                    queue::Retained::DeadLetters,
                    config.dead_letter_retention,
                    10_000,
                ))
                .await;
            let _ = inner
                .db(queue::prune(
                    &inner.pool,
                    queue::Retained::IdempotencyKeys,
                    config.idempotency_horizon,
                    10_000,
                ))
                .await;
            last_prune = Instant::now();
        }
        if let Ok(depth) = inner.db(queue::pending_count(&inner.pool)).await {
            inner.metrics.set_queue_depth(depth);
        }
        export_pacer_stats(&inner);
        if last_gauges.elapsed() >= GAUGE_INTERVAL {
            sample_gauges(&inner).await;
            last_gauges = Instant::now();
        }
        progress.maybe_report(&inner);
    }
}

/// How often the job id sequence is checked against the ids already recorded.
const ID_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Moves the job id sequence past every recorded id when it went backwards (a restore, a
/// failover to a logical replica) and says so loudly: until then new jobs got ids lower than
/// values already applied (the claim sends those, see `queue/claim.rs`).
async fn check_job_ids(inner: &Inner) {
    match inner.db(queue::check_job_ids(&inner.pool)).await {
        Ok(check) if check.moved => tracing::error!(
            sequence_was = check.sequence_was,
            highest = check.highest,
            replaced = check.replaced,
            "the job id sequence was at {} although ids up to {} are recorded (a restore or a \
             failover to a logical replica?): moved it past them; the {} queued job(s) inserted \
             since then now come after every recorded one, and are sent",
            check.sequence_was,
            check.highest,
            check.replaced
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not check the job id sequence: {error}"),
    }
    match queue::take_unreported_resets(&inner.pool).await {
        Ok(resets) => {
            for reset in resets {
                tracing::error!(
                    sequence_was = reset.sequence_was,
                    moved_to = reset.moved_to,
                    detected_at = %reset.detected_at,
                    "the job id sequence went backwards: at {} an insert got id {} although ids \
                     up to {} are recorded (a restore or a failover to a logical replica?); the \
                     insert moved it past them, and jobs inserted since come after every \
                     recorded one",
                    reset.detected_at,
                    reset.sequence_was,
                    reset.moved_to
                );
            }
        }
        Err(error) => tracing::warn!(%error, "could not read the job id resets: {error}"),
    }
}

/// How often the database gauges are sampled.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a draining backlog is reported.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// Copies the pacer's wait and pause counters into the metrics.
fn export_pacer_stats(inner: &Inner) {
    let stats = inner.pacer.stats();
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    inner.metrics.set_limiter(
        load(&stats.waits),
        load(&stats.wait_micros),
        load(&stats.pauses),
    );
}

/// Samples jobs by state, dead letters, workers and the shared budget's pause for `/metrics`.
async fn sample_gauges(inner: &Inner) {
    match inner.db(queue::gauges::gauges(&inner.pool)).await {
        Ok(gauges) => {
            let behind = live_behind(&gauges, inner.config.live_behind);
            if behind.is_some() != inner.health.is_live_behind() {
                match &behind {
                    Some(why) => tracing::warn!("live behind: {why}"),
                    None => tracing::info!("live no longer behind"),
                }
            }
            inner.health.set_live_behind(behind);
            inner.metrics.set_gauges(gauges);
        }
        Err(error) => tracing::debug!(%error, "could not sample the queue gauges"),
    }
    let budget = &inner.config.budget;
    if budget.shared && budget.per_minute > 0 {
        let state = inner
            .db(queue::budget::state(&inner.pool, &budget.name))
            .await;
        let reason = match state {
            Ok(Some(state)) if state.paused_until.is_some() => state.pause_reason,
            _ => None,
        };
        inner.metrics.set_budget_pause(reason);
    }
}

/// Why live counts as behind: the oldest due live job has waited longer than `threshold`.
fn live_behind(gauges: &queue::gauges::Gauges, threshold: Duration) -> Option<String> {
    let live = gauges.priorities.iter().find(|p| p.priority == "live")?;
    (live.due > 0 && live.oldest_due_age_seconds > threshold.as_secs_f64()).then(|| {
        format!(
            "the oldest due live job has waited {} (threshold {}; {} live jobs due)",
            queue::human_duration(live.oldest_due_age_seconds),
            queue::human_duration(threshold.as_secs_f64()),
            live.due
        )
    })
}

/// Logs a progress line every 30 s while a backlog drains: applied, rate and ETA.
struct Progress {
    at: Instant,
    applied: u64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            at: Instant::now(),
            applied: 0,
        }
    }
}

impl Progress {
    fn maybe_report(&mut self, inner: &Inner) {
        let elapsed = self.at.elapsed();
        if elapsed < PROGRESS_INTERVAL {
            return;
        }
        let applied_total = inner.metrics.outcome_count("applied");
        let applied = applied_total.saturating_sub(self.applied);
        self.at = Instant::now();
        self.applied = applied_total;
        let pending = inner.metrics.jobs_in_progress();
        if pending <= 0 {
            return;
        }
        let per_minute = applied as f64 * 60.0 / elapsed.as_secs_f64();
        let eta = match per_minute > 0.0 {
            true => human_duration(Duration::from_secs_f64(pending as f64 * 60.0 / per_minute)),
            false => "unknown (nothing applied)".to_owned(),
        };
        tracing::info!(
            pending,
            applied,
            rate_per_minute = per_minute.round() as u64,
            eta = %eta,
            "backlog: {pending} due, {applied} applied in the last {} s ({:.0}/min), done in {eta}",
            elapsed.as_secs(),
            per_minute
        );
    }
}

/// `3m12s`, `1h04m`, `45s`.
fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3_599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60),
    }
}

/// An operator resumed the shared budget (`pdq budget resume`): lift this process's copy of
/// the budget's pause and a configuration pause too, and count 403s from zero again. A
/// configuration pause that its check can never lift (conversations refused for good after the
/// 403 streak) ends this way; if the problem remains, the next call pauses again.
async fn follow_operator_resume(
    inner: &Inner,
    last_resume: &mut Option<Option<chrono::DateTime<chrono::Utc>>>,
) {
    if !inner.config.budget.shared {
        return;
    }
    let name = &inner.config.budget.name;
    if last_resume.is_none() {
        if let Err(error) = inner.db(queue::budget::ensure(&inner.pool, name)).await {
            tracing::warn!(%error, "cannot create budget {name}'s row: {error}");
        }
    }
    let Ok(Some(state)) = inner.db(queue::budget::state(&inner.pool, name)).await else {
        return;
    };
    let seen_before = last_resume.replace(state.resumed_at);
    let changed = seen_before.is_some_and(|before| before != state.resumed_at);
    if !changed {
        return;
    }
    let by = state.resumed_by.as_deref().unwrap_or("an operator");
    if state.paused_until.is_none() {
        tracing::info!(by, "the shared budget pause was lifted by {by}: resuming");
        inner.pacer.clear_pause();
    }
    if inner.health.has(Condition::Configuration) {
        tracing::warn!(
            by,
            reason = "configuration",
            "resumed by {by}: trying again (a call that fails the same way pauses again)"
        );
        inner.forbidden_streak.store(0, Ordering::Relaxed);
        inner.health.recover();
    }
}

async fn renew(inner: &Inner) {
    let leases: Vec<Uuid> = inner.in_flight.lock().unwrap().keys().copied().collect();
    let from = Instant::now();
    match inner
        .db(queue::lease::renew_leases(
            &inner.pool,
            &leases,
            inner.config.lease,
        ))
        .await
    {
        Ok(lost) => {
            let held: Vec<Uuid> = leases.into_iter().filter(|l| !lost.contains(l)).collect();
            inner.renewed(&held, &lost, from);
            for lease in lost {
                tracing::warn!(%lease, "lease {lease} lost: the unit will not be sent and runs again elsewhere");
            }
        }
        Err(error) => tracing::warn!(%error, "renewing leases failed: {error}"),
    }
}

/// The call the credential check of a configuration pause makes: the kind of call that failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum CheckCall {
    /// Get a token (credentials refused).
    #[default]
    Token,
    /// Get the conversation a 403 was about.
    Conversation(Uuid),
    /// Look up the tag a 403 was about.
    Tag(String),
}

impl CheckCall {
    /// What the check asks, in words.
    fn describe(&self) -> String {
        match self {
            CheckCall::Token => "the credentials".to_owned(),
            CheckCall::Conversation(id) => format!("a read of conversation {id}"),
            CheckCall::Tag(tag) => format!("a lookup of external tag {tag}"),
        }
    }
}

/// Remembers what the credential check must ask before the worker pauses on `unit`'s failed call: after a
/// 403 (a missing permission, or refusals in a row) the conversation or tag it concerned, since
/// a token says nothing about permissions; otherwise the token.
pub(super) fn remember_pause(
    inner: &Inner,
    unit: &Unit,
    status: Option<u16>,
    target: Option<Target>,
) {
    let locators = &unit.head().locators;
    let conversation = target
        .map(|t| t.conversation_id)
        .or(locators.conversation_id);
    let call = match (status, conversation, &locators.external_tag) {
        (Some(403), Some(id), _) => CheckCall::Conversation(id),
        (Some(403), None, Some(tag)) => CheckCall::Tag(tag.clone()),
        _ => CheckCall::Token,
    };
    *inner.credential_check.lock().unwrap() = call;
}

/// While paused, checks now and then (backing off) whether the API takes our credentials again
/// (or, after a 403, whether it grants the refused call again).
/// The backoff survives a resume that is followed by another pause soon after (a token that is
/// accepted by the login host but refused by the API), so a persistent problem is checked ever
/// less often instead of every few seconds.
struct CredentialCheck {
    next: Instant,
    delay: Duration,
    healthy_since: Option<Instant>,
}

/// The first check delay; it doubles up to [`CHECK_MAX`].
const CHECK_FIRST: Duration = Duration::from_secs(2);
/// The longest delay between two credential checks.
const CHECK_MAX: Duration = Duration::from_secs(300);
/// A resume that holds this long resets the check backoff.
const CHECK_RESET_AFTER: Duration = Duration::from_secs(600);

impl Default for CredentialCheck {
    fn default() -> Self {
        CredentialCheck {
            next: Instant::now(),
            delay: CHECK_FIRST,
            healthy_since: Some(Instant::now()),
        }
    }
}

impl CredentialCheck {
    async fn maybe_resume(&mut self, inner: &Inner) {
        if !inner.health.is_paused() {
            let since = *self.healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= CHECK_RESET_AFTER {
                self.delay = CHECK_FIRST;
            }
            return;
        }
        if self.healthy_since.take().is_some() {
            self.next = Instant::now() + self.delay;
        }
        if Instant::now() < self.next {
            return;
        }
        let call = inner.credential_check.lock().unwrap().clone();
        let verdict = match &call {
            CheckCall::Token => inner.api.check_credentials().await,
            CheckCall::Conversation(id) => inner.api.check_conversation(*id).await,
            CheckCall::Tag(tag) => inner.api.check_tag(tag).await,
        };
        match verdict {
            Ok(()) => {
                tracing::info!(
                    reason = "configuration",
                    "resuming: the API accepts {} again",
                    call.describe()
                );
                inner.health.recover();
            }
            Err(error) => tracing::warn!(
                reason = "configuration",
                %error,
                "still paused: {error} (next check in {} s)",
                (self.delay * 2).min(CHECK_MAX).as_secs()
            ),
        }
        self.delay = (self.delay * 2).min(CHECK_MAX);
        self.next = Instant::now() + self.delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(human_duration(Duration::from_secs(3_840)), "1h04m");
    }
}
