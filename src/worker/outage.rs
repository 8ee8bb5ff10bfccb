//! Outages: failures that are not any job's fault pause the whole fleet instead of spending
//! attempts. Connect, DNS and TLS failures and a failing login host are outages by their kind
//! (classified by the client); server errors and timeouts are an outage when they hit most
//! calls across several conversations within a short window, which one bad conversation never
//! does.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Inner;
use crate::metrics::Condition;
use crate::queue;

/// Calls remembered for the widespread-failure rule.
const WINDOW: Duration = Duration::from_secs(30);
/// The rule needs at least this many calls in the window…
const MIN_CALLS: usize = 10;
/// …failing on at least this many different conversations…
const MIN_CONVERSATIONS: usize = 3;
/// …and at least this share of them failing.
const FAILING_SHARE: f64 = 0.8;
/// The first outage pause; each further failed probe doubles it, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two probes.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Watches call results for a widespread failure and paces the probes of an outage.
#[derive(Debug, Default)]
pub struct Detector {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    calls: VecDeque<(Instant, Option<Uuid>, bool)>,
    next_pause: Option<Duration>,
}

impl Detector {
    /// Records one call about `conversation` (when it concerned one) and whether it failed
    /// with a server error or a timeout.
    pub fn record(&self, conversation: Option<Uuid>, failed: bool) {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        state.calls.push_back((now, conversation, failed));
        while state
            .calls
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > WINDOW)
        {
            state.calls.pop_front();
        }
        if state.calls.len() > 10_000 {
            state.calls.pop_front();
        }
    }

    /// True when most recent calls failed, across several conversations.
    pub fn is_widespread(&self) -> bool {
        let (calls, failed, conversations) = self.counts();
        calls >= MIN_CALLS
            && conversations >= MIN_CONVERSATIONS
            && failed as f64 >= FAILING_SHARE * calls as f64
    }

    /// The counts behind the rule, in words.
    pub fn summary(&self) -> String {
        let (calls, failed, conversations) = self.counts();
        format!(
            "{failed} of {calls} calls in the last {} s failed, on {conversations} conversations",
            WINDOW.as_secs()
        )
    }

    fn counts(&self) -> (usize, usize, usize) {
        let state = self.state.lock().unwrap();
        let failed: Vec<Uuid> = state
            .calls
            .iter()
            .filter(|(_, _, failed)| *failed)
            .filter_map(|(_, conversation, _)| *conversation)
            .collect();
        let mut distinct = failed.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let failed_calls = state.calls.iter().filter(|(_, _, f)| *f).count();
        (state.calls.len(), failed_calls, distinct.len())
    }

    /// The pause before the next probe: doubles with every outage failure until an answer.
    fn next_pause(&self) -> Duration {
        let mut state = self.state.lock().unwrap();
        let pause = state.next_pause.unwrap_or(FIRST_PAUSE);
        state.next_pause = Some((pause * 2).min(MAX_PAUSE));
        pause
    }

    fn reset(&self) {
        let mut state = self.state.lock().unwrap();
        state.calls.clear();
        state.next_pause = None;
    }
}

/// Pauses every executor of this process, and every process sharing the budget, for the next
/// outage pause; the first request afterwards probes the API alone. `/healthz` says why.
pub async fn pause_fleet(inner: &Inner, detail: &str) {
    let pause = inner.outage.next_pause();
    let until = chrono::Utc::now() + pause;
    tracing::warn!(
        reason = "outage",
        until = %until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        pause_ms = pause.as_millis() as u64,
        "pausing every executor for {} s (outage), then probing; no attempt is spent: {detail}",
        pause.as_secs_f64()
    );
    inner.health.set(
        Condition::Outage,
        format!("{detail} (next probe in {} s)", pause.as_secs_f64()),
    );
    inner.pacer.pause_for(pause);
    if inner.config.budget.shared && inner.config.budget.per_minute > 0 {
        let name = &inner.config.budget.name;
        if let Err(error) = inner
            .db(queue::budget::pause(
                &inner.pool,
                name,
                pause,
                queue::budget::PauseReason::Outage,
            ))
            .await
        {
            tracing::warn!(%error, "could not share the outage pause through Postgres: {error}");
        }
    }
}

/// The API answered (anything but a server error or an outage): an outage is over.
pub fn answered(inner: &Inner, conversation: Option<Uuid>) {
    inner.outage.record(conversation, false);
    if inner.health.has(Condition::Outage) {
        tracing::info!(
            reason = "outage",
            "resuming: the API answers again, the outage is over"
        );
        inner.outage.reset();
        inner.health.clear(Condition::Outage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failing_conversation_is_not_an_outage_but_most_failing_across_many_is() {
        let detector = Detector::default();
        let bad = Uuid::new_v4();
        for _ in 0..20 {
            detector.record(Some(bad), true);
        }
        for _ in 0..5 {
            detector.record(Some(Uuid::new_v4()), false);
        }
        assert!(!detector.is_widespread(), "{}", detector.summary());

        let detector = Detector::default();
        for _ in 0..12 {
            detector.record(Some(Uuid::new_v4()), true);
        }
        detector.record(Some(Uuid::new_v4()), false);
        assert!(detector.is_widespread(), "{}", detector.summary());
    }

    #[test]
    fn probe_pauses_double_up_to_a_minute_and_reset_after_an_answer() {
        let detector = Detector::default();
        let pauses: Vec<u64> = (0..9).map(|_| detector.next_pause().as_secs()).collect();
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        detector.reset();
        assert_eq!(detector.next_pause(), FIRST_PAUSE);
    }
}
