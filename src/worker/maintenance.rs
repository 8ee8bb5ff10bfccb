//! Background upkeep: lease renewal, recovery of expired leases, pruning, queue depth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::resolve::Target;
use super::Inner;
use crate::queue::{self, Unit};

/// Runs every second until `stop`.
pub async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    let mut last_prune = Instant::now() - Duration::from_secs(3_600);
    let mut last_renew = Instant::now();
    let mut probe = Probe::default();
    let mut last_resume = None;
    match queue::advance_job_ids(&inner.pool).await {
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not check the job id sequence"),
    }
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
        follow_operator_resume(&inner, &mut last_resume).await;
        match queue::rescue_expired_leases(&inner.pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "recovered jobs whose worker lost its lease"),
            Err(error) => tracing::warn!(%error, "lease recovery failed"),
        }
        if last_prune.elapsed() >= Duration::from_secs(3_600) {
            let _ = queue::prune_finished(&inner.pool, inner.config.retention, 10_000).await;
            let _ = queue::prune_applied_keys(&inner.pool, inner.config.retention, 10_000).await;
            let config = &inner.config;
            let _ =
                queue::prune_dead_letters(&inner.pool, config.dead_letter_retention, 10_000).await;
            let _ = queue::prune_idempotency_keys(&inner.pool, config.idempotency_horizon, 10_000)
                .await;
            last_prune = Instant::now();
        }
        if let Ok(depth) = queue::pending_count(&inner.pool).await {
            inner.metrics.queue_depth.store(depth, Ordering::Relaxed);
        }
    }
}

/// An operator lifted the shared pause (`pdq budget resume`): lift this process's copy too.
async fn follow_operator_resume(
    inner: &Inner,
    last_resume: &mut Option<Option<chrono::DateTime<chrono::Utc>>>,
) {
    if !inner.config.budget.shared {
        return;
    }
    let Ok(Some(state)) = queue::budget::state(&inner.pool, &inner.config.budget.name).await else {
        return;
    };
    let seen_before = last_resume.replace(state.resumed_at);
    let changed = seen_before.is_some_and(|before| before != state.resumed_at);
    if changed && state.paused_until.is_none() {
        let by = state.resumed_by.as_deref().unwrap_or("an operator");
        tracing::info!(by, "the budget pause was lifted by hand: resuming");
        inner.pacer.clear_pause();
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

/// The call a configuration-pause probe makes: the kind of call that failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum ProbeCall {
    /// Get a token (credentials refused).
    #[default]
    Token,
    /// Get the conversation a 403 was about.
    Conversation(Uuid),
    /// Look up the tag a 403 was about.
    Tag(String),
}

/// Remembers what the probe must ask before the worker pauses on `unit`'s failed call: after a
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
        (Some(403), Some(id), _) => ProbeCall::Conversation(id),
        (Some(403), None, Some(tag)) => ProbeCall::Tag(tag.clone()),
        _ => ProbeCall::Token,
    };
    *inner.pause_probe.lock().unwrap() = call;
}

/// While paused, checks now and then (backing off) whether the API takes our credentials again
/// (or, after a 403, whether it grants the refused call again).
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
        let call = inner.pause_probe.lock().unwrap().clone();
        let verdict = match &call {
            ProbeCall::Token => inner.api.probe().await,
            ProbeCall::Conversation(id) => inner.api.probe_conversation(*id).await,
            ProbeCall::Tag(tag) => inner.api.probe_tag(tag).await,
        };
        match verdict {
            Ok(()) => {
                tracing::info!(probe = ?call, "the API accepts the call again: resuming");
                inner.health.recover();
            }
            Err(error) => tracing::warn!(%error, "still paused"),
        }
        self.delay = (self.delay * 2).min(PROBE_MAX);
        self.next = Instant::now() + self.delay;
    }
}
