//! The outcome table as a pure function: what to do with a unit whose attempt failed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use super::backoff::{jitter, Backoff};
use crate::genesys::Failure;
use crate::queue::DeadReason;

/// What the worker does next with the unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Back to pending, not before `after` from now.
    Retry {
        /// How long from now until the unit may be claimed again.
        after: Duration,
        /// Whether this attempt counts toward `max_attempts` (a rate-limit wait does not).
        spend_attempt: bool,
    },
    /// Move to the dead letters with this reason.
    DeadLetter(DeadReason),
    /// Give the unit back untouched and pause the whole worker: the setup is wrong.
    Pause,
}

/// The facts about the unit the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Attempts made, this one included.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The unit's earliest deadline, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// 403s in a row across the worker (this one included).
    pub consecutive_forbidden: u32,
}

/// How soon a unit whose participant another unit holds tries again (plus jitter up to as much).
pub const BUSY_RETRY: Duration = Duration::from_millis(200);

/// The shortest wait before a lookup that found nothing is tried again, even when the lookup
/// window is about to close: analytics needs a moment to catch up, and an immediate retry
/// would only ask the same question again.
pub const NOT_YET_VISIBLE_FLOOR: Duration = Duration::from_millis(200);

/// After this many 403s in a row the worker assumes a missing permission and pauses rather
/// than dead-letter the queue.
pub const FORBIDDEN_PAUSE_THRESHOLD: u32 = 5;

/// Applies the outcome table (`docs/outcomes.md`) to one failed attempt.
pub fn decide<R: Rng>(
    failure: &Failure,
    attempt: Attempt,
    now: DateTime<Utc>,
    backoff: &Backoff,
    rng: &mut R,
) -> Decision {
    let retry = |after: Duration, spend_attempt: bool| {
        let exhausted = spend_attempt && attempt.attempts >= attempt.max_attempts;
        // `None`: beyond any date chrono can hold, so past every deadline (no panic).
        let at = chrono::Duration::from_std(after)
            .ok()
            .and_then(|after| now.checked_add_signed(after));
        match attempt.expires_at {
            Some(deadline) if at.is_none_or(|at| at > deadline) => {
                Decision::DeadLetter(DeadReason::Expired)
            }
            _ if exhausted => Decision::DeadLetter(DeadReason::RetriesExhausted),
            _ => Decision::Retry {
                after,
                spend_attempt,
            },
        }
    };
    let attempt_number = attempt.attempts.max(1) as u32;
    match failure {
        Failure::RateLimited { retry_after } => {
            retry(backoff.delay(attempt_number, *retry_after, rng), false)
        }
        Failure::Transient => retry(backoff.delay(attempt_number, None, rng), true),
        Failure::Outage => retry(backoff.delay(attempt_number, None, rng), false),
        Failure::Busy => retry(BUSY_RETRY + jitter(BUSY_RETRY, rng), false),
        Failure::NotYetVisible {
            window_ends,
            reason,
        } => {
            // At least one retry, even when the unit waited past the window before its first
            // lookup; then retry until the window closes or the attempts run out.
            let closed = now >= *window_ends && attempt.attempts > 1;
            if closed || attempt.attempts >= attempt.max_attempts {
                return Decision::DeadLetter(*reason);
            }
            let left = (*window_ends - now).to_std().unwrap_or_default();
            let after = backoff.delay(attempt_number, None, rng).min(left);
            retry(after.max(NOT_YET_VISIBLE_FLOOR), true)
        }
        Failure::Configuration => Decision::Pause,
        Failure::Forbidden if attempt.consecutive_forbidden >= FORBIDDEN_PAUSE_THRESHOLD => {
            Decision::Pause
        }
        Failure::Forbidden => Decision::DeadLetter(DeadReason::Forbidden),
        Failure::Permanent(reason) => Decision::DeadLetter(*reason),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    fn attempt(attempts: i32) -> Attempt {
        Attempt {
            attempts,
            max_attempts: 5,
            expires_at: None,
            consecutive_forbidden: 1,
        }
    }

    fn run(failure: Failure, attempt: Attempt) -> Decision {
        let mut rng = SmallRng::seed_from_u64(3);
        decide(&failure, attempt, Utc::now(), &Backoff::default(), &mut rng)
    }

    #[test]
    fn the_outcome_table() {
        use DeadReason::*;
        let wait = Some(Duration::from_secs(7));
        let table: Vec<(Failure, Attempt, &str)> = vec![
            (
                Failure::RateLimited { retry_after: wait },
                attempt(1),
                "retry free",
            ),
            (
                Failure::RateLimited { retry_after: wait },
                attempt(5),
                "retry free",
            ),
            (Failure::Transient, attempt(1), "retry spent"),
            (Failure::Transient, attempt(5), "dead retries_exhausted"),
            (Failure::Outage, attempt(1), "retry free"),
            (Failure::Outage, attempt(5), "retry free"),
            (Failure::Outage, attempt(50), "retry free"),
            (Failure::Configuration, attempt(1), "pause"),
            (Failure::Forbidden, attempt(1), "dead forbidden"),
            (
                Failure::Forbidden,
                Attempt {
                    consecutive_forbidden: 5,
                    ..attempt(1)
                },
                "pause",
            ),
            (Failure::Permanent(NotFound), attempt(1), "dead not_found"),
            (
                Failure::Permanent(BadRequest),
                attempt(1),
                "dead bad_request",
            ),
            (Failure::Permanent(Conflict), attempt(1), "dead conflict"),
            (
                Failure::Permanent(PayloadTooLarge),
                attempt(1),
                "dead payload_too_large",
            ),
            (
                Failure::Permanent(UnsupportedMediaType),
                attempt(1),
                "dead unsupported_media_type",
            ),
            (
                Failure::Permanent(ConversationEnded),
                attempt(1),
                "dead conversation_ended",
            ),
            (
                Failure::Permanent(ParticipantNotFound),
                attempt(1),
                "dead participant_not_found",
            ),
            (
                Failure::Permanent(ParticipantAmbiguous),
                attempt(1),
                "dead participant_ambiguous",
            ),
        ];
        for (failure, attempt, expected) in table {
            let got = match run(failure.clone(), attempt) {
                Decision::Retry {
                    spend_attempt: true,
                    ..
                } => "retry spent".to_owned(),
                Decision::Retry {
                    spend_attempt: false,
                    ..
                } => "retry free".to_owned(),
                Decision::DeadLetter(reason) => format!("dead {}", reason.as_str()),
                Decision::Pause => "pause".to_owned(),
            };
            assert_eq!(got, expected, "{failure:?} at attempt {}", attempt.attempts);
        }
    }

    #[test]
    fn a_rate_limit_waits_at_least_retry_after() {
        let decision = run(
            Failure::RateLimited {
                retry_after: Some(Duration::from_secs(30)),
            },
            attempt(1),
        );
        let Decision::Retry { after, .. } = decision else {
            panic!("{decision:?}")
        };
        assert!(after >= Duration::from_secs(30));
    }

    #[test]
    fn an_outage_waits_with_backoff_and_never_spends_an_attempt() {
        let Decision::Retry {
            after,
            spend_attempt,
        } = run(Failure::Outage, attempt(5))
        else {
            panic!("an outage retries")
        };
        assert!(!spend_attempt);
        assert!(after <= Backoff::default().ceiling(5));
    }

    #[test]
    fn an_absurd_delay_does_not_panic() {
        let mut rng = SmallRng::seed_from_u64(3);
        let huge = Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
        };
        let deadline = Attempt {
            expires_at: Some(Utc::now() + chrono::Duration::days(1)),
            ..attempt(1)
        };
        for now in [Utc::now(), DateTime::<Utc>::MAX_UTC] {
            let decision = decide(&Failure::Transient, deadline, now, &huge, &mut rng);
            assert_eq!(decision, Decision::DeadLetter(DeadReason::Expired));
            let free = decide(&Failure::Outage, attempt(1), now, &huge, &mut rng);
            assert!(matches!(free, Decision::Retry { .. }), "{free:?}");
        }
    }

    #[test]
    fn a_retry_past_the_deadline_dead_letters_as_expired() {
        let soon = Attempt {
            expires_at: Some(Utc::now() + chrono::Duration::seconds(2)),
            ..attempt(1)
        };
        let decision = run(
            Failure::RateLimited {
                retry_after: Some(Duration::from_secs(60)),
            },
            soon,
        );
        assert_eq!(decision, Decision::DeadLetter(DeadReason::Expired));
    }

    #[test]
    fn a_lookup_retries_inside_its_window_then_dead_letters() {
        let open = Failure::NotYetVisible {
            window_ends: Utc::now() + chrono::Duration::seconds(30),
            reason: DeadReason::ConversationNotFound,
        };
        let retried = run(open, attempt(3));
        assert!(
            matches!(
                retried,
                Decision::Retry {
                    spend_attempt: true,
                    ..
                }
            ),
            "{retried:?}"
        );
        let closed = Failure::NotYetVisible {
            window_ends: Utc::now() - chrono::Duration::seconds(1),
            reason: DeadReason::ConversationNotFound,
        };
        let first = run(closed.clone(), attempt(1));
        assert!(
            matches!(first, Decision::Retry { .. }),
            "one retry at least: {first:?}"
        );
        let reason = DeadReason::ConversationNotFound;
        assert_eq!(run(closed, attempt(2)), Decision::DeadLetter(reason));
    }
}
